r"""python -m jaxtag.main --config configs/cnn_rnn_danbooru.py --workdir runs/cnn_rnn

CNN-RNN (Wang et al. 2016), as Deng et al.'s undated proposal applies it for
anime tags:
a ResNet-50 and an LSTM label decoder (jaxtag/models/heads/lstm_decoder.py)
trained with teacher forcing on label sequences, most frequent tag first,
and evaluated by beam search. The default trains on a Danbooru dump
(data_builders/danbooru/README.md), built on first use from
`config.dataset.manual_dir` with its general and character tags (top 5,000
and 2,000, `config.dataset.build_options` to change them):

  python -m jaxtag.main --config configs/cnn_rnn_danbooru.py --workdir runs/cnn_rnn \
      --config.dataset.manual_dir=/data/danbooru2021

  python -m jaxtag.main --config configs/cnn_rnn_danbooru.py:synthetic \
      --workdir runs/cnn_rnn_synthetic

is the CPU comparison on `synthetic_anime/default`: configs/default.py (same
backbone, data, optimiser, batch and 8 epochs) with the linear head swapped
for the decoder; its train step costs about what the baseline's does
(docs/methods/cnn_rnn.md). `:tiny` is
configs/default.py:tiny with a small decoder, under a minute, for tests.
"""
import os

from jaxtag import config as config_lib


def _with_decoder(config, *, max_labels, embed_dim=64, lstm_dim=512):
  config.model.head = 'lstm_decoder'
  config.dataset.label_encoding = 'sequence'
  config.dataset.label_encoding_kwargs = {
      'order': 'frequent',   # Wang et al.'s order
      'max_labels': max_labels}
  config.loss.name = 'sequence_ce'
  config.model.head_kwargs = {
      'embed_dim': embed_dim, 'lstm_dim': lstm_dim, 'beam_width': 3,
      # A beam emits the labels, then END: one more token than the labels
      # a training sequence holds. A reference, so that overriding
      # --config.dataset.label_encoding_kwargs.max_labels moves it too.
      'max_steps': config.dataset.label_encoding_kwargs.get_ref(
          'max_labels') + 1}
  return config


def _baseline(arg=None):
  """configs/default.py[:arg], the baseline this method is compared with."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  return config_lib.load_config_file(path + (f':{arg}' if arg else ''))


def get_config(arg=None):
  if arg == 'synthetic':
    config = _baseline()
    # 99% of synthetic images have at most 22 tags (mean 12.4); 24 keeps
    # nearly every label, where 16 would cut the rarest of 15% of images.
    return _with_decoder(config, max_labels=24)
  if arg == 'tiny':
    config = _baseline('tiny')
    # 8 labels: fewer unrolled steps, a faster compile.
    return _with_decoder(config, max_labels=8, embed_dim=16, lstm_dim=32)
  if arg is not None:
    raise ValueError(f'Unknown variant {arg!r} of configs/cnn_rnn_danbooru.py;'
                     ' valid: synthetic, tiny (or none).')

  config = config_lib.defaults()
  config.dataset.name = 'danbooru'
  config.dataset.label_feature = 'tags'
  config.data.image_size = 224                 # Wang et al.'s input size
  config.data.crop = 'random_resized'
  config.data.crop_scale = (0.6, 1.0)
  config.data.workers = 'auto'

  config.model.backbone = 'resnet50'
  config.model.pool = 'gap'
  config.model.dtype = 'bfloat16'

  config.optim.name = 'adamw'
  config.optim.lr = 1e-3
  config.optim.weight_decay = 1e-4
  config.optim.schedule = {'name': 'cosine', 'warmup_steps': 2000,
                           'end_lr_factor': 0.01}

  config.batch_size = 256
  config.num_epochs = 20.0
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  config.eval.batch_size = 256
  config.eval.thresholds = 'tag'
  # Danbooru posts carry about 30 general tags; the sequence keeps the 32
  # most frequent of each image's tags.
  return _with_decoder(config, max_labels=32)
