"""Draws a sampled scene as a simple anime-style illustration with Pillow.

Every tag in a scene is drawn (a colour, a shape, an accessory), so that a
CNN can learn it; details such as fang, mole and blush are a few pixels.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from data_builders.synthetic_anime import photo
from data_builders.synthetic_anime import vocab
from data_builders.synthetic_anime.annotate import Scene

SKIN = ((255, 226, 204), (246, 208, 180), (236, 190, 160))
OUTFIT_COLORS = {'school_uniform': (40, 50, 95), 'maid': (25, 25, 30),
                 'kimono': (200, 40, 70), 'dress': (150, 200, 240),
                 'hoodie': (130, 130, 135), 'swimsuit': (30, 100, 220)}
CASUAL = ((200, 140, 60), (90, 150, 140), (160, 170, 80), (190, 110, 120))


def _background(draw: ImageDraw.ImageDraw, tags, size, rng):
  s = size
  if 'white_background' in tags:
    draw.rectangle([0, 0, s, s], fill=(255, 255, 255))
  elif 'simple_background' in tags:
    tint = tuple(int(x) for x in rng.integers(170, 235, 3))
    draw.rectangle([0, 0, s, s], fill=tint)
  elif 'night' in tags:
    draw.rectangle([0, 0, s, s], fill=(15, 20, 55))
    for _ in range(6):
      x, y = rng.integers(0, s), rng.integers(0, s // 3)
      draw.point([(x, y)], fill=(255, 255, 180))
    draw.ellipse([s * 0.78, s * 0.05, s * 0.92, s * 0.19], fill=(250, 240, 170))
  elif 'sky' in tags:
    for y in range(int(s * 0.8)):
      k = y / (s * 0.8)
      draw.line([(0, y), (s, y)], fill=(int(90 + 100 * k), int(160 + 60 * k),
                                        250))
    draw.rectangle([0, s * 0.8, s, s], fill=(90, 170, 80))
  else:  # indoors: wall, floor, window
    draw.rectangle([0, 0, s, s], fill=(225, 205, 170))
    draw.rectangle([0, s * 0.78, s, s], fill=(140, 95, 60))
    draw.rectangle([s * 0.06, s * 0.1, s * 0.26, s * 0.35],
                   fill=(170, 215, 245), outline=(110, 80, 50))


def _figure(draw, fig, cx, size, r, rng):
  """One character: head of radius r centred at x=cx."""
  s = size
  cy = s * 0.34 + rng.uniform(-0.02, 0.02) * s
  tags = fig.tags
  hair = next((vocab.HAIR_COLORS[t] for t in tags if t in vocab.HAIR_COLORS),
              (0, 0, 0))
  eyes = next((vocab.EYE_COLORS[t] for t in tags if t in vocab.EYE_COLORS),
              (0, 0, 0))
  skin = SKIN[rng.integers(len(SKIN))]
  long_hair = 'long_hair' in tags

  if long_hair:  # hair falls behind the shoulders
    draw.rectangle([cx - 1.15 * r, cy, cx + 1.15 * r, cy + 2.6 * r], fill=hair)
  if 'tail' in tags:
    draw.arc([cx + 0.6 * r, cy + 2.4 * r, cx + 2.2 * r, cy + 3.8 * r], 180,
             360, fill=hair, width=max(int(r * 0.3), 1))

  # Body and outfit.
  top, bottom = cy + 1.05 * r, s
  body = [cx - 1.3 * r, top, cx + 1.3 * r, bottom]
  outfit = next((o for o in OUTFIT_COLORS if o in tags), None)
  if 'swimsuit' in tags:
    draw.rectangle(body, fill=skin)
    draw.rectangle([cx - 1.0 * r, top + 0.9 * r, cx + 1.0 * r, top + 2.6 * r],
                   fill=OUTFIT_COLORS['swimsuit'])
  else:
    color = (OUTFIT_COLORS[outfit] if outfit
             else CASUAL[rng.integers(len(CASUAL))])
    draw.rectangle(body, fill=color)
  if 'serafuku' in tags:  # white sailor collar and a red scarf
    draw.polygon([(cx - 1.3 * r, top), (cx + 1.3 * r, top), (cx, top + 1.2 * r)],
                 fill=(245, 245, 250))
    draw.polygon([(cx - 0.3 * r, top + 0.9 * r), (cx + 0.3 * r, top + 0.9 * r),
                  (cx, top + 1.6 * r)], fill=(220, 30, 40))
  if 'apron' in tags:
    draw.rectangle([cx - 0.8 * r, top + 0.6 * r, cx + 0.8 * r, bottom],
                   fill=(250, 250, 250))
  if 'kimono' in tags:  # obi sash
    draw.rectangle([cx - 1.3 * r, top + 1.4 * r, cx + 1.3 * r, top + 1.9 * r],
                   fill=(250, 220, 120))
  if 'hoodie' in tags:  # hood behind the neck
    draw.ellipse([cx - 0.9 * r, top - 0.4 * r, cx + 0.9 * r, top + 0.5 * r],
                 fill=(105, 105, 110))
  if 'bag' in tags:
    draw.rectangle([cx + 1.3 * r, top + 1.6 * r, cx + 2.1 * r, top + 2.6 * r],
                   fill=(120, 70, 30))

  # Head and hair.
  head = [cx - r, cy - r, cx + r, cy + r]
  draw.ellipse(head, fill=skin)
  draw.chord([cx - 1.08 * r, cy - 1.12 * r, cx + 1.08 * r, cy + 0.5 * r], 180,
             360, fill=hair)
  if 'twintails' in tags:
    for side in (-1, 1):
      x = cx + side * 1.35 * r
      draw.ellipse([x - 0.45 * r, cy - 0.2 * r, x + 0.45 * r, cy + 2.0 * r],
                   fill=hair)
  if 'ponytail' in tags:
    draw.ellipse([cx + 0.7 * r, cy - 1.2 * r, cx + 1.6 * r, cy + 0.6 * r],
                 fill=hair)

  # Face.
  ey = cy + 0.1 * r
  for side in (-1, 1):
    ex = cx + side * 0.42 * r
    draw.ellipse([ex - 0.2 * r, ey - 0.28 * r, ex + 0.2 * r, ey + 0.28 * r],
                 fill=eyes)
  my = cy + 0.6 * r
  if 'open_mouth' in tags:
    draw.ellipse([cx - 0.15 * r, my - 0.1 * r, cx + 0.15 * r, my + 0.15 * r],
                 fill=(150, 30, 40))
  elif 'smile' in tags:
    draw.arc([cx - 0.25 * r, my - 0.2 * r, cx + 0.25 * r, my + 0.1 * r], 0,
             180, fill=(120, 40, 40), width=1)
  else:
    draw.line([(cx - 0.15 * r, my), (cx + 0.15 * r, my)], fill=(120, 40, 40))
  if 'fang' in tags:
    draw.polygon([(cx + 0.05 * r, my), (cx + 0.2 * r, my),
                  (cx + 0.12 * r, my + 0.2 * r)], fill=(255, 255, 255))
  if 'blush' in tags:
    for side in (-1, 1):
      bx = cx + side * 0.55 * r
      draw.ellipse([bx - 0.18 * r, ey + 0.3 * r, bx + 0.18 * r, ey + 0.42 * r],
                   fill=(245, 160, 160))
  if 'mole' in tags:
    draw.point([(cx + 0.35 * r, ey + 0.45 * r)], fill=(60, 40, 30))

  # Accessories.
  line = max(int(r * 0.12), 1)
  if 'glasses' in tags:
    for side in (-1, 1):
      ex = cx + side * 0.42 * r
      draw.rectangle([ex - 0.3 * r, ey - 0.25 * r, ex + 0.3 * r, ey + 0.25 * r],
                     outline=(30, 30, 30), width=line)
  if 'cat_ears' in tags:
    for side in (-1, 1):
      x = cx + side * 0.6 * r
      draw.polygon([(x - 0.35 * r, cy - 0.75 * r), (x + 0.35 * r, cy - 0.75 * r),
                    (x + side * 0.2 * r, cy - 1.6 * r)], fill=hair)
      draw.polygon([(x - 0.15 * r, cy - 0.85 * r), (x + 0.15 * r, cy - 0.85 * r),
                    (x + side * 0.12 * r, cy - 1.3 * r)], fill=(250, 170, 190))
  if 'hat' in tags:
    draw.rectangle([cx - 1.4 * r, cy - 0.85 * r, cx + 1.4 * r, cy - 0.65 * r],
                   fill=(90, 60, 40))
    draw.chord([cx - 0.9 * r, cy - 1.7 * r, cx + 0.9 * r, cy - 0.2 * r], 180,
               360, fill=(90, 60, 40))
  if 'hairband' in tags:
    draw.arc([cx - 1.0 * r, cy - 1.05 * r, cx + 1.0 * r, cy + 0.6 * r], 200,
             340, fill=(250, 250, 80), width=line)
  if 'hair_ribbon' in tags:
    x, y = cx - 0.7 * r, cy - 0.9 * r
    draw.polygon([(x, y), (x - 0.5 * r, y - 0.3 * r), (x - 0.5 * r, y + 0.3 * r)],
                 fill=(230, 20, 60))
    draw.polygon([(x, y), (x + 0.5 * r, y - 0.3 * r), (x + 0.5 * r, y + 0.3 * r)],
                 fill=(230, 20, 60))
  if 'maid_headdress' in tags:
    draw.rectangle([cx - 0.8 * r, cy - 1.15 * r, cx + 0.8 * r, cy - 0.9 * r],
                   fill=(255, 255, 255), outline=(200, 200, 200))
  if 'headphones' in tags:
    draw.arc([cx - 1.1 * r, cy - 1.25 * r, cx + 1.1 * r, cy + 0.6 * r], 180,
             360, fill=(40, 40, 40), width=line)
    for side in (-1, 1):
      x = cx + side * 1.05 * r
      draw.ellipse([x - 0.25 * r, cy - 0.2 * r, x + 0.25 * r, cy + 0.4 * r],
                   fill=(220, 50, 90))
  if 'halo' in tags:
    draw.ellipse([cx - 0.7 * r, cy - 1.6 * r, cx + 0.7 * r, cy - 1.25 * r],
                 outline=(255, 215, 0), width=line)
  # The face box: the head with hair and ears, as a face detector would see.
  return (max(cy - 1.2 * r, 0) / s, max(cx - 1.2 * r, 0) / s,
          min(cy + 1.1 * r, s) / s, min(cx + 1.2 * r, s) / s)


def render(scene: Scene, *, size: int, seed: int, split_id: int,
           index: int, style: str = 'anime'
           ) -> tuple[bytes, list[tuple[float, float, float, float]]]:
  """Returns PNG bytes and one (ymin, xmin, ymax, xmax) head box per figure.

  style: 'anime' (flat fills) or 'photo' (the same drawing, photographed:
  see photo.py)."""
  rng = np.random.default_rng([seed, split_id, index, 1])
  image = Image.new('RGB', (size, size))
  draw = ImageDraw.Draw(image)
  _background(draw, scene.background, size, rng)
  n = len(scene.figures)
  r = min(size / n * 0.22, size * 0.13)
  boxes = []
  for i, fig in enumerate(scene.figures):
    cx = size * (i + 0.5) / n + rng.uniform(-0.03, 0.03) * size
    boxes.append(_figure(draw, fig, cx, size, r, rng))
  if style == 'photo':
    image = Image.fromarray(photo.photographic(
        np.asarray(image), np.random.default_rng([seed, split_id, index, 2])))
  elif style != 'anime':
    raise ValueError(f'Unknown style {style!r}; valid: anime, photo.')
  buf = io.BytesIO()
  image.save(buf, format='PNG', optimize=False, compress_level=6)
  return buf.getvalue(), boxes
