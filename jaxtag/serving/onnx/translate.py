"""A JAX function -> an ONNX model, one rule per primitive of its jaxpr.

Why a translator and not one builder per flax module: every backbone and
head of jaxtag (ResNet, DenseNet, Vallet's network and both of its heads'
prediction paths, with the linear head) reduces to the same two dozen
primitives (conv_general_dilated, reduce_window_max/_sum, dot_general,
elementwise arithmetic, reshape/broadcast_in_dim, concatenate, argmax,
...), while per-module builders would need a new builder, and a second
copy of its arithmetic, for every head added later (the graph heads,
Vallet's fully convolutional test network with its masked multi-scale
pooling). Here a new head exports with no new code as long as it uses
known primitives, and one that does not fails with the primitive's name
and the line of model code that used it. The arithmetic is the model's own
code, so the exported graph cannot drift from `model.apply`.

Parameters are closed over, so they reach the jaxpr as constants; every
equation whose inputs are all constants is evaluated at export time
(batch-norm statistics fold into one scale and shift per channel, iota and
one-hot tables become tables). Sizes may be symbolic (jax.export shapes):
a symbolic input size becomes a dynamic ONNX dimension, and shapes that
use it are computed in the graph from the input's shape.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
import onnx
from jax.extend import core as jex_core

from jaxtag.serving.onnx import rules as rules_lib
from jaxtag.serving.onnx.graph import Graph
from jaxtag.serving.onnx.graph import UnsupportedError

# Primitives that only wrap a sub-program: their body is translated inline.
_SUBPROGRAM_PARAMS = ('jaxpr', 'call_jaxpr', 'fun_jaxpr')
_INLINED = ('jit', 'pjit', 'closed_call', 'core_call', 'custom_jvp_call',
            'custom_vjp_call', 'custom_vjp_call_jaxpr', 'remat',
            'checkpoint', 'named_call')
# Folding a constant that grows far beyond its inputs would store it.
_MAX_FOLDED_GROWTH = 1 << 16


def _static(shape) -> bool:
  return all(isinstance(d, (int, np.integer)) for d in shape)


def _where(eqn) -> str:
  try:
    from jax._src import source_info_util  # pylint: disable=g-import-not-at-top
    return source_info_util.summarize(eqn.source_info) or 'unknown location'
  except Exception:  # pylint: disable=broad-except
    return 'unknown location'


class _Translator:

  def __init__(self, graph: Graph):
    self.g = graph

  def read(self, env, var):
    if isinstance(var, jex_core.Literal):
      return np.asarray(var.val, dtype=var.aval.dtype)
    return env[var]

  def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any]):
    env = {}
    for var, value in zip(jaxpr.constvars, consts):
      env[var] = np.asarray(value)
    for var, value in zip(jaxpr.invars, args):
      env[var] = value
    for eqn in jaxpr.eqns:
      ins = [self.read(env, v) for v in eqn.invars]
      outs = self.equation(eqn, ins)
      for var, value in zip(eqn.outvars, outs):
        env[var] = value
    return [self.read(env, v) for v in jaxpr.outvars]

  def equation(self, eqn, ins) -> list[Any]:
    name = eqn.primitive.name
    # A wrapper's body folds equation by equation (binding a custom_jvp
    # call again needs what tracing consumed).
    if name not in _INLINED and self._foldable(eqn, ins):
      outs = eqn.primitive.bind(*ins, **eqn.params)
      outs = outs if eqn.primitive.multiple_results else [outs]
      return [np.asarray(jax.device_get(o)) for o in outs]
    if name in _INLINED:
      return self.inline(eqn, ins)
    if name not in rules_lib.RULES:
      raise UnsupportedError(
          f'ONNX export has no rule for the JAX primitive {name!r} (used at '
          f'{_where(eqn)}). Known primitives: '
          f'{", ".join(sorted(rules_lib.RULES))}. Export this model with '
          '--format stablehlo instead, or add a rule to '
          'jaxtag/serving/onnx/rules.py.')
    try:
      out = rules_lib.RULES[name](self.g, eqn, *ins)
    except UnsupportedError as e:
      raise UnsupportedError(f'ONNX export cannot express {name!r} at '
                             f'{_where(eqn)}: {e}.') from None
    return out if isinstance(out, list) else [out]

  def _foldable(self, eqn, ins) -> bool:
    if not all(isinstance(x, np.ndarray) for x in ins):
      return False
    if not all(_static(v.aval.shape) for v in eqn.outvars):
      return False
    if eqn.primitive.name in ('random_bits', 'random_seed', 'random_wrap'):
      return False
    biggest = max([x.size for x in ins] + [1])
    size = sum(int(np.prod(v.aval.shape)) for v in eqn.outvars)
    return size <= max(biggest, _MAX_FOLDED_GROWTH)

  def inline(self, eqn, ins):
    for key in _SUBPROGRAM_PARAMS:
      sub = eqn.params.get(key)
      if sub is None:
        continue
      if hasattr(sub, 'consts'):   # a ClosedJaxpr
        return self.run(sub.jaxpr, sub.consts, ins)
      return self.run(sub, [], ins)
    raise UnsupportedError(f'{eqn.primitive.name!r} at {_where(eqn)} '
                           'carries no sub-program to translate.')


def to_onnx(fn: Callable[..., Any], inputs: dict[str, jax.ShapeDtypeStruct],
            outputs: Sequence[str], *, name: str = 'jaxtag',
            post: Callable[[Graph, list[Any]], list[Any]] | None = None,
            doc: str = '') -> onnx.ModelProto:
  """The ONNX model of `fn(*inputs)` (positional, in `inputs`' order).

  `post(graph, results, avals) -> (results, avals)` may append nodes to
  the results before they become the graph's outputs (a reordering of the
  output columns, say), and says the shapes and dtypes of what it returns.
  """
  specs = list(inputs.values())
  closed = jax.make_jaxpr(fn)(*specs)
  graph = Graph()
  args = [graph.add_input(n, s.shape, s.dtype) for n, s in inputs.items()]
  results = _Translator(graph).run(closed.jaxpr, closed.consts, args)
  avals = [v.aval for v in closed.jaxpr.outvars]
  if post is not None:
    results, avals = post(graph, results, avals)
  if len(results) != len(outputs):
    raise ValueError(f'{len(results)} results for output names {outputs}.')
  for out_name, value, aval in zip(outputs, results, avals):
    graph.nodes.append(onnx.helper.make_node(
        'Identity', [graph.tensor(value)], [out_name]))
    graph.add_output(out_name, aval.shape, aval.dtype)
  return graph.build(name, doc)
