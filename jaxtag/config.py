"""The config schema: every key a jaxtag experiment may set, and its checks.

Experiment files in configs/ start from `defaults()` and change values; they
never invent keys. The trainer calls `validate()` so that a typo in a config
file fails at start-up with the list of valid keys, instead of being ignored.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from jaxtag.data import tag_metadata

# Sub-dicts whose keys belong to a chosen part (a backbone, a head, a loss,
# a label encoder, feature providers): the part itself checks them against
# its own fields, so a method's options never enter this schema.
FREE_FORM = frozenset({
    'model.backbone_kwargs', 'model.head_kwargs', 'model.features',
    'loss.kwargs', 'dataset.label_encoding_kwargs',
    'optim.schedule', 'data.cartoonize_options',
    'dataset.build_options',  # checked by the builder against its config
})


def defaults() -> ml_collections.ConfigDict:
  """All keys with neutral defaults; see configs/default.py for a real run."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'synthetic_anime/default'   # TFDS 'builder/config'
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
  # A real dataset's raw folder and its builder options (fields of the
  # builder's config, see data_builders/NAME/README.md); the trainer builds
  # it from these on first use (jaxtag.data.build).
  c.dataset.manual_dir = ml_collections.FieldReference(None, field_type=str)
  c.dataset.build_options = ml_collections.ConfigDict()
  c.dataset.train_split = 'train'
  c.dataset.eval_split = 'validation'
  c.dataset.test_split = 'test'
  c.dataset.label_feature = 'tags'             # or 'tags_clean'
  # A record feature listing tag ids to leave out of the metrics for that
  # image (voc2007: 'tags_difficult', the protocol's difficult labels); ''
  # scores every (image, tag) pair.
  c.dataset.label_mask_feature = ''
  # How labels reach the loss (jaxtag/data/encoders.py): 'multi_hot' [C],
  # 'class_id' (one id per example), 'sequence' (START, labels..., END for a
  # label decoder) or 'caption' (START, words..., END for a caption
  # decoder); the encoder's own options in label_encoding_kwargs.
  c.dataset.label_encoding = 'multi_hot'
  c.dataset.label_encoding_kwargs = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 96
  c.data.crop = 'random_resized'               # 'random_resized' | 'random' | 'none'
  c.data.crop_scale = (0.5, 1.0)               # area fraction kept by the crop
  c.data.flip = True
  # 'bilinear' | 'area' (Pillow BOX) | 'bicubic' | 'lanczos'; runs meant for
  # WD front ends use 'bicubic' with eval.geometry 'pad' (configs/default.py:wd).
  c.data.interpolation = 'bilinear'
  # Training only: when set, each training image's resize filter is drawn
  # from these names (from the example's seed, so resumable), as JAX-CV's
  # WD v3 training drew area, bilinear or bicubic per image; evaluation
  # and serving keep `interpolation`. Empty: `interpolation` everywhere.
  c.data.train_interpolations = ()
  # Cartoonise every decoded image first (jaxtag/data/cartoonize.py): '' is
  # off, else the method ('opencv', 'onnx', 'callable'); its options
  # (CartoonizeOptions fields) in cartoonize_options.
  c.data.cartoonize = ''
  c.data.cartoonize_options = {}
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.5, 0.5, 0.5)
  # The channel order the model sees: 'RGB', or 'BGR' as the WD v3 taggers
  # were trained (mean and std are in this order); the bundle's
  # preprocess.json records it, and serving and export flip alike.
  c.data.channel_order = 'RGB'
  # Per-sample MixUp and cutout in the train step (jaxtag/data/
  # batch_augment.py); 0 is off.
  c.data.mixup_prob = 0.0
  c.data.mixup_alpha = 0.2                     # lam ~ Beta(alpha, alpha)
  c.data.cutout_prob = 0.0
  c.data.cutout_size = 0.5                     # the square's side / image side
  # Worker processes and reader threads: an int, or 'auto' to size them from
  # the host's cores (jaxtag.data.pipeline.read_parallelism). Typed `object`
  # so that both `--config.data.workers=auto` and `=4` parse. The default 0
  # decodes in the training process, which works anywhere (tests,
  # notebooks); configs/ ask for 'auto'.
  c.data.workers = ml_collections.FieldReference(0, field_type=object)
  c.data.read_threads = ml_collections.FieldReference('auto',
                                                      field_type=object)
  c.data.prefetch = 2                          # batches buffered per process
  c.data.device_prefetch = 2                   # global batches already on device

  c.mesh = ml_collections.ConfigDict()
  c.mesh.model = 1                             # devices the state is split over

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'resnet18'
  c.model.backbone_kwargs = ml_collections.ConfigDict()
  c.model.head = 'linear'
  c.model.head_kwargs = ml_collections.ConfigDict()
  c.model.pool = 'gap'                         # 'gap' | 'gmp'
  c.model.dtype = 'float32'                    # computation dtype; params stay float32
  # Providers of the batch features a head declares that neither the label
  # encoder nor the dataset gives: {feature: {'provider': NAME, **its
  # options}} (jaxtag/models/features.py). ADD-GCN with captions takes
  # 'semantic' from a frozen captioner's encoder or from its per-image cache.
  c.model.features = ml_collections.ConfigDict()

  # Starting weights for a fresh run (a resumed run ignores them): a workdir,
  # a checkpoint folder or a .npz parameter file, and a regex over parameter
  # paths ('backbone/...', 'head/...') selecting what is taken from it.
  c.init = ml_collections.ConfigDict()
  c.init.path = ml_collections.FieldReference(None, field_type=str)
  c.init.include = '^backbone/'
  # Backbone weights alone, e.g. ImageNet weights converted by
  # `python -m jaxtag.serving.import_weights` (an .npz): the backbone's
  # parameters and batch-norm statistics, after config.init.path if both.
  c.init.backbone = ml_collections.FieldReference(None, field_type=str)
  # The head under a new vocabulary: 'reset' (fresh) or 'match_by_name'
  # (the trained rows of the tags both vocabularies share; warm_start.py).
  c.init.head = 'reset'

  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'sigmoid_bce'
  c.loss.kwargs = ml_collections.ConfigDict()
  # A csv of `tag,weight` rows weighting each tag's term of the training
  # loss (tags it leaves out weigh 1); None: all weigh 1.
  c.loss.tag_weights = ml_collections.FieldReference(None, field_type=str)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  # vallet_rmsprop's alpha_max (its alpha0 is lr); None: the same as lr.
  c.optim.max_lr = ml_collections.FieldReference(None, field_type=float)
  c.optim.clip_norm = ml_collections.FieldReference(None, field_type=float)
  c.optim.schedule = ml_collections.ConfigDict(
      {'name': 'cosine', 'warmup_steps': 0, 'end_lr_factor': 0.0})
  c.optim.param_groups = ()                    # (('regex', lr_multiplier), ...)

  c.batch_size = 64                            # global, over all processes
  # Duration: steps win over epochs when both are set; the loop sees steps.
  c.num_train_steps = ml_collections.FieldReference(None, field_type=int)
  c.num_epochs = ml_collections.FieldReference(None, field_type=float)
  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 128
  c.eval.threshold = 0.5                       # the 'global' policy's value
  c.eval.top_k = 3
  # PNG plots (precision-recall, per-tag AP, label graph, ...) in
  # workdir/plots and TensorBoard after each results file (jaxtag/plots.py;
  # needs the 'plots' extra).
  c.eval.plots = True
  # 'global' (eval.threshold), 'category' (eval.category_thresholds), 'tag'
  # (per tag, fitted on the eval split), 'linear' (a linear function of the
  # score vector, fitted on the eval split; Vallet & Sakamoto).
  c.eval.thresholds = 'global'
  c.eval.category_thresholds = ml_collections.ConfigDict({
      name: {'general': 0.35, 'character': 0.85}.get(name, 0.5)
      for name in tag_metadata.CATEGORIES.values()})
  # 'square' (resize to image_size^2), 'pad' (the WD contract: EXIF turn,
  # alpha on white, padded white to a square, resized to image_size), 'native' (shortest side to image_size, aspect
  # kept, batched in buckets of these longest/shortest ratios).
  c.eval.geometry = 'square'
  c.eval.bucket_aspects = (1.0, 1.5, 2.0)
  return c


