"""An ONNX graph under construction: nodes, initializers and batch sizes.

A value of the JAX program is either a numpy constant (known at export
time: parameters, literals, anything computed from them alone) or the name
of an ONNX tensor. Constants become initializers only when a node reads
them, so the constant folding in translate.py leaves no dead weights.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper

OPSET = 17


class UnsupportedError(ValueError):
  """The JAX program uses something ONNX export cannot express."""


class Graph:
  """Collects nodes and initializers; `build` returns the ModelProto."""

  def __init__(self):
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []
    self.inputs: list[onnx.ValueInfoProto] = []
    self.outputs: list[onnx.ValueInfoProto] = []
    self._ids = itertools.count()
    self._const_names: dict[tuple, str] = {}
    # str(symbolic dim) -> (graph input, axis) where its size can be read.
    self._dim_sources: dict[str, tuple[str, int]] = {}
    self._dim_tensors: dict[str, str] = {}

  def fresh(self, hint: str = 't') -> str:
    return f'{hint}_{next(self._ids)}'

  # Inputs and outputs.
  def add_input(self, name: str, shape: Sequence[Any], dtype) -> str:
    dims = []
    for axis, d in enumerate(shape):
      if isinstance(d, int):
        dims.append(d)
      else:
        dims.append(str(d))
        self._dim_sources.setdefault(str(d), (name, axis))
    self.inputs.append(helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims))
    return name

  def add_output(self, name: str, shape: Sequence[Any], dtype) -> None:
    dims = [d if isinstance(d, int) else str(d) for d in shape]
    self.outputs.append(helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims))

  # Nodes and constants.
  def node(self, op: str, inputs: Sequence[Any], num_outputs: int = 1,
           **attrs) -> Any:
    """Appends one node; inputs may be names or numpy constants. Returns
    the output name, or a list of names when `num_outputs` > 1."""
    names = [self.tensor(x) if x is not None else '' for x in inputs]
    outs = [self.fresh(op.lower()) for _ in range(num_outputs)]
    self.nodes.append(helper.make_node(op, names, outs, **attrs))
    return outs[0] if num_outputs == 1 else outs

  def tensor(self, value) -> str:
    """The tensor name of a value, adding an initializer for a constant
    (identical constants share one)."""
    if isinstance(value, str):
      return value
    array = np.asarray(value)
    if array.dtype == np.float64:
      raise TypeError('float64 constant reached the ONNX graph.')
    key = (array.dtype.str, array.shape, array.tobytes())
    if key not in self._const_names:
      name = self.fresh('const')
      self.initializers.append(numpy_helper.from_array(array, name))
      self._const_names[key] = name
    return self._const_names[key]

  # Shapes with symbolic batch sizes.
  def dim(self, d) -> Any:
    """A [1] int64 tensor (or constant) holding the size `d`."""
    if isinstance(d, (int, np.integer)):
      return np.array([d], np.int64)
    key = str(d)
    if key not in self._dim_tensors and key not in self._dim_sources:
      linear = self._linear_dim(d)
      if linear is not None:
        self._dim_tensors[key] = linear
    if key not in self._dim_tensors:
      if key not in self._dim_sources:
        raise UnsupportedError(
            f'Size {key} of the JAX program is not a batch size of an '
            'input; ONNX export handles dimensions that are plain input '
            'sizes only')
      source, axis = self._dim_sources[key]
      shape = self.node('Shape', [source], start=axis, end=axis + 1)
      self._dim_tensors[key] = shape
    return self._dim_tensors[key]

  def _linear_dim(self, d) -> Any:
    """k * n + c of one input size n (windows of a batch: 16 * batch), or
    None for another expression."""
    names = getattr(d, 'get_vars', lambda: ())()
    if len(names) != 1:
      return None
    (name,) = names
    if name not in self._dim_sources:
      return None
    c, c_k, c_2k = (int(d._evaluate({name: n})) for n in (0, 1, 2))  # pylint: disable=protected-access
    k = c_k - c
    if c_2k != c + 2 * k:
      return None
    size = self.dim(name)
    if k != 1:
      size = self.node('Mul', [size, np.array([k], np.int64)])
    if c:
      size = self.node('Add', [size, np.array([c], np.int64)])
    return size

  def shape(self, shape: Sequence[Any]) -> Any:
    """A 1-D int64 tensor (a constant where every size is known)."""
    if all(isinstance(d, (int, np.integer)) for d in shape):
      return np.array(shape, np.int64)
    return self.node('Concat', [self.dim(d) for d in shape], axis=0)

  def build(self, name: str, doc: str = '') -> onnx.ModelProto:
    graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs,
                              self.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid('', OPSET)],
        producer_name='jaxtag', doc_string=doc)
    model.ir_version = 8   # the IR of opset 17: loads in older runtimes too
    return model
