"""Real-layout folders for image_folder, animeface_character, voc2007,
coco2014 and flickr8k, written at test time (layouts: each
builder's data_builders/<name>/README.md).

Each writer returns what the tests check against. `extra` adds that many
plain images (for split-stability and timing runs); `size` is their side.
"""
from __future__ import annotations

import json
import os

import builder_fixtures as fx
import numpy as np
from PIL import Image

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse',
               'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')


def write(path: str, data: bytes | str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data.encode() if isinstance(data, str) else data)
  return path


def noise(seed: int, size: int, fmt: str = 'JPEG') -> bytes:
  """A distinct image: smooth colour noise, so JPEG sizes are realistic."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(2, size // 8),) * 2 + (3,), np.uint8)
  image = Image.fromarray(small).resize((size, size), Image.BILINEAR)
  return fx.encoded(image, fmt, **({'quality': 90} if fmt == 'JPEG' else {}))


def image_folder(root: str, extra: int = 0, size: int = 16) -> dict:
  """Four class folders, two of them aliases of the others, with a corrupt
  JPEG, a CMYK JPEG, an RGBA PNG, a 16-bit PNG and a nested folder."""
  files = {
      'saber/a.png': fx.png((10, 20, 30)),
      'saber/b.jpg': fx.jpeg(),
      'saber_arutoria_pendoragon/c.png': fx.rgba_png((200, 100, 0, 128)),
      'mato_sakura/d.jpg': fx.cmyk_jpeg(),
      'mato_sakura/broken.jpg': fx.corrupt_jpeg(),
      'matou_sakura/e.png': fx.png16(np.full((4, 4), 65535, np.uint16)),
      'matou_sakura/nested/f.png': fx.png((1, 2, 3)),
      'matou_sakura/notes.txt': 'not an image',
      'rin/g.png': fx.png((9, 9, 9)),
  }
  for i in range(extra):
    files[f'extra_{i % 5}/{i:05d}.jpg'] = noise(i, size)
  for key, data in files.items():
    write(os.path.join(root, key), data)
  return files


def animeface(root: str, layout: str = 'thumb', extra: int = 0,
              size: int = 160) -> dict:
  """Nagadomi's layout: an `ignore` file, a color.csv with a header, a
  corrupt PNG; `layout` 'thumb' or 'moeimouto'."""
  base = (os.path.join(root, 'animeface-character-dataset', 'thumb')
          if layout == 'thumb' else os.path.join(root, 'moeimouto-faces'))
  files = {
      '000_hatsune_miku/face_1_2_3.png': fx.png((0, 200, 200), (8, 8)),
      '000_hatsune_miku/face_4_5_6.png': fx.rgba_png(),
      '000_hatsune_miku/face_7_8_9.png': fx.png((1, 1, 1), (8, 8)),
      '001_mato_sakura/face_10_11_12.png': fx.png((90, 0, 90), (8, 8)),
      '002_matou_sakura/face_13_14_15.png': fx.png16(
          np.zeros((5, 5), np.uint16)),
      '002_matou_sakura/face_16_17_18.png': b'\x89PNG\r\n\x1a\n broken',
  }
  for i in range(extra):
    files[f'{100 + i % 5:03d}_extra_{i % 5}/face_{i}.png'] = noise(
        i, size, 'PNG')
  for key, data in files.items():
    write(os.path.join(base, key), data)
  write(os.path.join(base, '000_hatsune_miku', 'ignore'), 'face_7_8_9.png\n')
  write(os.path.join(base, '000_hatsune_miku', 'color.csv'),
        'file,hair_r,hair_g,hair_b,eye_r,eye_g,eye_b\n'
        'face_1_2_3.png,0,200,200,10,20,30\n')
  return files


def voc2007(root: str, extra: int = 0, size: int = 64) -> dict:
  """VOCdevkit/VOC2007 with trainval (train + val) and test sets.

  Returns {image id: [20] of 1 / -1 / 0} per VOC set name."""
  year = os.path.join(root, 'VOCdevkit', 'VOC2007')
  person, dog, cat, car = (VOC_CLASSES.index(c) for c in
                           ('person', 'dog', 'cat', 'car'))
  sets = {'train': {}, 'val': {}, 'test': {}}

  def label(image_set, image_id, positives=(), difficult=()):
    row = np.full(20, -1, np.int8)
    row[list(positives)] = 1
    row[list(difficult)] = 0
    sets[image_set][image_id] = row

  label('train', '000005', [person, dog], [cat])
  label('train', '000007', [car])
  label('train', '000009', [], [person])      # only a difficult object
  label('val', '000012', [cat])
  label('test', '000001', [dog], [person])
  label('test', '000002', [car])
  images = {'000005': fx.jpeg((200, 0, 0)), '000007': fx.cmyk_jpeg(),
            '000009': fx.jpeg((0, 0, 200)), '000012': fx.jpeg((9, 9, 9)),
            '000001': fx.jpeg((0, 200, 0)), '000002': fx.corrupt_jpeg()}
  for i in range(extra):
    image_id = f'{100000 + i:06d}'
    label(('train', 'val', 'test')[i % 3], image_id,
          [i % 20, (i * 7) % 20], [(i * 3) % 20] if i % 4 == 0 else [])
    images[image_id] = noise(i, size)
  for image_id, data in images.items():
    write(os.path.join(year, 'JPEGImages', f'{image_id}.jpg'), data)
  sets['trainval'] = {**sets['train'], **sets['val']}
  for image_set, rows in sets.items():
    for c, name in enumerate(VOC_CLASSES):
      lines = ''.join(f'{i} {int(r[c]):>2}\n' for i, r in sorted(rows.items()))
      write(os.path.join(year, 'ImageSets', 'Main', f'{name}_{image_set}.txt'),
            lines)
  return sets


def coco2014(root: str, extra: int = 0, size: int = 64) -> dict:
  """train2014 / val2014 with instances files: category ids out of order
  in the file, an image without annotations, a missing image file."""
  categories = [{'id': 18, 'name': 'dog', 'supercategory': 'animal'},
                {'id': 1, 'name': 'person', 'supercategory': 'person'},
                {'id': 3, 'name': 'car', 'supercategory': 'vehicle'},
                {'id': 10, 'name': 'traffic light',
                 'supercategory': 'outdoor'}]
  train = {9: [1, 18, 1], 25: [3], 30: [], 42: [10, 3]}   # 42 has no file
  val = {73: [18], 74: [1, 10]}
  for i in range(extra):
    (train if i % 3 else val)[1000 + i] = [
        categories[i % 4]['id'], categories[(i * 3) % 4]['id']]
  for image_set, labels in (('train2014', train), ('val2014', val)):
    images, annotations = [], []
    for image_id, cats in labels.items():
      name = f'COCO_{image_set}_{image_id:012d}.jpg'
      images.append({'id': image_id, 'file_name': name, 'width': 12,
                     'height': 8})
      annotations += [{'id': len(annotations) + 1, 'image_id': image_id,
                       'category_id': c, 'iscrowd': 0} for c in cats]
      if image_id != 42:
        data = (fx.png() if image_id == 25 else
                noise(image_id, size) if image_id >= 1000 else fx.jpeg())
        write(os.path.join(root, image_set, name), data)
    write(os.path.join(root, 'annotations', f'instances_{image_set}.json'),
          json.dumps({'images': images, 'annotations': annotations,
                      'categories': categories}))
  return {'train': train, 'val': val}


def flickr8k(root: str, layout: str = 'original', extra: int = 0,
             size: int = 64) -> dict:
  """{image: captions}; the original layout with split files, or the
  re-packaged one with captions.txt (a quoted caption with a comma, and an
  unquoted one)."""
  names = [f'{1000 + i}_abc.jpg' for i in range(6 + extra)]
  captions = {n: [f'caption {k} of {n}' for k in range(5)] for n in names}
  captions[names[1]][2] = 'a dog, running'
  captions[names[2]][0] = 'two words, then "quoted"'
  folder = 'Flicker8k_Dataset' if layout == 'original' else 'Images'
  for i, n in enumerate(names):
    data = fx.truncated_jpeg() if i == 3 else noise(i, size)
    write(os.path.join(root, folder, n), data)
  if layout == 'original':
    write(os.path.join(root, 'Flickr8k.token.txt'), ''.join(
        f'{n}#{k}\t{c}\n' for n in names for k, c in enumerate(captions[n])))
    split_of = {0: 'train', 1: 'train', 2: 'dev', 3: 'test', 4: 'test'}
    for s in ('train', 'dev', 'test'):
      listed = [n for i, n in enumerate(names)
                if split_of.get(i, 'train' if i >= 6 else None) == s]
      write(os.path.join(root, f'Flickr_8k.{s}Images.txt'),
            ''.join(f'{n}\n' for n in listed))
  else:
    def quoted(c):
      return '"' + c.replace('"', '""') + '"' if '"' in c else c
    write(os.path.join(root, 'captions.txt'), 'image,caption\n' + ''.join(
        f'{n},{quoted(c)}\n' for n in names for c in captions[n]))
  return captions
