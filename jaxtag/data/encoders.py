"""Label encoders by name: `config.dataset.label_encoding` picks one.

`config.dataset.label_encoding_kwargs` sets its options, checked against
the encoder's fields as `config.model.head_kwargs` are against a head's,
so a method's label options live with its encoder, not in the config
schema. The run sets the fields `num_tags` (the dataset's tag count),
`counts` (train tag counts) and `label_feature` (config.dataset.
label_feature) on encoders that have them.

The encoder API (jaxtag/data/labels.py: MultiHot is the base):
- `prepare(workdir, source)`: called once by the run before anything else
  is read; what the encoder derives from the train split (a caption
  vocabulary) lives in the workdir. `source` is the train split, or None
  when a finished run is only evaluated or converted.
- `num_classes`: the width of the model's output.
- `spec`: {name: (shape, dtype)} of what `encode` returns per example;
  `encode(value, seed, position)`, `padding()`.
- `train_labels()`: None, or {record: value} replacing the train records'
  own label values (a teacher's captions).
"""
from __future__ import annotations

import dataclasses

from jaxtag.data import captions
from jaxtag.data import labels

ENCODERS = {
    'multi_hot': labels.MultiHot,
    'class_id': labels.ClassId,
    'sequence': labels.LabelSequence,
    'caption': captions.CaptionEncoder,
}
# Fields that the run sets, never the config.
RUN_FIELDS = ('num_tags', 'counts', 'label_feature')


def options(cls) -> set[str]:
  """The fields of `cls` that config.dataset.label_encoding_kwargs may set."""
  return {f.name for f in dataclasses.fields(cls)
          if f.name not in RUN_FIELDS and f.metadata.get('option', True)}


def make_encoder(dataset_config, *, num_tags: int, counts=None):
  """The encoder `config.dataset.label_encoding` names, with its kwargs."""
  name = dataset_config.label_encoding
  if name not in ENCODERS:
    raise ValueError(f'Unknown config.dataset.label_encoding {name!r}; valid: '
                     f'{", ".join(ENCODERS)}.')
  cls = ENCODERS[name]
  kwargs = dict(dataset_config.label_encoding_kwargs)
  valid = options(cls)
  unknown = sorted(set(kwargs) - valid)
  if unknown:
    raise ValueError(
        f'Unknown key(s) {unknown} in config.dataset.label_encoding_kwargs '
        f'for {name!r}; valid: {", ".join(sorted(valid)) or "none"}.')
  run = {'num_tags': num_tags, 'counts': counts,
         'label_feature': dataset_config.label_feature}
  fields = {f.name for f in dataclasses.fields(cls)}
  return cls(**{k: v for k, v in run.items() if k in fields}, **kwargs)
