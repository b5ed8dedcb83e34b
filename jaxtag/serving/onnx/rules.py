"""One rule per JAX primitive: the ONNX nodes that compute it.

A rule is `rule(graph, eqn, *args) -> value | list[value]`, where each
argument is a numpy constant or the name of an ONNX tensor, and `eqn` gives
the primitive's parameters and the shapes of its inputs and outputs.
Layouts follow JAX exactly (NHWC stays NHWC): a convolution or a pooling
transposes to ONNX's NCHW and back, and ONNX Runtime's layout optimiser
removes the transposes that meet between two such nodes.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from jaxtag.serving.onnx.graph import Graph
from jaxtag.serving.onnx.graph import UnsupportedError

RULES = {}


def rule(*names):
  def register(fn):
    for name in names:
      RULES[name] = fn
    return fn
  return register


def _const(x) -> bool:
  return not isinstance(x, str)


def _out(eqn, i: int = 0):
  return eqn.outvars[i].aval


def _onnx_dtype(dtype) -> int:
  return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _inverse(perm):
  return [int(i) for i in np.argsort(perm)]


def _transpose(g: Graph, x, perm):
  perm = [int(p) for p in perm]
  if perm == list(range(len(perm))):
    return x
  if _const(x):
    return np.ascontiguousarray(np.transpose(x, perm))
  return g.node('Transpose', [x], perm=perm)


# Elementwise.
_UNARY = {'exp': 'Exp', 'log': 'Log', 'tanh': 'Tanh', 'logistic': 'Sigmoid',
          'neg': 'Neg', 'abs': 'Abs', 'sqrt': 'Sqrt', 'floor': 'Floor',
          'ceil': 'Ceil', 'sign': 'Sign', 'erf': 'Erf', 'not': 'Not',
          'sin': 'Sin', 'cos': 'Cos', 'copy': 'Identity',
          'copy_p': 'Identity', 'stop_gradient': 'Identity'}
_BINARY = {'add': 'Add', 'mul': 'Mul', 'div': 'Div', 'pow': 'Pow',
           'min': 'Min', 'eq': 'Equal', 'lt': 'Less', 'gt': 'Greater',
           'le': 'LessOrEqual', 'ge': 'GreaterOrEqual', 'and': 'And',
           'or': 'Or', 'xor': 'Xor'}


def _unary(op):
  return lambda g, eqn, x: g.node(op, [x])


def _binary(op):
  return lambda g, eqn, x, y: g.node(op, [x, y])


for _name, _op in _UNARY.items():
  RULES[_name] = _unary(_op)
for _name, _op in _BINARY.items():
  RULES[_name] = _binary(_op)


@rule('sub')
def _sub(g, eqn, x, y):
  # x + (-c) lets ONNX Runtime fold a batch-norm shift into the conv.
  if _const(y) and np.issubdtype(np.asarray(y).dtype, np.floating):
    return g.node('Add', [x, np.negative(y)])
  return g.node('Sub', [x, y])


@rule('max')
def _max(g, eqn, x, y):
  for a, b in ((x, y), (y, x)):
    if _const(b) and np.asarray(b).size == 1 and not np.any(b):
      return g.node('Relu', [a])
  return g.node('Max', [x, y])


@rule('ne')
def _ne(g, eqn, x, y):
  return g.node('Not', [g.node('Equal', [x, y])])


@rule('rsqrt')
def _rsqrt(g, eqn, x):
  return g.node('Reciprocal', [g.node('Sqrt', [x])])


@rule('erfc')
def _erfc(g, eqn, x):
  # timm's exact GELU in flax: x * erfc(-x / sqrt 2) / 2.
  return g.node('Sub', [np.asarray(1, _out(eqn).dtype), g.node('Erf', [x])])


@rule('square')
def _square(g, eqn, x):
  return g.node('Mul', [x, x])


@rule('integer_pow')
def _integer_pow(g, eqn, x):
  y = eqn.params['y']
  if y == 2:
    return g.node('Mul', [x, x])
  return g.node('Pow', [x, np.asarray(y, _out(eqn).dtype)])


@rule('clamp')
def _clamp(g, eqn, low, x, high):
  return g.node('Min', [g.node('Max', [x, low]), high])


@rule('select_n')
def _select_n(g, eqn, which, *cases):
  if len(cases) != 2:
    raise UnsupportedError('select_n with more than two cases')
  if np.dtype(eqn.invars[0].aval.dtype) != np.bool_:
    which = g.node('Cast', [which], to=_onnx_dtype(np.bool_))
  return g.node('Where', [which, cases[1], cases[0]])


@rule('convert_element_type')
def _convert(g, eqn, x):
  return g.node('Cast', [x], to=_onnx_dtype(eqn.params['new_dtype']))


# Shapes.
@rule('reshape')
def _reshape(g, eqn, x):
  if eqn.params.get('dimensions') not in (None, ()):
    raise UnsupportedError('reshape with dimensions')
  return g.node('Reshape', [x, g.shape(eqn.params['new_sizes'])])


@rule('broadcast_in_dim')
def _broadcast_in_dim(g, eqn, x):
  shape = eqn.params['shape']
  kept = eqn.params['broadcast_dimensions']
  in_shape = eqn.invars[0].aval.shape
  ranked = [1] * len(shape)
  for axis, d in zip(kept, in_shape):
    ranked[axis] = d
  x = _reshape_to(g, x, ranked, in_shape)
  if tuple(ranked) == tuple(shape):
    return x
  return g.node('Expand', [x, g.shape(shape)])


def _reshape_to(g, x, shape, old_shape):
  if tuple(shape) == tuple(old_shape):
    return x
  if _const(x):
    return np.reshape(x, shape)
  return g.node('Reshape', [x, g.shape(shape)])


@rule('squeeze')
def _squeeze(g, eqn, x):
  return g.node('Squeeze', [x, np.array(eqn.params['dimensions'], np.int64)])


@rule('expand_dims')
def _expand_dims(g, eqn, x):
  return g.node('Unsqueeze', [x, np.array(eqn.params['dimensions'],
                                          np.int64)])


@rule('transpose')
def _transpose_rule(g, eqn, x):
  return _transpose(g, x, eqn.params['permutation'])


@rule('concatenate')
def _concatenate(g, eqn, *xs):
  return g.node('Concat', list(xs), axis=int(eqn.params['dimension']))


@rule('stack')
def _stack(g, eqn, *xs):
  axis = np.array([eqn.params['axis']], np.int64)
  return g.node('Concat', [g.node('Unsqueeze', [x, axis]) if not _const(x)
                           else np.expand_dims(x, int(axis[0])) for x in xs],
                axis=int(eqn.params['axis']))


@rule('split')
def _split(g, eqn, x):
  sizes = np.array(eqn.params['sizes'], np.int64)
  return g.node('Split', [x, sizes], num_outputs=len(sizes),
                axis=int(eqn.params['axis']))


@rule('gather')
def _gather(g, eqn, x, indices):
  """A gather at one constant start point: a slice (what jnp indexing with
  static indices becomes once the batch size is symbolic)."""
  dn = eqn.params['dimension_numbers']
  if (not _const(indices) or np.ndim(indices) != 1
      or dn.operand_batching_dims or dn.start_indices_batching_dims):
    raise UnsupportedError('gather other than at one constant start point')
  shape = eqn.invars[0].aval.shape
  sizes = eqn.params['slice_sizes']
  starts, limits, axes = [], [], []
  for axis, start in zip(dn.start_index_map, np.asarray(indices)):
    size = int(sizes[axis])
    # The start is clamped into the operand, as XLA does.
    start = int(min(max(int(start), 0), int(shape[axis]) - size))
    starts.append(start)
    limits.append(start + size)
    axes.append(int(axis))
  for axis, size in enumerate(sizes):
    if axis not in axes and size is not shape[axis] and size != shape[axis]:
      raise UnsupportedError('gather of part of an axis it does not index')
  y = g.node('Slice', [x, np.array(starts, np.int64),
                       np.array(limits, np.int64), np.array(axes, np.int64)])
  if dn.collapsed_slice_dims:
    y = g.node('Squeeze', [y, np.array(dn.collapsed_slice_dims, np.int64)])
  return y


@rule('rev')
def _rev(g, eqn, x):
  axes = [int(a) for a in eqn.params['dimensions']]
  n = len(axes)
  return g.node('Slice', [x, np.full(n, -1, np.int64),
                          np.full(n, np.iinfo(np.int64).min, np.int64),
                          np.array(axes, np.int64), np.full(n, -1, np.int64)])


@rule('slice')
def _slice(g, eqn, x):
  starts = eqn.params['start_indices']
  limits = eqn.params['limit_indices']
  steps = eqn.params['strides'] or (1,) * len(starts)
  return g.node('Slice', [x, g.shape(starts), g.shape(limits),
                          np.arange(len(starts), dtype=np.int64),
                          np.array(steps, np.int64)])


@rule('pad')
def _pad(g, eqn, x, value):
  config = eqn.params['padding_config']
  if any(interior for _, _, interior in config):
    raise UnsupportedError('pad with interior padding')
  pads = [lo for lo, _, _ in config] + [hi for _, hi, _ in config]
  if min(pads) < 0:
    raise UnsupportedError('pad with negative padding')
  return g.node('Pad', [x, np.array(pads, np.int64), value])


# Reductions.
def _reduce(op, axes_as_input: bool):
  def fn(g, eqn, x):
    axes = [int(a) for a in eqn.params['axes']]
    if axes_as_input:
      return g.node(op, [x, np.array(axes, np.int64)], keepdims=0)
    return g.node(op, [x], axes=axes, keepdims=0)
  return fn


RULES['reduce_sum'] = _reduce('ReduceSum', True)   # axes input from opset 13
RULES['reduce_max'] = _reduce('ReduceMax', False)  # ... and 18 for the others
RULES['reduce_min'] = _reduce('ReduceMin', False)


@rule('argmax', 'argmin')
def _argmax(g, eqn, x):
  (axis,) = eqn.params['axes']
  op = 'ArgMax' if eqn.primitive.name == 'argmax' else 'ArgMin'
  # Ties go to the first index, as in JAX.
  y = g.node(op, [x], axis=int(axis), keepdims=0, select_last_index=0)
  return g.node('Cast', [y], to=_onnx_dtype(eqn.params['index_dtype']))


# Convolution, pooling and matrix products.
@rule('conv_general_dilated')
def _conv(g, eqn, x, kernel):
  p = eqn.params
  dn = p['dimension_numbers']
  if any(d != 1 for d in p['lhs_dilation']) or p['batch_group_count'] != 1:
    raise UnsupportedError('conv_general_dilated with lhs_dilation or '
                           'batch_group_count (a transposed convolution)')
  pads = [int(lo) for lo, _ in p['padding']] + [int(hi)
                                                for _, hi in p['padding']]
  if min(pads) < 0:
    raise UnsupportedError('conv_general_dilated with negative padding')
  x = _transpose(g, x, dn.lhs_spec)
  kernel = _transpose(g, kernel, dn.rhs_spec)
  y = g.node('Conv', [x, kernel], strides=list(p['window_strides']),
             pads=pads, dilations=list(p['rhs_dilation']),
             group=int(p['feature_group_count']))
  return _transpose(g, y, _inverse(dn.out_spec))


def _pool_layout(eqn):
  """(perm to N C spatial..., spatial axes) for a window over a tensor
  whose batch and channel axes have window 1: the first and last axes
  (NHWC, as flax pools), else the first two such axes."""
  window = eqn.params['window_dimensions']
  rank = len(window)
  if window[0] == 1 and window[-1] == 1 and rank > 2:
    rest = [0, rank - 1]
  else:
    rest = [i for i, w in enumerate(window) if w == 1][:2]
  if len(rest) < 2:
    raise UnsupportedError(f'{eqn.primitive.name} over more than the '
                           'spatial axes')
  spatial = [i for i in range(rank) if i not in rest]
  for axis in rest:
    if (eqn.params['window_strides'][axis] != 1
        or tuple(eqn.params['padding'][axis]) != (0, 0)):
      raise UnsupportedError(f'{eqn.primitive.name} that strides or pads '
                             'the batch or channel axis')
  return rest + spatial, spatial


def _pool(g, eqn, x, op, **extra):
  p = eqn.params
  if any(d != 1 for d in p['base_dilation']):
    raise UnsupportedError(f'{eqn.primitive.name} with base_dilation')
  perm, spatial = _pool_layout(eqn)
  pads = ([int(p['padding'][i][0]) for i in spatial]
          + [int(p['padding'][i][1]) for i in spatial])
  attrs = dict(kernel_shape=[int(p['window_dimensions'][i]) for i in spatial],
               strides=[int(p['window_strides'][i]) for i in spatial],
               pads=pads, **extra)
  if any(p['window_dilation'][i] != 1 for i in spatial):
    attrs['dilations'] = [int(p['window_dilation'][i]) for i in spatial]
  y = g.node(op, [_transpose(g, x, perm)], **attrs)
  return _transpose(g, y, _inverse(perm)), attrs


@rule('reduce_window_max')
def _max_pool(g, eqn, x):
  return _pool(g, eqn, x, 'MaxPool')[0]


@rule('reduce_window_sum')
def _sum_pool(g, eqn, x):
  # The mean over the window with the padding counted, times its size.
  y, attrs = _pool(g, eqn, x, 'AveragePool', count_include_pad=1)
  size = int(np.prod(attrs['kernel_shape']))
  if size == 1:
    return y
  return g.node('Mul', [y, np.asarray(size, _out(eqn).dtype)])


@rule('dot_general')
def _dot_general(g, eqn, x, y):
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  lr, rr = len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape)
  # x[..., k] @ y[k, n]: a MatMul (a dense layer on any leading axes).
  if not lb and rr == 2 and tuple(lc) == (lr - 1,) and len(rc) == 1:
    if tuple(rc) == (1,):
      y = _transpose(g, y, (1, 0))
    return g.node('MatMul', [x, y])
  letters = iter('abcdefghijklmnopqrstuvwxyz')
  lhs = [next(letters) for _ in range(lr)]
  rhs = [next(letters) for _ in range(rr)]
  for i, j in zip(list(lc) + list(lb), list(rc) + list(rb)):
    rhs[j] = lhs[i]
  out = ([lhs[i] for i in lb]
         + [lhs[i] for i in range(lr) if i not in lc and i not in lb]
         + [rhs[j] for j in range(rr) if j not in rc and j not in rb])
  equation = f'{"".join(lhs)},{"".join(rhs)}->{"".join(out)}'
  return g.node('Einsum', [x, y], equation=equation)
