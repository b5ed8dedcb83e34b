r"""python -m jaxtag.main --config configs/addgcn_caption_danbooru.py \
    --config.dataset.manual_dir=/path/to/danbooru \
    --config.model.features.semantic.captioner=runs/captioner_adapted \
    --workdir runs/addgcn_caption

Multi-modal ADD-GCN, Lan et al.'s setting: configs/addgcn_danbooru.py
(ResNet-101 at 448 px, the 100 most frequent general tags of `danbooru`,
SGD with momentum 0.9 and weight decay 1e-4, learning rate 0.5 for the
attention module and the GCNs and 0.05 for the backbone) with the caption
semantic vector v_cap in the dynamic graph (`semantic_dim`, fused by
replacing the reference's global vector).

v_cap comes from a trained captioner (configs/captioner_flickr8k.py, best
adapted to anime by `python -m jaxtag.projects.caption_adaptation`), the provider
`captioner` of the feature 'semantic' (jaxtag/models/semantic.py): its
encoder runs frozen inside the step on the tagger's augmented image
(`config.model.features.semantic.captioner=RUN`), or is read from a
per-image cache (`config.model.features.semantic.cache=DIR`, written by
`python -m jaxtag.projects.semantic_cache`). One of them must be given. `semantic_dim` is the
captioner's `context_dim` (512 for configs/captioner_flickr8k.py); the
captioner trained at 224 px reads the 448 px image as a 28 x 28 grid,
which the pooling averages.

Variants:
- `:synthetic`: configs/addgcn_danbooru.py:synthetic (configs/default.py's
  half-width ResNet-18 at 96 px on `synthetic_anime/default`, its AdamW
  schedule and budget) with v_cap from a configs/captioner_flickr8k.py
  :synthetic captioner (context_dim 128), for the CPU experiment of
  docs/methods/captions.md.
- `:tiny`: configs/addgcn_danbooru.py:tiny with a configs/captioner_flickr8k.py
  :tiny captioner (context_dim 16), seconds, for tests.
"""
import os

from jaxtag import config as config_lib

VARIANTS = ('synthetic', 'tiny')
# The context_dim of the captioner each variant expects.
SEMANTIC_DIM = {None: 512, 'synthetic': 128, 'tiny': 16}


def get_config(arg=None):
  if arg is not None and arg not in VARIANTS:
    raise ValueError(f'Unknown variant {arg!r} of '
                     f'configs/addgcn_caption_danbooru.py; valid: '
                     f'{", ".join(VARIANTS)} (or none).')
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'addgcn_danbooru.py')
  config = config_lib.load_config_file(path + (f':{arg}' if arg else ''))
  config.model.head_kwargs.semantic_dim = SEMANTIC_DIM[arg]
  config.model.head_kwargs.semantic_fusion = 'replace_global'
  config.model.features = {'semantic': {
      'provider': 'captioner', 'captioner': '', 'cache': '',
      'pooling': 'avg'}}
  return config