# Keys of earlier versions in config.dataset, by the label encoding whose
# options they now are (config.dataset.label_encoding_kwargs).
_OLD_ENCODING_KEYS = {
    'sequence': {'sequence_order': 'order', 'max_labels': 'max_labels'},
    'caption': {'caption_max_tokens': 'max_tokens',
                'caption_references': 'references',
                'caption_min_count': 'min_count',
                'caption_targets': 'targets'},
}


def upgrade(saved: dict) -> dict:
  """A run's saved config (its config.json, as a dict) with the keys of
  earlier versions where they live now: the sequence and caption keys of
  config.dataset in label_encoding_kwargs, config.model.semantic in
  config.model.features.semantic."""
  saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
  dataset, model = saved.get('dataset', {}), saved.get('model', {})
  moved = _OLD_ENCODING_KEYS.get(dataset.get('label_encoding'), {})
  kwargs = dict(dataset.get('label_encoding_kwargs') or {})
  for old in {k for keys in _OLD_ENCODING_KEYS.values() for k in keys}:
    if old in dataset:
      value = dataset.pop(old)
      if old in moved:
        kwargs.setdefault(moved[old], value)
  if 'label_encoding' in dataset:
    dataset['label_encoding_kwargs'] = kwargs
  semantic = model.pop('semantic', None)
  if semantic and (semantic.get('captioner') or semantic.get('cache')):
    model.setdefault('features', {})['semantic'] = {
        'provider': 'captioner', **semantic}
  return saved


