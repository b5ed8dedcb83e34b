"""Tests run the real code on fake devices: 8 CPU devices, set before jax loads."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# Tests compile many small programs and run each a few times: LLVM's
# optimisations would cost them far more compile time than they save (XLA's
# own graph optimisations still run).
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()

import pytest  # noqa: E402  (after the XLA flags on purpose)
from absl import flags  # noqa: E402

# The test session is the program: it has no command-line flags to parse, and
# grain reads its absl flags when a test starts worker processes.
flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  # Many tests, every pytest-xdist worker and the commands the slow tests
  # start compile the same small programs: XLA's persistent cache compiles
  # each once, here and in later runs. It lives in .pytest_cache (cleared by
  # --cache-clear); set JAX_COMPILATION_CACHE_DIR to put it elsewhere.
  cache = getattr(config, 'cache', None)
  if cache is not None and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    os.environ['JAX_COMPILATION_CACHE_DIR'] = str(
        cache.mkdir('jax_compilation_cache'))


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """synthetic_anime/tiny, built once per test session."""
  from jaxtag.data import build
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  build.ensure_built(build.get_builder('synthetic_anime/tiny', data_dir))
  return data_dir


@pytest.fixture(scope='session')
def tiny_captioner_run(tiny_data_dir, tmp_path_factory):
  """(workdir, config) of configs/captioner_flickr8k.py:tiny trained 6
  steps, once per test session (the semantic-feature and serving tests)."""
  from jaxtag import config as config_lib
  from jaxtag import train
  config = config_lib.load_config_file('configs/captioner_flickr8k.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  config.num_train_steps = 6
  config.eval_every_steps = config.checkpoint_every_steps = 6
  workdir = str(tmp_path_factory.mktemp('captioner'))
  train.train_and_evaluate(config, workdir)
  return workdir, config


@pytest.fixture
def tiny_config(tiny_data_dir):
  """configs/default.py:tiny pointed at the session's dataset."""
  from jaxtag import config as config_lib
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.dataset.data_dir = tiny_data_dir
  return config


def _read_state(workdir, step=None):
  import os

  from jaxtag import checkpoint
  root = os.path.join(workdir, 'checkpoints')
  step = step or max(int(d) for d in os.listdir(root) if d.isdigit())
  return checkpoint.read_numpy(os.path.join(root, str(step), 'state')), step


@pytest.fixture
def read_state():
  """Reads (a run's stored train state as numpy dicts, its step) from the
  checkpoint folder on the host, not through the trainer's restore."""
  return _read_state


def _checkpoint_test_scores(config, workdir):
  """(scores [N, C], label ids of each test image): the stored model on the
  test split by PIL, numpy and the model's own `predict` alone."""
  import numpy as np
  from PIL import Image

  from jaxtag import models
  from jaxtag import objectives
  from jaxtag.data import build
  from jaxtag.data import tag_metadata
  builder = build.get_builder(config.dataset.name, config.dataset.data_dir)
  source = builder.as_data_source(config.dataset.test_split)
  tags = tag_metadata.load_tag_metadata(builder.data_dir)
  size = config.data.image_size
  images, labels = [], []
  for i in range(len(source)):
    record = source[i]
    image = Image.fromarray(np.asarray(record['image']))  # decoded by TFDS
    images.append(np.asarray(image.resize((size, size), Image.BILINEAR)))
    labels.append(np.asarray(record[config.dataset.label_feature]))
  x = ((np.stack(images).astype(np.float32) / 255
        - np.asarray(config.data.mean)) / np.asarray(config.data.std))
  state, _ = _read_state(workdir)
  # Every variable collection the state holds (params, batch_stats,
  # constants); not the optimiser's state.
  variables = {k: v for k, v in state.items()
               if isinstance(v, dict) and k != 'opt_state'}
  model = models.build_model(
      config.model, len(tags.names), tag_metadata=tags,
      providers=models.build_providers(config.model, config.data))
  out = model.apply(variables, x.astype(np.float32), method='predict')
  objective = objectives.get_objective(config.loss,
                                       config.dataset.label_encoding)
  return np.asarray(objective.scores(out), np.float64), labels


@pytest.fixture
def checkpoint_test_scores():
  """(scores, label ids) of a run's stored model on its test split, by PIL,
  numpy and the model's own predict: none of the trainer's input pipeline,
  restore or metrics."""
  return _checkpoint_test_scores


@pytest.fixture
def independent_test_map():
  """mAP of a run's stored model on its test split (checkpoint_test_scores),
  with scikit-learn's average precision."""

  def test_map(config, workdir):
    import numpy as np
    from sklearn.metrics import average_precision_score
    scores, ids = _checkpoint_test_scores(config, workdir)
    labels = np.stack([np.isin(np.arange(scores.shape[1]), i) for i in ids])
    return np.mean([average_precision_score(labels[:, c], scores[:, c])
                    for c in np.flatnonzero(labels.any(0))])

  return test_map


@pytest.fixture
def read_params():
  """Reads a run's stored params as numpy, independently of the trainer."""

  def read(workdir, step=None, collection='params'):
    state, step = _read_state(workdir, step)
    return state[collection], step

  return read


def _trainer_and_bundle_scores(config, workdir, bundle_dir, count=None):
  """(the trainer's eval scores [N, C] of a run's test split, the bundle's
  scores of the same images in model order, the images as PIL): the
  trainer's restore and eval step on one side, the bundle's own
  preprocessing and predict on the other."""
  import io

  from PIL import Image

  from jaxtag import evaluate
  from jaxtag import train
  from jaxtag.data import sources
  from jaxtag.serving import tagger as tagger_lib
  run = train.Run(config, workdir)
  state = run.checkpointer.restore(run.checkpointer.latest_step(),
                                   run.abstract_state)
  run.checkpointer.close()
  pred = evaluate.predict(run.eval_step, state, run.eval_batches('test'),
                          run.mesh)
  source, _ = sources.open_split(config.dataset, 'test')
  index = pred['index'][:count]
  pil = [Image.open(io.BytesIO(source[int(i)]['image'])) for i in index]
  tagger = tagger_lib.Tagger(bundle_dir, batch_size=16)
  served = tagger.bundle.to_model_order(tagger.scores(pil))
  return pred['scores'][:count], served, pil


@pytest.fixture
def trainer_and_bundle_scores():
  """See _trainer_and_bundle_scores."""
  return _trainer_and_bundle_scores
