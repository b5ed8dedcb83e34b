"""Small real-layout dataset folders for the builder tests, made at test time.

The image helpers make the awkward files a real dump holds (a corrupt
JPEG, a CMYK JPEG, an RGBA PNG, a 16-bit PNG, an EXIF-rotated JPEG); the
folder writers lay them out as the datasets do (see
each builder's data_builders/<name>/README.md).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def solid(color, size=(12, 8), mode='RGB') -> Image.Image:
  """A flat image of `size` (width, height)."""
  return Image.new(mode, size, tuple(color))


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def jpeg(color=(200, 30, 30), size=(12, 8)) -> bytes:
  return encoded(solid(color, size), 'JPEG', quality=95)


def png(color=(30, 200, 30), size=(12, 8)) -> bytes:
  return encoded(solid(color, size), 'PNG')


def rgba_png(rgba=(200, 100, 0, 128), size=(6, 4)) -> bytes:
  return encoded(solid(rgba, size, 'RGBA'), 'PNG')


def cmyk_jpeg(cmyk=(255, 0, 0, 0), size=(16, 16)) -> bytes:
  return encoded(solid(cmyk, size, 'CMYK'), 'JPEG', quality=95)


def png16(values: np.ndarray) -> bytes:
  """A 16-bit grayscale PNG of uint16 `values`."""
  return encoded(Image.fromarray(np.asarray(values, np.uint16)), 'PNG')


def exif_rotated_png(pixels: np.ndarray, orientation: int = 6) -> bytes:
  """A PNG of `pixels` as stored, with an EXIF orientation tag."""
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encoded(Image.fromarray(np.asarray(pixels, np.uint8)), 'PNG',
                 exif=exif)


def exif_rotated_jpeg(orientation: int = 6, size=(16, 8)) -> bytes:
  exif = Image.Exif()
  exif[0x0112] = orientation
  return encoded(solid((90, 90, 200), size), 'JPEG', exif=exif)


def corrupt_jpeg() -> bytes:
  """A JPEG whose header parses and whose entropy-coded data is garbage."""
  data = bytearray(encoded(Image.fromarray(
      np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)),
      'JPEG'))
  start = data.find(b'\xff\xda') + 5
  data[start:start + 12] = b'\xff' * 12
  return bytes(data)


def truncated_jpeg() -> bytes:
  data = encoded(Image.fromarray(
      np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8)),
      'JPEG')
  return data[:len(data) // 2]


def animated_gif(colors=((255, 0, 0), (0, 0, 255)), size=(8, 8)) -> bytes:
  frames = [solid(c, size) for c in colors]
  buffer = io.BytesIO()
  frames[0].save(buffer, format='GIF', save_all=True,
                 append_images=frames[1:], duration=100, loop=0)
  return buffer.getvalue()


# --- danbooru -----------------------------------------------------------------

# Tags the generated posts draw from: (category, name).
DANBOORU_TAGS = [(0, '1girl'), (0, 'solo'), (0, 'long_hair'), (0, 'smile'),
                 (0, 'open_mouth'), (0, '^_^'), (0, '>_<'), (4, 'hatsune_miku'),
                 (4, 'kagamine_rin'), (4, 'saber_(fate)'), (3, 'vocaloid'),
                 (1, 'some_artist'), (5, 'highres')]
_DANBOORU_FIELDS = {0: 'tag_string_general', 1: 'tag_string_artist',
                    3: 'tag_string_copyright', 4: 'tag_string_character',
                    5: 'tag_string_meta'}


def danbooru_posts(num_plain: int = 40, seed: int = 0) -> list[dict]:
  """Post descriptions: id, rating, tags [(category, name)], kind (how the
  file is written: jpg, rgba_png, cmyk_jpg, png16, corrupt, missing, mp4)
  and the rows' faults (no_id, deleted, banned)."""
  rng = np.random.default_rng(seed)
  special = [('rgba_png', 'png'), ('cmyk_jpg', 'jpg'), ('png16', 'png'),
             ('corrupt', 'jpg'), ('truncated', 'jpg'), ('missing', 'jpg'),
             ('mp4', 'mp4'), ('deleted', 'jpg'), ('banned', 'jpg'),
             ('no_id', 'jpg')]
  posts = []
  for i in range(num_plain + len(special)):
    kind, ext = special[i] if i < len(special) else ('jpg', 'jpg')
    picks = rng.choice(len(DANBOORU_TAGS), rng.integers(1, 6), replace=False)
    posts.append({'id': 1000 + 7 * i, 'rating': 'gsqe'[i % 4],
                  'tags': sorted(DANBOORU_TAGS[j] for j in picks),
                  'kind': kind, 'ext': ext, 'color': tuple(
                      int(v) for v in rng.integers(0, 256, 3))})
  return posts


