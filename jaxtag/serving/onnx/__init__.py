"""ONNX export by translating a JAX function's jaxpr (see translate.py)."""
from jaxtag.serving.onnx.graph import UnsupportedError
from jaxtag.serving.onnx.translate import to_onnx
