r"""python -m jaxtag.main --config configs/vallet_pixiv.py --workdir runs/vallet

Vallet & Sakamoto (2015), "A Multi-Label Convolutional Neural Network for
Automatic Image Annotation": their 16-layer CNN (Table 1) trained from
scratch with the multi-label softmax and their RMSprop variant, judged with
their fully convolutional prediction (multi-scale confidence maps, one label
per cell, summed) and a linear threshold fitted on the validation split.

The default runs on `pixiv_characters/paper`, the character tags of Pixiv
images selected as they did (their dataset: 115 characters, about 1M
images; data_builders/pixiv_characters/README.md), resized at build time so
the shortest side is 256 with area interpolation:

  python -m jaxtag.main --config configs/vallet_pixiv.py --workdir runs/vallet \
      --config.dataset.manual_dir=/data/pixiv

Its `config.data.mean` is the ImageNet mean pixel as a stand-in: the build
writes the training split's mean pixel to `build_report.json`
(`mean_pixel`, 0-255); set `--config.data.mean` to it divided by 255.

Variants (`--config configs/vallet_pixiv.py:<variant>`):
- `tiny`: seconds on `synthetic_anime/tiny`, for tests.
- `synthetic`: the character tags of `synthetic_anime/default` (96 px
  images, so every size is scaled by 96/256), width 0.5, 10 epochs; it
  departs from the paper where a short CPU run needs it: alpha0 = 0.001
  with alpha_max = 1, hidden biases starting at 0 and He-initialised
  conv kernels (see below). About 10 minutes on 2 idle CPU cores.
- `voc2007`: Pascal VOC 2007 (their Table 3), on the `voc2007` builder
  built with `train_set=train` (VOC's train, val and test sets: the
  threshold is fitted on val, never on test), difficult labels masked out
  of the metrics. The paper fine-tunes an ImageNet
  Network-in-Network there; this trains the Table 1 network (start it from
  trained weights with config.init.path) with their fine-tuning rates,
  alpha0 = 0.001 and alpha_max = 0.01, for 9 epochs.

Each variant predicts with their method; the 10-crop baseline of their
Table 3 is the same checkpoint evaluated with
`--config.model.head_kwargs.prediction=crops` (see
docs/methods/vallet.md).

Preprocessing, as their Sec. 2.1: the shortest side goes to
`data.image_size` (256) and training takes a random square of that side
(crop 'random' with scale 1) with random flips; test images keep their
aspect ratio (eval geometry 'native'). Pixels are divided by 255 and the
training split's mean pixel is subtracted (std 1). Resizing uses area
interpolation (`data.interpolation='area'`, Pillow's BOX filter: the mean of
each output pixel's footprint, OpenCV's INTER_AREA when shrinking).
"""
from jaxtag import config as config_lib

# jaxtag.data.ops.mean_pixel over the 12,000 training images of
# synthetic_anime/default.
SYNTHETIC_MEAN = (0.6374, 0.6410, 0.6523)
IMAGENET_MEAN = (0.485, 0.456, 0.406)


def get_config(arg=None):
  config = config_lib.defaults()
  config.dataset.name = 'pixiv_characters/paper'
  config.dataset.label_feature = 'tags'

  config.data.image_size = 256
  config.data.crop = 'random'          # a square of the whole shortest side
  config.data.crop_scale = (1.0, 1.0)
  config.data.flip = True
  config.data.interpolation = 'area'
  config.data.mean = IMAGENET_MEAN     # stand-in; see the docstring
  config.data.std = (1.0, 1.0, 1.0)
  config.data.workers = 'auto'

  width, hidden_bias, kernel_init = 1.0, 1.0, 'glorot'
  config.model.backbone = 'vallet'
  config.model.head = 'vallet'
  config.model.pool = 'gap'
  config.loss.name = 'multilabel_softmax'

  config.optim.name = 'vallet_rmsprop'
  config.optim.lr = 0.01               # alpha0
  config.optim.max_lr = 0.01           # alpha_max
  config.optim.schedule = {'name': 'constant', 'warmup_steps': 0}

  config.batch_size = 128
  config.num_epochs = 50.0
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 2000
  config.eval.batch_size = 64
  config.eval.geometry = 'native'
  config.eval.thresholds = 'linear'

  if arg == 'tiny':
    config.dataset.name = 'synthetic_anime/tiny'
    config.dataset.label_feature = 'characters'
    config.data.image_size = 32
    config.data.mean = SYNTHETIC_MEAN
    config.data.workers = 0
    width = 0.125
    config.batch_size = 16
    config.num_epochs = None
    config.num_train_steps = 8
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.eval.batch_size = 32
    config.eval.bucket_aspects = (1.0,)
  elif arg == 'synthetic':
    config.dataset.name = 'synthetic_anime/default'
    config.dataset.label_feature = 'characters'
    config.data.image_size = 96
    config.data.mean = SYNTHETIC_MEAN
    width = 0.5
    # The paper's alpha0 = alpha_max = 0.01 is SGD at 0.01 for every weight
    # whose gradient is below 1 in magnitude: too slow for 1,100 steps (the
    # loss was still at the label prior after 400). alpha0 = 0.001 with the
    # cap raised to 1 divides by the gradient's magnitude, so each weight
    # moves up to 0.001 per step.
    config.optim.lr = 0.001
    config.optim.max_lr = 1.0
    # Biases of 1 in the hidden layers drown the image-dependent part of
    # every activation (pixels are in [0, 1]): with them the loss stayed at
    # the label prior (2.97) for 650 steps. Biases start at 0 here.
    hidden_bias = 0.0
    # Glorot kernels with 0 biases still stayed at the prior (938 steps):
    # through 16 ReLUs the image's signal halves at every layer. He's
    # fan-in scaling keeps it.
    kernel_init = 'he'
    config.batch_size = 64
    config.num_epochs = 10.0
    config.log_every_steps = 50
    config.eval_every_steps = 100_000   # only the final evaluation
    config.checkpoint_every_steps = 500
    config.eval.batch_size = 128
    config.eval.bucket_aspects = (1.0,)  # every image is square
  elif arg == 'voc2007':
    config.dataset.name = 'voc2007'
    config.dataset.build_options = {'train_set': 'train'}
    config.dataset.label_mask_feature = 'tags_difficult'
    config.optim.lr = 0.001
    config.optim.max_lr = 0.01
    config.num_epochs = 9.0
  elif arg is not None:
    raise ValueError(f'Unknown variant {arg!r} of configs/vallet_pixiv.py; '
                     'valid: tiny, synthetic, voc2007 (or none).')

  config.model.backbone_kwargs = {'width': width, 'hidden_bias': hidden_bias,
                                  'kernel_init': kernel_init}
  config.model.head_kwargs = {'width': width, 'hidden_bias': hidden_bias,
                              'prediction': 'fcn'}
  return config
