r"""torchvision ImageNet weights -> jaxtag backbone parameters; timm models
(WD v3 taggers among them) -> a serving bundle.

  python -m jaxtag.serving.import_weights --arch resnet50 resnet50.pth \
      --out runs/imagenet/resnet50.npz
  python -m jaxtag.serving.import_weights --timm DIR --out BUNDLE

`--timm DIR`: a timm hub folder (model.safetensors, config.json and, for
the WD v3 taggers, selected_tags.csv) of a vit_*, eva02_*, convnext_* or
swinv2_* model becomes a bundle that jaxtag.tag and jaxtag.serve load, with
BUNDLE/init.npz for fine-tuning (`--config.init.path=BUNDLE/init.npz`,
`config.init.head`); jaxtag/serving/timm_bundle.py documents the
conventions.

The torchvision form:

reads a torchvision state dict (`.safetensors`, or a `.pth` in torch's zip
format, read without torch; torch itself is used where it is installed)
and writes an `.npz` of jaxtag parameters ('backbone/stem_conv/kernel',
...) and BatchNorm statistics ('batch_stats:backbone/stem_norm/mean', ...),
the format `config.init.path` reads (jaxtag/warm_start.py). Train from it:

  python -m jaxtag.main --config configs/X.py --workdir RUN \
      --config.model.backbone=resnet50 \
      --config.model.backbone_kwargs.symmetric_padding=True \
      --config.init.path=runs/imagenet/resnet50.npz \
      --config.data.mean='(0.485,0.456,0.406)' \
      --config.data.std='(0.229,0.224,0.225)'

How the architectures line up (checked against a numpy transcription of
torchvision's forward pass in tests/test_import_weights.py):
- ResNet: both are v1.5 (the stride on the bottleneck's 3x3 conv), bias-free
  convs, BatchNorm eps 1e-5, a 7x7/2 stem padded 3 and a 3x3/2 max-pool
  padded 1. One difference: jaxtag pads convs 'SAME', which on an even
  size pads a stride-2 3x3 conv by (0, 1) where torchvision pads (1, 1);
  `backbone_kwargs.symmetric_padding=True` pads like torchvision and must
  be set with these weights.
- DenseNet: identical (BN-ReLU-conv1x1-BN-ReLU-conv3x3 layers, transitions
  BN-ReLU-conv1x1-avgpool 2/2, the final BN and ReLU).
- torchvision normalises inputs with the ImageNet mean and std; set
  config.data.mean/std to them (above) to fine-tune as it was trained.
- The classifier (`fc`, `classifier`) is not imported: the head is the
  method's.
"""
from __future__ import annotations

import collections
import functools
import os
import pickle
import re
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from jaxtag import models
from jaxtag import trees

ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
         'densenet121', 'densenet169')
# Entries of a torchvision state dict that have no jaxtag counterpart.
_IGNORED = re.compile(r'(^|\.)(fc|classifier)\.|num_batches_tracked$')
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'),
       'running_var': ('batch_stats', 'var')}


class WeightImportError(ValueError):
  """The weight file does not fit the architecture."""


# ------------------------------------------------------------- reading ---

_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64,
    'HalfStorage': np.float16, 'LongStorage': np.int64,
    'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_, 'BFloat16Storage': jnp.bfloat16,
}


class _StorageType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if not size:
    return np.array(storage[offset])
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise WeightImportError('a tensor reaches past the end of its storage: the '
                       'file is truncated or corrupt.')
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=size, strides=[s * item for s in stride])
  return np.array(view)


def _rebuild_parameter(data, *unused):
  del unused
  return data


