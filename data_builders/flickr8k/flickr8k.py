"""flickr8k: 8,091 photographs with five captions each, for captioning.

  python -m jaxtag.data.build flickr8k --manual_dir DIR --data_dir DIR

DIR holds either layout:
- original: Flicker8k_Dataset/*.jpg, Flickr8k.token.txt ('<image>#<k>\\t
  <caption>') and Flickr_8k.{train,dev,test}Images.txt, which are kept as
  the train / validation / test splits;
- re-packaged: Images/*.jpg and captions.txt (CSV, header 'image,caption');
  no split files, so the images are ordered by a stable hash of their name
  and cut 6,000 / 1,000 / the rest (option split_sizes).
There are no tags: selected_tags.csv is empty and `tags` is an empty list.
Layout and options: README.md beside this file.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os

import tensorflow_datasets as tfds

from data_builders import files
from data_builders import manual
from data_builders import split_writer
from data_builders import splits

_ORIGINAL_SPLITS = {'train': 'Flickr_8k.trainImages.txt',
                    'validation': 'Flickr_8k.devImages.txt',
                    'test': 'Flickr_8k.testImages.txt'}


@dataclasses.dataclass
class Flickr8kConfig(tfds.core.BuilderConfig):
  # Re-packaged layout only: images in train and validation; the rest test.
  split_sizes: str = '6000,1000'


def read_tokens(path: str) -> dict[str, list[str]]:
  """{image: captions in #k order} of Flickr8k.token.txt."""
  numbered = collections.defaultdict(dict)
  for line_no, line in enumerate(files.read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    name, tab, caption = line.partition('\t')
    image, hash_sign, k = name.partition('#')
    if not tab or not hash_sign or not k.strip().isdigit():
      raise ValueError(f"{path}, line {line_no}: expected '<image>#<k>"
                       f"<TAB><caption>', found {line[:80]!r}.")
    numbered[image.strip()][int(k)] = caption.strip()
  return {image: [caps[k] for k in sorted(caps)]
          for image, caps in numbered.items()}


def read_captions_csv(path: str) -> dict[str, list[str]]:
  """{image: captions in file order} of a re-packaged captions.txt.

  An unquoted caption may hold commas: a line is cut at its first comma
  (image names have none) unless the caption is CSV-quoted.
  """
  out = collections.defaultdict(list)
  lines = files.read_text(path).splitlines()
  if not lines or lines[0].strip().lower().replace(' ', '') != 'image,caption':
    raise ValueError(f"{path} must start with the header 'image,caption'.")
  for line_no, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    image, comma, caption = line.partition(',')
    if not comma:
      raise ValueError(f"{path}, line {line_no}: expected 'image,caption'.")
    if caption.startswith('"'):
      caption = next(csv.reader(io.StringIO(caption)))[0]
    out[image.strip()].append(caption.strip())
  return dict(out)


def read_image_list(path: str) -> list[str]:
  return [line.strip() for line in files.read_text(path).splitlines()
          if line.strip()]


def hash_splits(names, sizes: str) -> dict[str, list[str]]:
  """Names ordered by a stable hash, cut into train / validation / rest."""
  try:
    n_train, n_val = (int(v) for v in sizes.split(','))
  except ValueError:
    raise ValueError(f'flickr8k option split_sizes={sizes!r}: write it as '
                     'TRAIN,VALIDATION image counts, e.g. 6000,1000.') from None
  ordered = sorted(names, key=lambda n: (splits.stable_unit(n, 'flickr8k'), n))
  return {'train': ordered[:n_train],
          'validation': ordered[n_train:n_train + n_val],
          'test': ordered[n_train + n_val:]}


def read_layout(root: str, split_sizes: str):
  """(image folder, {image: captions}, {split: image names}, scan counts)."""
  scan = collections.Counter()
  if os.path.exists(os.path.join(root, 'Flickr8k.token.txt')):
    folder = os.path.join(root, 'Flicker8k_Dataset')
    captions = read_tokens(os.path.join(root, 'Flickr8k.token.txt'))
    by_split = {}
    for split, file in _ORIGINAL_SPLITS.items():
      path = os.path.join(root, file)
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path} is missing: the original layout '
                                'keeps its split files beside '
                                'Flickr8k.token.txt.')
      by_split[split] = read_image_list(path)
    listed = {n for names in by_split.values() for n in names}
    scan['not_in_a_split'] = len(set(captions) - listed)
  elif os.path.exists(os.path.join(root, 'captions.txt')):
    folder = os.path.join(root, 'Images')
    captions = read_captions_csv(os.path.join(root, 'captions.txt'))
    by_split = hash_splits(captions, split_sizes)
  else:
    raise FileNotFoundError(
        f'{root} holds neither Flickr8k.token.txt (original layout) nor '
        'captions.txt (re-packaged); pass the Flickr8k folder as '
        '--manual_dir.')
  for split, names in by_split.items():
    kept = [n for n in names if captions.get(n)]
    scan['no_captions'] += len(names) - len(kept)
    by_split[split] = sorted(kept)
  return folder, captions, by_split, scan


class Flickr8k(manual.ManualBuilder):
  """Flickr8k: images and their five captions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [Flickr8kConfig(
      name='default', description='Every option at its default (README.md).')]
  DEFAULT_CONFIG_NAME = 'default'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Pass the folder with Flicker8k_Dataset/ and Flickr8k.token.txt, or '
      'with Images/ and captions.txt, as --manual_dir; layout in '
      'data_builders/flickr8k/README.md.')

  def _info(self):
    # tags: always empty; id: a stable hash of the file name.
    return self.dataset_info(
        __doc__, captions=tfds.features.Sequence(tfds.features.Text()),
        file_name=tfds.features.Text())

  def _split_generators(self, dl_manager):
    c = self.builder_config
    folder, captions, by_split, scan = read_layout(
        os.fspath(self.manual_root(dl_manager)), c.split_sizes)
    counts = collections.Counter(len(v) for v in captions.values())
    split_writer.begin(self, [], scan, images_by_caption_count={
        str(k): n for k, n in sorted(counts.items())})
    return split_writer.generators(self, {split: [manual.Record(
        name, os.path.join(folder, name), [],
        {'captions': captions[name], 'id': splits.stable_id(name),
         'file_name': name}) for name in names]
                                          for split, names in by_split.items()})
