"""torchvision weights -> jaxtag: checked against a numpy torchvision.

The state dicts are random arrays under torchvision's key names, written
here as .safetensors and as a torch-format .pth (a zip of a protocol-2
pickle and raw storages, as torch.save writes it) without torch. The
reference is a float64 numpy transcription of torchvision's ResNet and
DenseNet forward passes in NCHW, independent of jaxtag's code.
"""
import collections
import contextlib
import pickle
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from jaxtag import models
from jaxtag.serving import import_weights

# ------------------------------------------------ torchvision state dicts ---


def _conv_w(rng, out, inp, k):
  return (rng.standard_normal((out, inp, k, k)) *
          np.sqrt(2.0 / (inp * k * k))).astype(np.float32)


def _bn(rng, sd, name, c, gain=1.0):
  sd[f'{name}.weight'] = (gain * rng.uniform(0.5, 1.0, c)).astype(np.float32)
  sd[f'{name}.bias'] = rng.normal(0, 0.1, c).astype(np.float32)
  sd[f'{name}.running_mean'] = rng.normal(0, 0.1, c).astype(np.float32)
  sd[f'{name}.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
  sd[f'{name}.num_batches_tracked'] = np.array(7, np.int64)


def resnet50_state_dict(seed=0, layers=(3, 4, 6, 3)):
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()
  sd['conv1.weight'] = _conv_w(rng, 64, 3, 7)
  _bn(rng, sd, 'bn1', 64)
  inp = 64
  for i, n in enumerate(layers):
    width = 64 * 2**i
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      sd[f'{p}.conv1.weight'] = _conv_w(rng, width, inp, 1)
      _bn(rng, sd, f'{p}.bn1', width)
      sd[f'{p}.conv2.weight'] = _conv_w(rng, width, width, 3)
      _bn(rng, sd, f'{p}.bn2', width)
      sd[f'{p}.conv3.weight'] = _conv_w(rng, width * 4, width, 1)
      _bn(rng, sd, f'{p}.bn3', width * 4, gain=0.3)
      if j == 0:
        sd[f'{p}.downsample.0.weight'] = _conv_w(rng, width * 4, inp, 1)
        _bn(rng, sd, f'{p}.downsample.1', width * 4)
      inp = width * 4
  sd['fc.weight'] = rng.normal(0, 0.01, (1000, 2048)).astype(np.float32)
  sd['fc.bias'] = np.zeros(1000, np.float32)
  return sd


def densenet121_state_dict(seed=0, blocks=(6, 12, 24, 16), growth=32):
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()
  sd['features.conv0.weight'] = _conv_w(rng, 64, 3, 7)
  _bn(rng, sd, 'features.norm0', 64)
  c = 64
  for i, n in enumerate(blocks):
    for j in range(n):
      p = f'features.denseblock{i + 1}.denselayer{j + 1}'
      _bn(rng, sd, f'{p}.norm1', c)
      sd[f'{p}.conv1.weight'] = _conv_w(rng, 4 * growth, c, 1)
      _bn(rng, sd, f'{p}.norm2', 4 * growth)
      sd[f'{p}.conv2.weight'] = _conv_w(rng, growth, 4 * growth, 3)
      c += growth
    if i < len(blocks) - 1:
      _bn(rng, sd, f'features.transition{i + 1}.norm', c)
      sd[f'features.transition{i + 1}.conv.weight'] = _conv_w(rng, c // 2, c, 1)
      c //= 2
  _bn(rng, sd, f'features.norm{len(blocks) + 1}', c)
  sd['classifier.weight'] = rng.normal(0, 0.01, (1000, c)).astype(np.float32)
  sd['classifier.bias'] = np.zeros(1000, np.float32)
  return sd


# ------------------------------------------------ numpy torchvision forward --


def conv(x, w, stride=1, pad=0):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  k = w.shape[-1]
  win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
  # [N, C, H, W, k, k] . [O, C, k, k] over (C, k, k) -> [N, H, W, O]
  out = np.tensordot(win, w.astype(np.float64), axes=((1, 4, 5), (1, 2, 3)))
  return out.transpose(0, 3, 1, 2)


def bn(x, sd, name):
  g = lambda s: sd[f'{name}.{s}'].astype(np.float64)[None, :, None, None]  # noqa: E731
  return ((x - g('running_mean')) / np.sqrt(g('running_var') + 1e-5)
          * g('weight') + g('bias'))


def relu(x):
  return np.maximum(x, 0)


def maxpool(x):  # 3x3, stride 2, padding 1
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(
      axis=(-1, -2))


def avgpool2(x):
  n, c, h, w = x.shape
  x = x[:, :, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def resnet50_reference(sd, x, layers=(3, 4, 6, 3)):
  x = maxpool(relu(bn(conv(x, sd['conv1.weight'], 2, 3), sd, 'bn1')))
  for i, n in enumerate(layers):
    for j in range(n):
      p, stride = f'layer{i + 1}.{j}', 2 if i > 0 and j == 0 else 1
      y = relu(bn(conv(x, sd[f'{p}.conv1.weight']), sd, f'{p}.bn1'))
      y = relu(bn(conv(y, sd[f'{p}.conv2.weight'], stride, 1), sd, f'{p}.bn2'))
      y = bn(conv(y, sd[f'{p}.conv3.weight']), sd, f'{p}.bn3')
      if f'{p}.downsample.0.weight' in sd:
        x = bn(conv(x, sd[f'{p}.downsample.0.weight'], stride), sd,
               f'{p}.downsample.1')
      x = relu(x + y)
  return x


def densenet121_reference(sd, x, blocks=(6, 12, 24, 16)):
  x = maxpool(relu(bn(conv(x, sd['features.conv0.weight'], 2, 3), sd,
                      'features.norm0')))
  for i, n in enumerate(blocks):
    for j in range(n):
      p = f'features.denseblock{i + 1}.denselayer{j + 1}'
      y = conv(relu(bn(x, sd, f'{p}.norm1')), sd[f'{p}.conv1.weight'])
      y = conv(relu(bn(y, sd, f'{p}.norm2')), sd[f'{p}.conv2.weight'], 1, 1)
      x = np.concatenate([x, y], axis=1)
    if i < len(blocks) - 1:
      t = f'features.transition{i + 1}'
      x = avgpool2(conv(relu(bn(x, sd, f'{t}.norm')), sd[f'{t}.conv.weight']))
  return relu(bn(x, sd, f'features.norm{len(blocks) + 1}'))


# ------------------------------------------------ writing torch files ---


@contextlib.contextmanager
def _fake_torch():
  """Modules named like torch's, so pickle writes references to
  torch._utils._rebuild_tensor_v2 and torch.FloatStorage by name."""
  saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
  torch = types.ModuleType('torch')
  utils = types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('only written, never called')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  storage_types = {}
  for name in ('FloatStorage', 'LongStorage'):
    storage_types[name] = type(name, (), {'__module__': 'torch'})
    setattr(torch, name, storage_types[name])
  torch._utils = utils
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    yield utils._rebuild_tensor_v2, storage_types
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def save_pth(state_dict, path):
  """torch.save's zip layout: <name>/data.pkl, <name>/data/<key>, version."""
  with _fake_torch() as (rebuild, storage_types):

    class Storage:
      def __init__(self, key, array):
        self.key, self.array = key, array

    class Tensor:
      def __init__(self, storage, array):
        self.storage, self.array = storage, array

      def __reduce__(self):
        a = self.array
        stride = tuple(s // a.itemsize for s in a.strides)
        return rebuild, (self.storage, 0, a.shape, stride, False,
                         collections.OrderedDict())

    storages, tensors = [], collections.OrderedDict()
    for name, value in state_dict.items():
      a = np.ascontiguousarray(value)
      storages.append(Storage(str(len(storages)), a))
      tensors[name] = Tensor(storages[-1], a)

    class Pickler(pickle.Pickler):
      def persistent_id(self, obj):
        if isinstance(obj, Storage):
          kind = ('FloatStorage' if obj.array.dtype == np.float32
                  else 'LongStorage')
          return ('storage', storage_types[kind], obj.key, 'cpu',
                  obj.array.size)
        return None

    import io
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(tensors)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    z.writestr('archive/data.pkl', buffer.getvalue())
    z.writestr('archive/byteorder', 'little')
    for s in storages:
      z.writestr(f'archive/data/{s.key}', s.array.tobytes())
    z.writestr('archive/version', '3\n')


def save_safetensors(state_dict, path):
  import safetensors.numpy
  safetensors.numpy.save_file(
      {k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(path))


# ------------------------------------------------ tests ---


def _jaxtag_features(arch, converted, image, **backbone_kwargs):
  backbone = models.BACKBONES[arch](**backbone_kwargs)
  variables = {'params': {}, 'batch_stats': {}}
  for key, value in converted.items():
    collection, _, path = key.rpartition(':')
    node = variables[collection or 'params']
    *parents, leaf = path.split('/')[1:]   # drop 'backbone'
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value)
  apply = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
  out = apply(variables, jnp.asarray(image.transpose(0, 2, 3, 1),
                                     jnp.float32))
  return np.asarray(out).transpose(0, 3, 1, 2)


def _image(size, seed=1):
  return np.random.default_rng(seed).standard_normal((2, 3, size, size))


@pytest.mark.parametrize('fmt', ['safetensors', 'pth'])
def test_file_readers_round_trip(tmp_path, fmt):
  sd = resnet50_state_dict(layers=(1, 1, 1, 1))
  sd['layer1.0.conv1.weight'] = np.asfortranarray(sd['layer1.0.conv1.weight'])
  path = tmp_path / f'w.{fmt}'
  (save_pth if fmt == 'pth' else save_safetensors)(sd, path)
  loaded = import_weights.read_state_dict(str(path))
  assert sorted(loaded) == sorted(sd)
  for k, v in sd.items():
    assert loaded[k].dtype == v.dtype and loaded[k].size == v.size, k
    np.testing.assert_array_equal(loaded[k].reshape(v.shape), v)


def test_pth_reader_follows_strides_and_offsets(tmp_path):
  # Two tensors sharing a storage, one transposed at an offset (a view).
  with _fake_torch() as (rebuild, storage_types):
    class T:
      def __init__(self, offset, shape, stride):
        self.args = (offset, shape, stride)

      def __reduce__(self):
        return rebuild, ('S',) + self.args + (False, collections.OrderedDict())

    class P(pickle.Pickler):
      def persistent_id(self, obj):
        if obj == 'S':
          return ('storage', storage_types['FloatStorage'], '0', 'cpu', 12)
        return None
    import io
    buffer = io.BytesIO()
    P(buffer, protocol=2).dump({'a': T(0, (3, 4), (4, 1)),
                                'b': T(2, (2, 3), (1, 2))})
  path = tmp_path / 'views.pth'
  base = np.arange(12, dtype=np.float32)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('views/data.pkl', buffer.getvalue())
    z.writestr('views/data/0', base.tobytes())
  loaded = import_weights.read_state_dict(str(path))
  np.testing.assert_array_equal(loaded['a'], base.reshape(3, 4))
  np.testing.assert_array_equal(loaded['b'], [[2, 4, 6], [3, 5, 7]])


@pytest.mark.slow
def test_resnet50_matches_torchvision_forward(tmp_path):
  sd = resnet50_state_dict()
  path = tmp_path / 'resnet50.safetensors'
  save_safetensors(sd, path)
  out = tmp_path / 'resnet50.npz'
  converted = import_weights.import_weights(str(path), 'resnet50', str(out))
  with np.load(out) as stored:
    assert sorted(stored.files) == sorted(converted)
  image = _image(64)
  ref = resnet50_reference(sd, image)
  ours = _jaxtag_features('resnet50', converted, image,
                          symmetric_padding=True)
  assert ours.shape == ref.shape == (2, 2048, 2, 2)
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
  # jaxtag's default 'SAME' padding differs from torchvision on even sizes.
  same = _jaxtag_features('resnet50', converted, image)
  assert np.abs(same - ref).max() > 1e-2


@pytest.mark.slow
def test_densenet121_from_pth_matches_torchvision_forward(tmp_path):
  sd = densenet121_state_dict()
  path = tmp_path / 'densenet121.pth'
  save_pth(sd, path)
  converted = import_weights.import_weights(str(path), 'densenet121',
                                            str(tmp_path / 'd.npz'))
  image = _image(32)
  ref = densenet121_reference(sd, image)
  ours = _jaxtag_features('densenet121', converted, image)
  assert ours.shape == ref.shape == (2, 1024, 1, 1)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_old_densenet_key_names_and_resnet101_keys():
  sd = densenet121_state_dict(seed=3)
  old = {k.replace('.norm1.', '.norm.1.').replace('.conv2.', '.conv.2.'): v
         for k, v in sd.items()}
  assert old != sd
  a = import_weights.convert(sd, 'densenet121')
  b = import_weights.convert(old, 'densenet121')
  assert sorted(a) == sorted(b)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  r101 = resnet50_state_dict(layers=(3, 4, 23, 3))
  converted = import_weights.convert(r101, 'resnet101')
  assert len(converted) == len(import_weights.expected_shapes('resnet101'))


def test_errors_name_the_problem(tmp_path):
  sd = resnet50_state_dict()
  with pytest.raises(ValueError, match='valid: .*resnet50'):
    import_weights.convert(sd, 'vgg16')
  with pytest.raises(ValueError, match='does not have.*densenet121'):
    import_weights.convert(sd, 'densenet121')
  broken = dict(sd)
  del broken['layer2.0.conv2.weight']
  with pytest.raises(ValueError, match='lacks 1 .*BottleneckBlock_3/Conv_1'):
    import_weights.convert(broken, 'resnet50')
  with pytest.raises(ValueError, match='lacks'):
    import_weights.convert(sd, 'resnet101')
  bad = tmp_path / 'w.pth'
  bad.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match="torch's zip format"):
    import_weights.read_state_dict(str(bad))


@pytest.mark.slow
def test_a_training_config_starts_from_the_imported_backbone(tmp_path,
                                                             tiny_data_dir):
  from jaxtag import config as config_lib
  from jaxtag import train
  from jaxtag import trees
  sd = resnet50_state_dict()
  save_safetensors(sd, tmp_path / 'r50.safetensors')
  converted = import_weights.import_weights(
      str(tmp_path / 'r50.safetensors'), 'resnet50', str(tmp_path / 'r50.npz'))
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  config.model.backbone = 'resnet50'
  config.model.backbone_kwargs = {'symmetric_padding': True}
  config.init.backbone = str(tmp_path / 'r50.npz')
  run = train.Run(config, str(tmp_path / 'run'))
  state = train.starting_state(run)
  params = trees.flatten(state.params)
  stats = trees.flatten(state.batch_stats)
  for key, value in converted.items():
    collection, _, name = key.rpartition(':')
    got = (stats if collection == 'batch_stats' else params)[name]
    np.testing.assert_array_equal(np.asarray(got), value)
  assert len(converted) == len(params) - 2 + len(stats)  # all but the head
  run.checkpointer.close()
