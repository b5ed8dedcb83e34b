"""Three WD-tagger front ends, rewritten from reading them, for the tests.

Each reads `model.onnx` and `selected_tags.csv` as its original does,
prepares images its way and thresholds its way:
- `App`: SmilingWolf's wd-tagger demo app. The input size from the graph;
  palette images with transparency and RGBA composited on white (other
  modes converted to RGB as Pillow does, which saturates 16-bit values);
  padded to a centred white square, then resized with Pillow's bicubic;
  BGR float32 0-255. Tags above (>) the thresholds; general tags are the
  category 0 rows, characters the category 4 rows.
- `Kohya`: kohya-ss/sd-scripts finetune/tag_images_by_wd14_tagger.py. The
  input size hard-coded to 448; RGBA pasted on white by its alpha; BGR
  numpy padded to a white square, then resized with OpenCV: INTER_AREA
  when shrinking both sides, Lanczos otherwise. Tags at or above (>=) the
  thresholds; the first len(general) outputs after the 4 ratings are taken
  for the general tags in csv order, the rest for the characters.
- `ComfyUI`: pythongosssss/ComfyUI-WD14-Tagger. ComfyUI's image loader
  turns the image by EXIF and drops alpha (Image.convert('RGB')); the
  tagger resizes the longest side to the graph's size with Lanczos
  (truncating the other side), pastes it centred on white, BGR float32.
  Rows from the first category 0 row up to the first category 4 row are
  general tags, the rest characters; tags above (>) the thresholds.
"""
import csv
import os

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image
from PIL import ImageOps


def read_rows(model_dir):
  with open(os.path.join(model_dir, 'selected_tags.csv'),
            encoding='utf-8') as f:
    return list(csv.DictReader(f))


class Client:
  """Loads the model; `pixels(path)` is the BGR float32 [S, S, 3] input
  the front end feeds; `tag(paths, general, character)` its tag sets."""

  def __init__(self, model_dir):
    self.session = ort.InferenceSession(
        os.path.join(model_dir, 'model.onnx'),
        providers=['CPUExecutionProvider'])
    self.input = self.session.get_inputs()[0]
    self.rows = read_rows(model_dir)
    self.names = [r['name'] for r in self.rows]

  @property
  def size(self) -> int:
    return int(self.input.shape[1])

  def probs(self, paths) -> np.ndarray:
    batch = np.stack([self.pixels(p) for p in paths]).astype(np.float32)
    return self.session.run(None, {self.input.name: batch})[0]

  def tag(self, paths, general: float, character: float):
    probs = self.probs(paths)
    return [self.select(p, general, character) for p in probs], probs


class App(Client):

  def pixels(self, path):
    image = Image.open(path)
    if image.mode not in ('RGB', 'RGBA'):
      image = (image.convert('RGBA') if 'transparency' in image.info
               else image.convert('RGB'))
    if image.mode == 'RGBA':
      canvas = Image.new('RGBA', image.size, (255, 255, 255))
      canvas.alpha_composite(image)
      image = canvas.convert('RGB')
    side = max(image.size)
    square = Image.new('RGB', (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2,
                         (side - image.height) // 2))
    square = square.resize((self.size, self.size), Image.BICUBIC)
    return np.asarray(square, np.float32)[:, :, ::-1]

  def select(self, p, general, character):
    return {
        'general': {n for n, r, s in zip(self.names, self.rows, p)
                    if r['category'] == '0' and s > general},
        'character': {n for n, r, s in zip(self.names, self.rows, p)
                      if r['category'] == '4' and s > character}}


class Kohya(Client):
  SIZE = 448

  @property
  def size(self) -> int:
    return self.SIZE

  def pixels(self, path):
    image = Image.open(path)
    if image.mode in ('RGBA', 'LA') or 'transparency' in image.info:
      image = image.convert('RGBA')
    elif image.mode != 'RGB':
      image = image.convert('RGB')
    if image.mode == 'RGBA':
      background = Image.new('RGB', image.size, (255, 255, 255))
      background.paste(image, mask=image.split()[3])
      image = background
    bgr = np.asarray(image)[:, :, ::-1]
    side = max(bgr.shape[:2])
    pad_y, pad_x = side - bgr.shape[0], side - bgr.shape[1]
    bgr = np.pad(bgr, ((pad_y // 2, pad_y - pad_y // 2),
                       (pad_x // 2, pad_x - pad_x // 2), (0, 0)),
                 constant_values=255)
    shrink = side >= self.SIZE
    bgr = cv2.resize(np.ascontiguousarray(bgr), (self.SIZE, self.SIZE),
                     interpolation=cv2.INTER_AREA if shrink
                     else cv2.INTER_LANCZOS4)
    return bgr.astype(np.float32)

  def select(self, p, general, character):
    general_tags = [r['name'] for r in self.rows if r['category'] == '0']
    character_tags = [r['name'] for r in self.rows if r['category'] == '4']
    out = {'general': set(), 'character': set()}
    for i, s in enumerate(p[4:]):
      if i < len(general_tags) and s >= general:
        out['general'].add(general_tags[i])
      elif i >= len(general_tags) and s >= character:
        out['character'].add(character_tags[i - len(general_tags)])
    return out


class ComfyUI(Client):

  def pixels(self, path):
    image = ImageOps.exif_transpose(Image.open(path)).convert('RGB')
    ratio = float(self.size) / max(image.size)
    new_size = tuple(int(x * ratio) for x in image.size)
    image = image.resize(new_size, Image.LANCZOS)
    square = Image.new('RGB', (self.size, self.size), (255, 255, 255))
    square.paste(image, ((self.size - new_size[0]) // 2,
                         (self.size - new_size[1]) // 2))
    return np.asarray(square, np.float32)[:, :, ::-1]

  def select(self, p, general, character):
    categories = [r['category'] for r in self.rows]
    start, end = categories.index('0'), categories.index('4')
    return {'general': {n for n, s in zip(self.names[start:end], p[start:end])
                        if s > general},
            'character': {n for n, s in zip(self.names[end:], p[end:])
                          if s > character}}


CLIENTS = {'app': App, 'kohya': Kohya, 'comfyui': ComfyUI}
