"""Tests run the real code on fake devices: 8 CPU devices, set before jax loads."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402  (after the XLA flags on purpose)
from absl import flags  # noqa: E402

# The test session is the program: it has no command-line flags to parse, and
# grain reads its absl flags when a test starts worker processes.
flags.FLAGS.mark_as_parsed()


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


@pytest.fixture
def read_params():
  """Reads a run's stored params as numpy, independently of the trainer."""
  import os

  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  def read(workdir, step=None):
    root = os.path.join(workdir, 'checkpoints')
    step = step or max(int(d) for d in os.listdir(root) if d.isdigit())
    path = os.path.join(root, str(step), 'state')
    with ocp.PyTreeCheckpointer() as checkpointer:
      tree = checkpointer.metadata(path).item_metadata.tree
      as_numpy = jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          restore_args=as_numpy))
    return state['params'], step

  return read
