"""A captioner served: its bundle, the Tagger, the tag command and the
server give the sentences its checkpoint decodes, read independently."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from jaxtag import models
from jaxtag import serve
from jaxtag import tag
from jaxtag import tasks
from jaxtag.data import captions
from jaxtag.serving import bundle as bundle_lib
from jaxtag.serving import convert
from jaxtag.serving import onnx_export
from jaxtag.serving import tagger as tagger_lib


@pytest.fixture(scope='module')
def caption_bundle(tiny_captioner_run, tmp_path_factory):
  workdir, config = tiny_captioner_run
  out = str(tmp_path_factory.mktemp('caption_bundle') / 'bundle')
  convert.convert(workdir, out)
  return workdir, out, config


def _checkpoint_captions(workdir, config, images, read_state):
  """Sentences from the checkpoint through the model's own predict and the
  run's vocabulary, without the serving code."""
  state, _ = read_state(workdir)
  vocab = captions.Vocabulary.load(os.path.join(workdir, 'caption_vocab.json'))
  model = models.build_model(config.model, len(vocab))
  x = (images.astype(np.float32) / 255 - np.asarray(config.data.mean)
       ) / np.asarray(config.data.std)
  out = model.apply({'params': state['params'],
                     'batch_stats': state['batch_stats']},
                    x.astype(np.float32), method='predict')
  return [' '.join(vocab.decode(np.asarray(t))) for t in out['tokens']]


def _images(n=3, size=32):
  rng = np.random.default_rng(0)
  # Smooth blobs rather than noise, so the captions differ by image.
  base = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
  return np.stack([np.asarray(Image.fromarray(b).resize((size, size),
                                                        Image.BILINEAR))
                   for b in base])


@pytest.mark.slow
def test_caption_bundle_tagger_command_and_server(caption_bundle, tmp_path,
                                                  capsys, read_state):
  workdir, out, config = caption_bundle
  images = _images()
  want = _checkpoint_captions(workdir, config, images, read_state)
  assert all(isinstance(c, str) for c in want) and any(want)

  bundle = bundle_lib.load_bundle(out)
  assert bundle.task == 'captioning'
  assert bundle.task.vocabulary.words == captions.Vocabulary.load(
      os.path.join(workdir, 'caption_vocab.json')).words
  assert bundle.captions(images) == want
  tagger = tagger_lib.Tagger(out, batch_size=2)   # two batches, one padded
  assert tagger.tag(list(images)) == [{'caption': c} for c in want]
  with pytest.raises(ValueError, match='no thresholds'):
    tagger.thresholds(tagger.scores(list(images)))

  # The tag command: the sentence is the .txt caption; tag options warned.
  folder = tmp_path / 'images'
  folder.mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f'{i}.png')
  assert tag.main([str(folder), '--bundle', out, '--quiet',
                   '--threshold', '0.3']) == 0
  assert '--threshold apply to tags only' in capsys.readouterr().err
  for i, caption in enumerate(want):
    assert (folder / f'{i}.txt').read_text() == caption
  assert tag.main([str(folder), '--bundle', out, '--quiet', '--format',
                   'csv', '--output', str(tmp_path / 'c.csv')]) == 0
  rows = (tmp_path / 'c.csv').read_text().splitlines()
  assert rows[0] == 'file,caption' and rows[1].endswith(',' + want[0])

  # The server's record.
  service = serve.TagService(tagger)
  assert service.tag(Image.fromarray(images[1]), 'b.png', True) == {
      'file': 'b.png', 'caption': want[1]}


@pytest.mark.slow
def test_onnx_refuses_a_captioner_by_name(caption_bundle, tmp_path):
  _, out, _ = caption_bundle
  with pytest.raises(onnx_export.NotExportableError,
                     match="'show_attend_tell'.*beam search.*stablehlo"):
    onnx_export.export_onnx(bundle_lib.load_bundle(out), str(tmp_path))


def test_a_sentence_is_appended_on_its_own_line(tmp_path):
  image = tmp_path / 'a.png'
  (tmp_path / 'a.txt').write_text('kept line\n')
  args = tag.parse_args([str(image), '--bundle', 'B', '--append_existing'])
  task = tasks.Captioning(vocabulary=None)   # a sentence needs no words
  tag.write_caption(task, str(image), {'caption': 'one girl'}, args)
  assert (tmp_path / 'a.txt').read_text() == 'kept line\none girl'
  args = tag.parse_args([str(image), '--bundle', 'B', '--overwrite'])
  tag.write_caption(task, str(image), {'caption': 'two boys'}, args)
  assert (tmp_path / 'a.txt').read_text() == 'two boys'