def _read_torch_zip(path: str) -> dict[str, Any]:
  """A `torch.save` zip archive -> its unpickled object, tensors as numpy."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith('data.pkl')]
    if not pickles:
      raise WeightImportError(f'{path} is a zip file without data.pkl: not a '
                         'torch.save archive.')
    prefix = pickles[0][:-len('data.pkl')]

    class Unpickler(pickle.Unpickler):

      def find_class(self, module, name):
        if module == 'torch._utils' and name in ('_rebuild_tensor_v2',
                                                 '_rebuild_tensor'):
          return _rebuild_tensor
        if module == 'torch._utils' and name == '_rebuild_parameter':
          return _rebuild_parameter
        if module == 'torch' and name in _STORAGE_DTYPES:
          return _StorageType(name)
        if module == 'collections' and name == 'OrderedDict':
          return collections.OrderedDict
        raise WeightImportError(
            f'{path} holds a {module}.{name}, which this reader does not '
            'load (it reads state dicts of tensors). Save the state dict '
            'alone, or install torch.')

      def persistent_load(self, pid):
        kind, storage_type, key, _, _ = pid[:5]
        if kind != 'storage':
          raise WeightImportError(f'{path}: unknown persistent id {kind!r}.')
        raw = archive.read(f'{prefix}data/{key}')
        return np.frombuffer(raw, dtype=storage_type.dtype)

    with archive.open(pickles[0]) as f:
      return Unpickler(f).load()


def _read_pth(path: str) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
  if torch is not None:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in _state_dict(loaded, path).items()}
  if not zipfile.is_zipfile(path):
    raise WeightImportError(
        f'{path} is not in torch\'s zip format (torch < 1.6 wrote another '
        'one). Install torch, or re-save it with torch.save(state_dict, '
        'path) or as .safetensors.')
  return _read_torch_zip(path)


def _state_dict(loaded, path: str) -> dict[str, Any]:
  """The state dict inside a checkpoint ({'state_dict': ...} and
  DataParallel's 'module.' prefixes included)."""
  for key in ('state_dict', 'model'):
    if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
      loaded = loaded[key]
  if not isinstance(loaded, dict):
    raise WeightImportError(f'{path} holds a {type(loaded).__name__}, not a '
                       'state dict.')
  return {re.sub(r'^module\.', '', k): v for k, v in loaded.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torchvision state dict from `.safetensors` or `.pth`/`.pt`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'Weight file {path} does not exist.')
  if path.endswith('.safetensors'):
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    loaded = safetensors.numpy.load_file(path)
  elif path.endswith(('.pth', '.pt', '.bin')):
    loaded = _read_pth(path)
  else:
    raise WeightImportError(f'{path}: give a .safetensors or .pth file.')
  return {k: np.asarray(v) for k, v in _state_dict(loaded, path).items()}


# ------------------------------------------------------------- mapping ---

def _conv(kernel):
  """torch OIHW -> flax HWIO."""
  return np.transpose(kernel, (2, 3, 1, 0))


def _resnet_names(arch: str) -> dict[str, tuple[str, str]]:
  """torchvision module prefix -> (jaxtag module path, 'conv' | 'norm')."""
  factory = models.BACKBONES[arch]
  stages = factory.keywords['stage_sizes']
  block = factory.keywords['block'].__name__
  names = {'conv1': ('stem_conv', 'conv'), 'bn1': ('stem_norm', 'norm')}
  convs = 3 if block == 'BottleneckBlock' else 2
  k = 0
  for i, blocks in enumerate(stages):
    for j in range(blocks):
      ours, theirs = f'{block}_{k}', f'layer{i + 1}.{j}'
      for c in range(convs):
        names[f'{theirs}.conv{c + 1}'] = (f'{ours}/Conv_{c}', 'conv')
        names[f'{theirs}.bn{c + 1}'] = (f'{ours}/BatchNorm_{c}', 'norm')
      names[f'{theirs}.downsample.0'] = (f'{ours}/proj_conv', 'conv')
      names[f'{theirs}.downsample.1'] = (f'{ours}/proj_norm', 'norm')
      k += 1
  return names


def _densenet_names(arch: str) -> dict[str, tuple[str, str]]:
  blocks = models.BACKBONES[arch].keywords['block_sizes']
  names = {'features.conv0': ('stem_conv', 'conv'),
           'features.norm0': ('stem_norm', 'norm')}
  # flax numbers the unnamed Conv and BatchNorm layers in call order.
  count = {'conv': 0, 'norm': 0}

  def add(theirs, kind):
    prefix = 'Conv' if kind == 'conv' else 'BatchNorm'
    names[theirs] = (f'{prefix}_{count[kind]}', kind)
    count[kind] += 1

  for i, num_layers in enumerate(blocks):
    for j in range(num_layers):
      layer = f'features.denseblock{i + 1}.denselayer{j + 1}'
      for part in ('norm1', 'conv1', 'norm2', 'conv2'):
        add(f'{layer}.{part}', part[:-1])
    if i < len(blocks) - 1:
      add(f'features.transition{i + 1}.norm', 'norm')
      add(f'features.transition{i + 1}.conv', 'conv')
  names[f'features.norm{len(blocks) + 1}'] = ('final_norm', 'norm')
  return names


def _modernise(key: str) -> str:
  # Old torchvision DenseNet files name 'denselayer1.norm.1.weight'.
  return re.sub(r'(denselayer\d+\.(?:norm|conv))\.([12])\.', r'\1\2.', key)


def convert(state_dict: dict[str, np.ndarray], arch: str,
            source: str = 'the weight file') -> dict[str, np.ndarray]:
  """{torchvision key: array} -> {'backbone/...': params,
  'batch_stats:backbone/...': statistics}, checked against jaxtag's
  `arch` at width 1 (every parameter present, shapes equal)."""
  if arch not in ARCHS:
    raise ValueError(f'Unknown --arch {arch!r}; valid: {", ".join(ARCHS)}.')
  names = (_resnet_names if arch.startswith('resnet')
           else _densenet_names)(arch)
  out, unused = {}, []
  for key, value in state_dict.items():
    key = _modernise(key)
    module, _, leaf = key.rpartition('.')
    if module not in names:
      if not _IGNORED.search(key):
        unused.append(key)
      continue
    ours, kind = names[module]
    if kind == 'conv' and leaf == 'weight':
      out[f'backbone/{ours}/kernel'] = _conv(value).astype(np.float32)
    elif kind == 'norm' and leaf in _BN:
      collection, name = _BN[leaf]
      prefix = '' if collection == 'params' else 'batch_stats:'
      out[f'{prefix}backbone/{ours}/{name}'] = value.astype(np.float32)
    elif leaf != 'num_batches_tracked':
      unused.append(key)
  if unused:
    raise WeightImportError(f'{source} has {len(unused)} entries that {arch} '
                       f'does not have, e.g. {unused[:3]}: is it a '
                       f'torchvision {arch}?')
  _check(out, arch, source)
  return out


@functools.lru_cache(maxsize=None)
def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
  """Keys and shapes of `convert`'s output for jaxtag's `arch`."""
  backbone = models.BACKBONES[arch]()
  shapes = jax.eval_shape(lambda: backbone.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  flat = {}
  for key, leaf in trees.flatten(shapes).items():
    collection, _, rest = key.partition('/')
    prefix = '' if collection == 'params' else f'{collection}:'
    flat[f'{prefix}backbone/{rest}'] = tuple(leaf.shape)
  return flat


def _check(out: dict[str, np.ndarray], arch: str, source: str) -> None:
  want = expected_shapes(arch)
  missing = sorted(set(want) - set(out))
  if missing:
    raise WeightImportError(f'{source} lacks {len(missing)} of the {arch} '
                       f'weights, e.g. {missing[:3]}.')
  for key, shape in want.items():
    if tuple(out[key].shape) != shape:
      raise WeightImportError(f'{source}: {key} has shape {out[key].shape}, '
                         f'jaxtag\'s {arch} {shape}.')


def import_weights(path: str, arch: str, out: str) -> dict[str, np.ndarray]:
  """Reads `path`, converts it for `arch` and writes the `.npz` `out`."""
  converted = convert(read_state_dict(path), arch, path)
  if not out.endswith('.npz'):
    raise WeightImportError(f'--out {out}: config.init.path reads .npz files.')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, **converted)
  return converted


def _define_flags():
  global _ARCH, _OUT_FILE, _TIMM
  _ARCH = flags.DEFINE_enum('arch', None, ARCHS, 'torchvision architecture.')
  _OUT_FILE = flags.DEFINE_string('out', None, 'The .npz file to write '
                                  '(with --timm: the bundle folder).')
  _TIMM = flags.DEFINE_string('timm', None, 'A timm model folder '
                              '(model.safetensors, config.json).')


def main(argv):
  if _TIMM.value:
    if len(argv) != 1 or not _OUT_FILE.value:
      raise app.UsageError('python -m jaxtag.serving.import_weights --timm '
                           'DIR --out BUNDLE')
    from jaxtag.serving import timm_bundle  # pylint: disable=C0415
    try:
      done = timm_bundle.import_timm(_TIMM.value, _OUT_FILE.value)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
      raise SystemExit(f'Error: {e}') from e
    print(f'Wrote the bundle {done["bundle"]}: {done["backbone"]}, '
          f'{done["parameters"]:,} parameters, {done["num_classes"]} tags'
          f'{" (WD v3 conventions)" if done["wd"] else ""}. Fine-tune from '
          f'it with --config.init.path={done["init"]}.')
    return
  if len(argv) != 2 or not _ARCH.value or not _OUT_FILE.value:
    raise app.UsageError('python -m jaxtag.serving.import_weights --arch '
                         'ARCH FILE.{pth,safetensors} --out OUT.npz')
  converted = import_weights(argv[1], _ARCH.value, _OUT_FILE.value)
  params = sum(v.size for k, v in converted.items() if ':' not in k)
  extra = (' with --config.model.backbone_kwargs.symmetric_padding=True'
           if _ARCH.value.startswith('resnet') else '')
  print(f'Wrote {_OUT_FILE.value}: {params:,} parameters of {_ARCH.value}. '
        f'Train from it with --config.init.path={_OUT_FILE.value}{extra}.')


if __name__ == '__main__':
  # Defined here, not at import: jaxtag.serving.convert imports this module
  # and has flags of the same names.
  _define_flags()
  app.run(main)
