"""The compiled train step, read from its HLO on 8 fake CPU devices.

What an accelerator run depends on and a CPU run cannot show: the backbone
computes in bf16, the state is updated in place, gradients cross devices in
a few large all-reduces, and nothing calls back to the host. The step is
lowered and compiled once for the module (a width-1/8 ResNet-18 at 32 px),
and so is a transformer's (configs/wd_v3.py:tiny, a 2-block ViT with LAMB,
MixUp and cutout).
"""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtag import config as config_lib
from jaxtag import sharding
from jaxtag import train

NUM_CLASSES = 24

# ------------------------------------------------------------ HLO reading ---

# `%name = type opcode(operands), attributes` in XLA's HLO text; a tuple
# type holds ", " but never " word(", so the lazy type stops at the opcode.
_HLO_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(.+?)\s+([a-z][a-z0-9-]*)\((.*)$')
_ARRAY_TYPE = re.compile(r'\b([a-z][a-z0-9]*)\[([0-9,]*)\]')
# StableHLO puts an op's operand and result types at the end of its line.
_STABLEHLO_MATMUL = re.compile(
    r'stablehlo\.(convolution|dot_general|dot)\b.*:\s*\((.*)\)\s*->\s*(.*)$')
_TENSOR_DTYPE = re.compile(r'tensor<(?:[0-9]+x)*([a-z][a-z0-9]*)>')
# Python callbacks (jax.debug.callback/print, pure_callback, io_callback)
# lower to custom-calls with these targets on CPU and GPU.
_CALLBACK_TARGET = re.compile(r'custom_call_target="[^"]*callback[^"]*"')
_HOST_TRANSFER_OPS = frozenset({'infeed', 'outfeed', 'send', 'send-done',
                                'recv', 'recv-done'})


def hlo_instructions(hlo_text: str):
  """(name, type, opcode, rest of line) of every instruction."""
  for line in hlo_text.splitlines():
    match = _HLO_INSTRUCTION.match(line)
    if match:
      yield match.groups()


def array_types(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """[(dtype, shape)] of an array or tuple type such as (f32[8], f32[3,3])."""
  return [(dtype, tuple(int(d) for d in dims.split(',') if d))
          for dtype, dims in _ARRAY_TYPE.findall(type_text)]


def stablehlo_matmul_dtypes(stablehlo_text: str) -> collections.Counter:
  """Counts (op, operand and result dtypes) of every convolution and dot."""
  counts = collections.Counter()
  for line in stablehlo_text.splitlines():
    match = _STABLEHLO_MATMUL.search(line)
    if match:
      op, operands, result = match.groups()
      dtypes = tuple(sorted(set(_TENSOR_DTYPE.findall(operands + result))))
      counts[op, dtypes] += 1
  return counts


def all_reduces(hlo_text: str) -> list[list[tuple[str, tuple[int, ...]]]]:
  """The array types carried by each all-reduce (sync or async start)."""
  return [array_types(type_text)
          for _, type_text, opcode, _ in hlo_instructions(hlo_text)
          if opcode in ('all-reduce', 'all-reduce-start')]


def aliased_parameters(hlo_text: str) -> set[int]:
  """Entry parameters that XLA writes the outputs into (donated buffers)."""
  header = hlo_text.split('\n', 1)[0]
  return {int(p) for p in re.findall(r'\{[0-9, ]*\}: \((\d+), \{', header)}


def entry_parameters(hlo_text: str) -> dict[int, tuple[str, str]]:
  """Entry parameter number -> (its type, its op_name: the argument path).

  Fused computations have parameters too; only ENTRY's are the step's inputs.
  """
  entry = hlo_text[hlo_text.index('\nENTRY '):]
  entry = entry[:entry.index('\n}')]
  params = {}
  for _, type_text, opcode, rest in hlo_instructions(entry):
    if opcode == 'parameter':
      name = re.search(r'op_name="([^"]*)"', rest)
      params[int(rest.split(')', 1)[0])] = (
          type_text, name.group(1) if name else '?')
  return params


def host_interactions(hlo_text: str) -> list[str]:
  """Instructions that call Python or move data to or from the host."""
  return [f'{opcode} %{name}'
          for name, _, opcode, rest in hlo_instructions(hlo_text)
          if opcode in _HOST_TRANSFER_OPS
          or (opcode == 'custom-call' and _CALLBACK_TARGET.search(rest))]


# ------------------------------------------------------------- the step ---


def _trainable(dtype: str):
  config = config_lib.load_config_file('configs/default.py:tiny')
  config.model.dtype = dtype
  mesh = sharding.create_mesh()
  return config, mesh, train.Trainable(config, mesh, num_classes=NUM_CLASSES,
                                       num_train_steps=10)


def _batch(config, mesh):
  # uint8 pixels, as the pipeline feeds them.
  rng = np.random.default_rng(0)
  size, batch = config.data.image_size, config.batch_size
  return sharding.to_global({
      'image': rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
      'labels': (rng.random((batch, NUM_CLASSES)) < 0.2).astype(np.float32)},
      mesh)


@pytest.fixture(scope='module')
def bf16_step():
  assert jax.device_count() == 8
  config, mesh, trainable = _trainable('bfloat16')
  state = trainable.fresh_state()
  batch = _batch(config, mesh)
  lowered = trainable.train_step.lower(state, batch, trainable.step_rng)
  compiled = lowered.compile()
  return {'trainable': trainable, 'state': state, 'batch': batch,
          'stablehlo': lowered.as_text(), 'hlo': compiled.as_text(),
          'compiled': compiled}


# ------------------------------------------------------------------ bf16 ---


def _f32_matmuls(counts: collections.Counter) -> dict:
  return {key: n for key, n in counts.items() if key[1] != ('bf16',)}


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_bf16_config_runs_every_conv_and_dot_in_bf16(bf16_step):
  # Asserted on the StableHLO that JAX hands to XLA, not on the optimised
  # HLO: XLA:CPU has no bf16 convolution or dot kernels, so its
  # `float-normalization-bf16` pass (FloatNormalization with the CPU's
  # FloatSupport) rewrites every bf16 conv/dot into convert -> f32 op ->
  # convert back to bf16. Dumping the passes (compile(compiler_options=
  # {'xla_dump_to': ..., 'xla_dump_hlo_pass_re': '.*'})) shows all 62 of this
  # step's convs/dots in bf16 through SPMD partitioning up to that pass and
  # none after it, so `compile().as_text()` reads f32 on CPU for either
  # config dtype and could not tell them apart. GPU and TPU backends keep
  # them in bf16 (cuDNN, cuBLAS and the MXU take bf16 operands).
  counts = stablehlo_matmul_dtypes(bf16_step['stablehlo'])
  kernels = [x for x in jax.tree.leaves(bf16_step['state'].params)
             if x.ndim == 4]
  convs = sum(n for (op, _), n in counts.items() if op == 'convolution')
  dots = sum(n for (op, _), n in counts.items() if op != 'convolution')
  print(f'StableHLO: {convs} convolutions, {dots} dots: {dict(counts)}')
  # Forward and weight gradient for each conv kernel at the least, and the
  # head's dense layer: proves the regex saw the whole step.
  assert convs >= 2 * len(kernels)
  assert dots >= 2
  assert not _f32_matmuls(counts), counts


def test_float32_config_is_caught_by_the_bf16_check():
  # Lowering alone (no compile) of the same step in float32: the check above
  # must report its convs and dots, or it could not fail.
  config, mesh, trainable = _trainable('float32')
  stablehlo = trainable.train_step.lower(
      trainable.abstract_state, _batch(config, mesh),
      trainable.step_rng).as_text()
  f32 = _f32_matmuls(stablehlo_matmul_dtypes(stablehlo))
  assert sum(f32.values()) >= 2 * 20  # 20 convs in a ResNet-18, fwd + bwd
  assert all(dtypes == ('f32',) for _, dtypes in f32), f32


# ------------------------------------------------------------- donation ---


_HLO_DTYPES = {'float32': 'f32', 'bfloat16': 'bf16', 'int32': 's32',
               'uint32': 'u32', 'uint8': 'u8'}


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_state_is_donated_and_aliased_to_the_new_state(bf16_step):
  hlo = bf16_step['hlo']
  params = entry_parameters(hlo)
  leaves = jax.tree.leaves(bf16_step['state'])
  aliased = aliased_parameters(hlo)
  print(f'{len(leaves)} state leaves; {len(aliased)} of {len(params)} entry '
        'parameters aliased to outputs')
  # Entry parameters follow the flattened arguments, with unused ones
  # dropped (here the rng: the model draws no dropout). The state comes
  # first and is replicated, so parameter i is state leaf i, full shape.
  for i, leaf in enumerate(leaves):
    assert array_types(params[i][0]) == [
        (_HLO_DTYPES[leaf.dtype.name], leaf.shape)], (i, params[i])
  # XLA writes the new state (step, params, batch stats, optimiser slots)
  # into the buffers of the old one: no copy of the state per step.
  missing = set(range(len(leaves))) - aliased
  assert not missing, sorted(params[p][1] for p in missing)
  assert aliased <= set(range(len(leaves))), 'a non-state input is aliased'


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_running_the_step_consumes_the_old_state(bf16_step):
  # The runtime side of the aliasing: JAX hands the buffers over (a buffer
  # it could not reuse would stay alive, with a warning).
  trainable = bf16_step['trainable']
  state = trainable.fresh_state()
  new_state, _ = bf16_step['compiled'](state, bf16_step['batch'],
                                       trainable.step_rng)
  jax.block_until_ready(new_state)
  assert all(x.is_deleted() for x in jax.tree.leaves(state))
  assert int(new_state.step) == 1


def test_aliasing_check_sees_a_step_without_donation():
  f = jax.jit(lambda x: x + 1)
  assert not aliased_parameters(f.lower(jnp.zeros(4)).compile().as_text())
  donating = jax.jit(lambda x: x + 1, donate_argnums=0)
  assert aliased_parameters(
      donating.lower(jnp.zeros(4)).compile().as_text()) == {0}


# ------------------------------------------------------------ all-reduce ---


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_gradients_cross_devices_in_a_few_all_reduces(bf16_step):
  reduces = all_reduces(bf16_step['hlo'])
  params = jax.tree.leaves(bf16_step['state'].params)
  kernels = [x for x in params if x.ndim >= 2]
  batch_norms = len(jax.tree.leaves(bf16_step['state'].batch_stats)) // 2
  # Conv and dense kernels are the only >= 2-D values that cross devices:
  # BatchNorm statistics and the loss are vectors and scalars.
  kernel_grads = [[t for t in types if len(t[1]) >= 2] for types in reduces]
  kernel_reduces = [k for k in kernel_grads if k]
  print(f'{len(reduces)} all-reduces in the optimised HLO for '
        f'{len(params)} parameter leaves; the {len(kernels)} kernel '
        f'gradients ride in {len(kernel_reduces)} of them; {batch_norms} '
        'BatchNorm layers.')
  # Every kernel gradient is reduced once, and XLA's all-reduce combiner
  # packs them into at most 3 all-reduces instead of one per kernel.
  assert sum(len(k) for k in kernel_grads) == len(kernels)
  assert len(kernel_reduces) <= 3
  # BatchNorm normalises over the global batch, so each BN layer needs its
  # statistics summed across devices in the forward pass and its gradient
  # sums in the backward pass, one after the other (the combiner cannot
  # merge dependent ones); the 1-D parameter gradients travel with those.
  # Beyond that: the kernel gradients and the loss.
  assert len(reduces) <= 2 * batch_norms + 3 + 1
  assert len(reduces) < len(params)


# ---------------------------------------------------------- host contact ---


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_step_has_no_host_callback_or_transfer(bf16_step):
  assert not host_interactions(bf16_step['hlo'])
  assert not re.search(r'custom_call @\w*callback', bf16_step['stablehlo'])


def test_host_check_sees_a_debug_callback():
  def noisy(x):
    jax.debug.callback(lambda v: None, x)
    return x * 2
  lowered = jax.jit(noisy).lower(jnp.zeros(4))
  assert host_interactions(lowered.compile().as_text())
  assert re.search(r'custom_call @\w*callback', lowered.as_text())


# ---------------------------------------------------- a transformer step ---
# The same checks on configs/wd_v3.py:tiny: a 2-block ViT with LayerNorm
# instead of BatchNorm, LAMB, MixUp and cutout in the step.


def stablehlo_matmul_operands(stablehlo_text: str):
  """(op, [(dtype, shape)] of its operands) of every convolution and dot."""
  for line in stablehlo_text.splitlines():
    match = _STABLEHLO_MATMUL.search(line)
    if match:
      op, operands, _ = match.groups()
      yield op, [(m.group(2), tuple(int(d) for d in m.group(1).split('x')
                                    if d))
                 for m in re.finditer(r'tensor<((?:[0-9]+x)*)([a-z][a-z0-9]*)>',
                                      operands)]


@pytest.fixture(scope='module')
def vit_step():
  assert jax.device_count() == 8
  config = config_lib.load_config_file('configs/wd_v3.py:tiny')
  assert config.model.dtype == 'bfloat16'
  assert config.data.mixup_prob > 0 and config.data.cutout_prob > 0
  mesh = sharding.create_mesh()
  trainable = train.Trainable(config, mesh, num_classes=NUM_CLASSES,
                              num_train_steps=10)
  state = trainable.fresh_state()
  lowered = trainable.train_step.lower(state, _batch(config, mesh),
                                       trainable.step_rng)
  return {'state': state, 'stablehlo': lowered.as_text(),
          'hlo': lowered.compile().as_text()}


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_transformer_step_runs_its_convs_and_dots_on_bf16(vit_step):
  matmuls = list(stablehlo_matmul_operands(vit_step['stablehlo']))
  counts = collections.Counter(
      (op, tuple(sorted({d for d, _ in operands})))
      for op, operands in matmuls)
  print(f'StableHLO operand dtypes: {dict(counts)}')
  params = vit_step['state'].params
  kernels = [x for x in jax.tree.leaves(params) if x.ndim == 2]
  depth = sum(1 for k in params['backbone'] if k.startswith('blocks_'))
  tokens = 1 + (32 // 8) ** 2   # the class token and a 4 x 4 patch grid
  dots = sum(n for (op, _), n in counts.items() if op != 'convolution')
  # Forward and weight gradient of every dense kernel, and the attention
  # products of each block both ways.
  assert dots >= 2 * len(kernels) + 2 * depth
  # Only exception: jax.nn.dot_product_attention (XLA path) keeps the
  # logits and softmax in float32, so the backward pass's dq and dk
  # products take the logits' float32 cotangent [B, heads, T, 1, T]
  # against bf16 k and q: two per block, nothing else.
  mixed = [operands for _, operands in matmuls
           if {d for d, _ in operands} != {'bf16'}]
  assert len(mixed) == 2 * depth, mixed
  for operands in mixed:
    (f32_shape,) = [shape for d, shape in operands if d == 'f32']
    assert f32_shape[-1] == f32_shape[-3] == tokens, operands
    assert [d for d, _ in operands].count('bf16') == 1, operands


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_transformer_state_is_donated(vit_step):
  leaves = jax.tree.leaves(vit_step['state'])
  assert aliased_parameters(vit_step['hlo']) == set(range(len(leaves)))


@pytest.mark.slow  # compiles a whole train step (its module fixture)
def test_transformer_gradients_cross_devices_in_a_few_all_reduces(vit_step):
  reduces = all_reduces(vit_step['hlo'])
  params = jax.tree.leaves(vit_step['state'].params)
  print(f'{len(reduces)} all-reduces for {len(params)} parameter leaves: '
        f'{[len(r) for r in reduces]} arrays each')
  # Every parameter's gradient is reduced exactly once (XLA may drop unit
  # dimensions or transpose, so arrays are matched by size), packed into
  # at most 3 all-reduces; no BatchNorm, so besides them only scalars.
  arrays = [[shape for _, shape in types if shape] for types in reduces]
  assert sorted(int(np.prod(s)) for a in arrays for s in a) == sorted(
      x.size for x in params)
  assert sum(1 for a in arrays if a) <= 3
  assert len(reduces) <= 6
  assert not host_interactions(vit_step['hlo'])