def _danbooru_image(post) -> bytes | None:
  kind, color = post['kind'], post['color']
  if kind == 'rgba_png':
    return rgba_png((*color, 128), size=(20, 10))
  if kind == 'cmyk_jpg':
    return cmyk_jpeg((*color, 0), size=(10, 14))
  if kind == 'png16':
    return png16(np.full((12, 9), 300 * (color[0] + 1) % 65536, np.uint16))
  if kind == 'corrupt':
    return corrupt_jpeg()
  if kind == 'truncated':
    return truncated_jpeg()
  if kind == 'missing':
    return None
  if kind == 'mp4':
    return b'\x00\x00\x00\x18ftypmp42'
  return jpeg(color, size=(16, 12))


def write_danbooru(root, posts, schema: str = '2021',
                   tree: str = 'original') -> None:
  """A dump in the gwern layout: metadata/ JSON Lines of `schema` ('2021':
  tag_string_*, numbers as numbers; '2020': a tags list, every value a
  string) and images at <tree>/<id % 1000 as 4 digits>/<id>.<ext>."""
  import json
  import pathlib
  root = pathlib.Path(root)
  (root / 'metadata').mkdir(parents=True, exist_ok=True)
  lines = []
  for post in posts:
    if schema == '2021':
      row = {'id': post['id'], 'rating': post['rating'],
             'file_ext': post['ext'], 'is_deleted': post['kind'] == 'deleted',
             'is_banned': post['kind'] == 'banned', 'score': 3}
      for category, field in _DANBOORU_FIELDS.items():
        row[field] = ' '.join(n for c, n in post['tags'] if c == category)
    else:
      row = {'id': str(post['id']), 'rating': post['rating'],
             'file_ext': post['ext'], 'score': '3',
             'is_deleted': str(post['kind'] == 'deleted').lower(),
             'is_banned': str(post['kind'] == 'banned').lower(),
             'tags': [{'id': str(10 + DANBOORU_TAGS.index((c, n))),
                       'name': n, 'category': str(c)}
                      for c, n in post['tags']]}
    if post['kind'] == 'no_id':
      del row['id']
    lines.append(json.dumps(row))
    data = _danbooru_image(post)
    if data is not None and post['kind'] != 'no_id':
      ext = 'jpg' if tree == '512px' else post['ext']
      path = root / tree / f'{post["id"] % 1000:04d}' / f'{post["id"]}.{ext}'
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(data)
  lines.insert(5, '{"id": 1000, "rating": "g", "file_ext": "jpg"}')  # again
  lines.insert(3, '{not json')
  name = 'posts000000000000.json' if schema == '2021' else '2017000000000000.json'
  (root / 'metadata' / name).write_text('\n'.join(lines) + '\n')
  if schema == '2021':
    tags = [json.dumps({'id': 10 + i, 'name': n, 'category': c,
                        'post_count': 1}) for i, (c, n) in
            enumerate(DANBOORU_TAGS)]
    (root / 'metadata' / 'tags000000000000.json').write_text(
        '\n'.join(tags) + '\n')


# --- tagged_folder ------------------------------------------------------------

# (relative path, file kind, caption or None for no caption file)
TAGGED_FOLDER = [
    ('a.png', 'png', '1girl, long hair, smile'),
    ('b.jpg', 'jpg', '1girl,solo,^_^'),
    ('sub/c.png', 'rgba_png', 'hatsune miku \\(append\\), 1girl, unknown tag'),
    ('sub/d.jpg', 'cmyk_jpg', 'solo, >_<, long_hair'),
    ('sub/deep/e.png', 'png16', 'smile'),
    ('sub/f.jpg', 'corrupt', '1girl'),
    ('g.png', 'png', None),
    ('h.webp', 'jpg', ''),
] + [(f'more/{i:02d}.jpg', 'jpg', ', '.join(
    ['1girl', 'solo', 'smile', 'long hair', 'open mouth'][:1 + i % 5]))
     for i in range(24)]