def _keys(cfg: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    path = f'{prefix}{key}'
    out[path] = value
    if isinstance(value, ml_collections.ConfigDict) and path not in FREE_FORM:
      out.update(_keys(value, path + '.'))
  return out


def _valid_children(schema: dict[str, Any], parent: str) -> list[str]:
  prefix = parent + '.' if parent else ''
  return sorted(k[len(prefix):] for k in schema
                if k.startswith(prefix) and '.' not in k[len(prefix):])


def unknown_key_message(path: str) -> str:
  """The error for `config.<path>`: which key is wrong and what is allowed."""
  schema = _keys(defaults())
  parent = path.rsplit('.', 1)[0] if '.' in path else ''
  while parent and parent not in schema:
    parent = parent.rsplit('.', 1)[0] if '.' in parent else ''
  where = f'config.{parent}' if parent else 'config'
  return (f'Unknown config key `config.{path}`. Valid keys of {where}: '
          + ', '.join(_valid_children(schema, parent))
          + '. Fix the spelling in the config file or in the --config.* flag.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects keys that jaxtag does not know, listing the valid ones."""
  schema = _keys(defaults())
  for path in _keys(config):
    if path not in schema:
      raise ValueError(unknown_key_message(path))
  if config.num_train_steps is None and config.num_epochs is None:
    raise ValueError('Set config.num_train_steps or config.num_epochs.')
  if config.data.channel_order not in ('RGB', 'BGR'):
    raise ValueError(f'Unknown config.data.channel_order '
                     f'{config.data.channel_order!r}; valid: RGB, BGR.')


def check_overrides(argv: Sequence[str]) -> None:
  """Explains a `--config.x.y=v` flag that names a key missing from the config.

  ml_collections raises a bare AttributeError for such flags; this finds the
  offending flag and raises a ValueError that lists the valid keys instead.
  """
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')),
              None)
  if spec is None:
    idx = next((i for i, a in enumerate(argv) if a == '--config'), None)
    spec = argv[idx + 1] if idx is not None and idx + 1 < len(argv) else None
  if spec is None:
    return
  config = load_config_file(spec)
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    node: Any = config
    for part in path.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise ValueError(unknown_key_message(path))
      node = node[part]


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/file.py[:arg]' the way config_flags does."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Config file {path} does not exist.')
  module_spec = importlib.util.spec_from_file_location('_jaxtag_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
