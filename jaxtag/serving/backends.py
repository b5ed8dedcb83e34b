"""What runs a bundle's model for jaxtag.tag: JAX over every local device,
or onnxruntime on CPU.

Both take the geometry's uint8 RGB pixels [B, S, S, 3] and return scores
[B, tags] in bundle order.
- `jax`: the bundle's jitted predict with the batch split over all local
  devices (a one-axis `data` mesh); the batch is padded to a multiple of
  the device count. Under a multi-process launch each process uses its own
  devices only: tagging needs no collective.
- `onnxruntime`: the bundle's ONNX graph (jaxtag.serving.onnx_export). A
  `model.onnx` beside the bundle is used when its input is the bundle's
  training size; otherwise the graph is exported once into the cache
  (`$JAXTAG_CACHE`, else `$XDG_CACHE_HOME/jaxtag`, else ~/.cache/jaxtag;
  `onnx/<hash of the bundle files>/model.onnx`) and reused. Files in the
  bundle are never written.
- `auto`: onnxruntime when JAX runs on CPU and the bundle exports to ONNX
  (not a captioner, native geometry or a head ONNX cannot express), JAX
  otherwise. On CPU onnxruntime is about 2-3x faster than XLA:CPU on these
  convolutional models (jaxtag/bench/RESULTS.md).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

BACKENDS = ('auto', 'jax', 'onnxruntime')
_EXPORT_VERSION = '1'   # bump when the exported graph changes


class JaxPredictor:
  """The bundle's predict, its batch split over the local devices."""

  name = 'jax'

  def __init__(self, bundle, devices=None):
    self.bundle = bundle
    self.devices = list(devices or jax.local_devices())
    self.mesh = jax.make_mesh((len(self.devices),), ('data',),
                              axis_types=(AxisType.Auto,),
                              devices=self.devices)
    self.rows = NamedSharding(self.mesh, P('data'))
    self.variables = jax.device_put(bundle.variables,
                                    NamedSharding(self.mesh, P()))

  def __call__(self, pixels, mask=None) -> np.ndarray:
    n, k = len(pixels), len(self.devices)
    pad = -n % k
    if pad:   # every device gets the same number of rows
      pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, 0)])
      if mask is not None:
        mask = np.concatenate([mask, np.repeat(mask[-1:], pad, 0)])
    pixels = jax.device_put(np.asarray(pixels, np.uint8), self.rows)
    if mask is not None:
      mask = jax.device_put(mask, self.rows)
    # pylint: disable-next=protected-access
    out = self.bundle._predict(self.variables, pixels, mask)
    return np.asarray(out)[:n]


class OrtPredictor:
  """The bundle's ONNX graph on onnxruntime's CPU provider."""

  name = 'onnxruntime'

  def __init__(self, path: str, columns=None):
    """`columns`: the graph's output column of each bundle row (None: the
    same order)."""
    import onnxruntime  # pylint: disable=import-outside-toplevel
    self.path = path
    self.columns = None if columns is None else np.asarray(columns)
    self.session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    self.input = self.session.get_inputs()[0].name

  @property
  def image_size(self) -> int | None:
    size = self.session.get_inputs()[0].shape[1]
    return size if isinstance(size, int) else None

  def __call__(self, pixels, mask=None) -> np.ndarray:
    del mask  # square and pad geometries only
    # The WD graph takes BGR float32 0-255.
    x = np.ascontiguousarray(np.asarray(pixels)[..., ::-1], np.float32)
    out = self.session.run(None, {self.input: x})[0]
    return out if self.columns is None else out[:, self.columns]


def cache_root() -> str:
  root = os.environ.get('JAXTAG_CACHE')
  if not root:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
        os.path.expanduser('~'), '.cache')
    root = os.path.join(base, 'jaxtag')
  return root


def bundle_hash(directory: str) -> str:
  """A digest of every file of the bundle (names and bytes)."""
  digest = hashlib.sha256(_EXPORT_VERSION.encode())
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not os.path.isfile(path) or name.startswith('model.'):
      continue
    digest.update(name.encode() + b'\0')
    with open(path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  return digest.hexdigest()[:24]


def unsupported_reason(bundle) -> str | None:
  """Why the bundle has no ONNX form for tagging; None when it has one."""
  refusal = bundle.task.onnx_refusal()   # a captioner's beam search
  if refusal:
    return refusal
  if bundle.preprocess.geometry == 'native':
    return 'its geometry is native (inputs of several shapes and a mask)'
  return None


def onnx_model(bundle) -> str:
  """The path of an ONNX graph of `bundle` at its training size: the one
  beside the bundle when it has that size, else one exported into the
  cache (made once). NotExportableError for heads ONNX cannot express."""
  size = int(bundle.preprocess.size)
  beside = os.path.join(bundle.directory, 'model.onnx')
  if os.path.isfile(beside):
    import onnx  # pylint: disable=import-outside-toplevel
    shape = onnx.load(beside, load_external_data=False).graph.input[0]
    dims = shape.type.tensor_type.shape.dim
    if len(dims) == 4 and dims[1].dim_value == size:
      return beside
  folder = os.path.join(cache_root(), 'onnx', bundle_hash(bundle.directory))
  path = os.path.join(folder, 'model.onnx')
  if os.path.isfile(path):
    return path
  from jaxtag.serving import onnx_export  # pylint: disable=C0415
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.export-', dir=os.path.dirname(folder))
  try:
    onnx_export.export_onnx(bundle, staging, image_size=size)
    try:   # another process may have finished first: keep its copy
      os.rename(staging, folder)
    except OSError:
      if not os.path.isfile(path):
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  print(f'Exported {bundle.directory} to ONNX for onnxruntime: {path}',
        file=sys.stderr)
  return path


def graph_columns(bundle) -> np.ndarray | None:
  """The exported graph's column of each bundle row, or None when they are
  in the same order. Bundles written before the bundle took the export's
  order list other categories after the characters; the export puts them
  before."""
  from jaxtag.serving import onnx_export  # pylint: disable=C0415
  rows = onnx_export.wd_rows(bundle.tags)
  if rows == list(range(len(rows))):
    return None
  return np.argsort(rows)


def make_predictor(bundle, backend: str = 'auto'):
  """A predictor (JaxPredictor or OrtPredictor) for `backend`; ValueError
  when onnxruntime is asked for and the bundle cannot use it."""
  if backend not in BACKENDS:
    raise ValueError(f'--backend {backend!r}; valid: {", ".join(BACKENDS)}.')
  if backend == 'jax' or (backend == 'auto'
                          and jax.default_backend() != 'cpu'):
    return JaxPredictor(bundle)
  reason = unsupported_reason(bundle)
  if reason is None:
    try:
      return OrtPredictor(onnx_model(bundle), graph_columns(bundle))
    except ImportError as e:
      reason = (f'onnxruntime or onnx is not installed ({e}; pip install '
                '"jaxtag[onnx]")')
    except Exception as e:  # pylint: disable=broad-except
      # NotExportableError names the head; anything else is an export bug.
      reason = f'{type(e).__name__}: {e}'
  if backend == 'onnxruntime':
    raise ValueError(f'--backend onnxruntime cannot run {bundle.directory}: '
                     f'{reason}. Use --backend jax.')
  print(f'Tagging with JAX: {reason}.', file=sys.stderr)
  return JaxPredictor(bundle)