# A community vocabulary: float ids and counts, kaomoji, categories 9/0/4.
TAGGED_VOCABULARY = '''tag_id,name,category,count
9999999.0,general,9,807691.0
470575.0,1girl,0,4412843.0
212816.0,solo,0,3629598.0
1281.0,^_^,0,12345.0
3389.0,>_<,0,23456.0
16867.0,long_hair,0,3000000.0
1300281.0,hatsune_miku_(append),4,321.0
'''


def _kind_bytes(kind: str, index: int) -> bytes:
  color = (37 * index % 256, 91 * index % 256, 53 * index % 256)
  if kind == 'png':
    return png(color)
  return _danbooru_image({'kind': kind, 'color': color})


def write_tagged_folder(root, with_vocabulary: bool = False) -> None:
  import pathlib
  root = pathlib.Path(root)
  for i, (relative, kind, caption) in enumerate(TAGGED_FOLDER):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_kind_bytes(kind, i))
    if caption is not None:
      path.with_suffix('.txt').write_text(caption)
  (root / 'notes.md').write_text('not an image')
  if with_vocabulary:
    (root / 'selected_tags.csv').write_text(TAGGED_VOCABULARY)


# --- pixiv_characters ---------------------------------------------------------

def pixiv_posts() -> list[dict]:
  """Posts with character lists chosen so that the label selection is
  worked by hand (see test_pixiv_characters_selects_labels_as_the_paper)."""
  posts = []
  def add(n, chars, **extra):
    for _ in range(n):
      i = len(posts)
      posts.append({'id': 500 + i, 'file': f'img/{500 + i}.jpg',
                    'page_count': 1, 'characters': list(chars),
                    'tags': ['1girl', *chars], 'kind': 'jpg', **extra})
  add(6, ['miku'])
  add(4, ['rin'])
  add(3, ['miku', 'luka'])        # luka: 3 images, all shared with miku
  add(2, ['rin', 'len'])          # len: 2 shared with rin
  add(2, ['kaito'])               # kaito: 2 images, none shared
  add(3, ['hatsune_miku'])        # a name 5 edits from miku: not a candidate
  add(2, ['miku', 'mikuu'])       # mikuu: distance 1 from miku and overlap
  add(1, ['miku'], page_count=3)  # a multi-image post
  add(1, ['rin'], kind='missing')
  add(1, ['rin'], kind='corrupt')
  add(1, ['miku'], kind='rgba_png')
  return posts


def write_pixiv(root, posts, fmt: str = 'jsonl') -> None:
  """metadata.jsonl (lists) or metadata.csv (space-separated strings,
  numbers as text) and the images under img/."""
  import csv
  import json
  import pathlib
  root = pathlib.Path(root)
  (root / 'img').mkdir(parents=True, exist_ok=True)
  for i, post in enumerate(posts):
    if post['kind'] != 'missing':
      size = (20 + i % 3 * 4, 16)
      color = (17 * i % 256, 200, 90)
      data = {'jpg': lambda: jpeg(color, size), 'corrupt': corrupt_jpeg,
              'rgba_png': lambda: rgba_png((*color, 100), size)}[post['kind']]()
      (root / post['file']).write_bytes(data)
  if fmt == 'jsonl':
    (root / 'metadata.jsonl').write_text('\n'.join(json.dumps(
        {k: p[k] for k in ('id', 'file', 'page_count', 'tags', 'characters')})
        for p in posts) + '\n')
  else:
    with open(root / 'metadata.csv', 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['id', 'file', 'page_count', 'tags'])
      for p in posts:
        writer.writerow([str(p['id']), p['file'], f'{p["page_count"]}.0',
                         ' '.join(p['tags'])])
    (root / 'characters.txt').write_text('\n'.join(sorted(
        {c for p in posts for c in p['characters']})) + '\n')
