"""FL-bench's Dirichlet split (bit for bit) and client stream (reference-protocols spec §1)."""

import hashlib
import os
import random

import numpy as np
import pytest

from fedjax_pfl import data
from fedjax_pfl.data import flbench_client_stream, flbench_dirichlet
from fedjax_pfl.data.idx import load_idx_split

FASHION = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION),
                                   reason="Fashion-MNIST IDX files not installed")

# alpha -> (client size min, median, max, train total, test total, sha256); spec §1
# (the spec writes the alpha = 0.5 median 634.5 as 634).
CHECK = {
    0.1: (52, 524.0, 3378, 52537, 17463,
          "93a8eb837599b375cc0a7d7eecb6393ebf275305b4a5717eec4413b73e1eb96c"),
    0.5: (130, 634.5, 1446, 52538, 17462,
          "8b3fadb74e4f88fd1c18d2d4eca3fc8c8a1cb033a7fac52c204fa1117c44a883"),
    1.0: (289, 671.0, 1354, 52541, 17459,
          "f3acb378bc910d74d0a30c92d40c20abfbf7e0687521dd65c514b7ffb7fbe8da"),
}


def digest(train, test):
  """The spec's digest: sha256 over ``train_k | test_k #`` (int64 bytes), k ascending."""
  h = hashlib.sha256()
  for tr, te in zip(train, test):
    h.update(np.asarray(tr, np.int64).tobytes() + b"|" + np.asarray(te, np.int64).tobytes()
             + b"#")
  return h.hexdigest()


def reference(labels, n, alpha, seed=42, test_ratio=0.25, least=10):
  """A plain transcription of FL-bench's generate_data.py Dirichlet path on
  numpy's GLOBAL legacy generator (state saved and restored). Returns the
  split and the number of attempts."""
  saved = np.random.get_state()
  try:
    np.random.seed(seed)
    per_class = {c: np.where(labels == c)[0] for c in sorted(set(labels.tolist()))}
    min_size, attempts = 0, 0
    while min_size < least:
      attempts += 1
      idx = [[] for _ in range(n)]
      for c in per_class:
        np.random.shuffle(per_class[c])
        p = np.random.dirichlet(np.repeat(alpha, n))
        cuts = (np.cumsum(p) * len(per_class[c])).astype(int)[:-1]
        idx = [np.concatenate((a, b.tolist())).astype(np.int64)
               for a, b in zip(idx, np.split(per_class[c], cuts))]
      min_size = min(len(a) for a in idx)
    train, test = [], []
    for a in idx:
      a = np.array(a, np.int64)
      np.random.shuffle(a)
      k = int(len(a) * test_ratio)
      test.append(a[:k])
      train.append(a[k:])
    return train, test, attempts
  finally:
    np.random.set_state(saved)


@pytest.mark.parametrize("alpha,least,n", [(0.5, 10, 8), (0.05, 12, 6), (2.0, 1, 3)])
def test_matches_the_reference_transcription(alpha, least, n):
  labels = np.random.default_rng(3).integers(0, 5, 300)
  train, test = flbench_dirichlet(labels, n, alpha, seed=7, min_samples=least)
  want_train, want_test, attempts = reference(labels, n, alpha, seed=7, least=least)
  assert digest(train, test) == digest(want_train, want_test)
  if alpha == 0.05:
    assert attempts > 1   # retries happen, with in-place class shuffles carried over
  both = np.concatenate(train + test)
  np.testing.assert_array_equal(np.sort(both), np.arange(labels.size))   # exact cover
  for tr, te in zip(train, test):
    assert te.size == int((tr.size + te.size) * 0.25) and tr.dtype == te.dtype == np.int64
    assert tr.size + te.size >= least
  other = flbench_dirichlet(labels, n, alpha, seed=8, min_samples=least)
  assert digest(*other) != digest(train, test)


def test_global_rng_untouched_and_errors():
  labels = np.arange(40) % 4
  state = np.random.get_state()[1].copy()
  flbench_dirichlet(labels, 4, 1.0, seed=0)
  np.testing.assert_array_equal(np.random.get_state()[1], state)
  with pytest.raises(data.PartitionError, match="impossible"):
    flbench_dirichlet(labels, 5, 1.0, min_samples=9)
  with pytest.raises(data.PartitionError, match="after 3 attempts"):
    flbench_dirichlet(np.arange(400) % 4, 20, 0.01, min_samples=19, max_retries=3)
  with pytest.raises(ValueError, match="alpha"):
    flbench_dirichlet(labels, 4, 0.0)
  with pytest.raises(ValueError, match="test_ratio"):
    flbench_dirichlet(labels, 4, 1.0, test_ratio=1.0)


def test_load_federated_wiring_on_digits():
  fd = data.load_federated("digits", partition="flbench", num_clients=10, alpha=0.3, seed=5)
  train, test = flbench_dirichlet(fd.y, 10, 0.3, seed=5)
  for i in range(10):
    np.testing.assert_array_equal(fd.train_idx[i, :fd.train_counts[i]], train[i])
    np.testing.assert_array_equal(fd.test_idx[i, :fd.test_counts[i]], test[i])
  fd2 = data.load_federated("digits", partition="flbench", num_clients=10, alpha=0.3, seed=6)
  assert not np.array_equal(fd.train_counts, fd2.train_counts)


@needs_fashion
@pytest.mark.parametrize("alpha", sorted(CHECK))
def test_fashion_mnist_check_values(alpha):
  y = np.concatenate([load_idx_split(FASHION, split, 10)[1] for split in ("train", "test")])
  train, test = flbench_dirichlet(y, 100, alpha, seed=42)
  sizes = np.array([a.size + b.size for a, b in zip(train, test)])
  lo, med, hi, n_train, n_test, sha = CHECK[alpha]
  assert (sizes.min(), np.median(sizes), sizes.max()) == (lo, med, hi)
  assert (sum(a.size for a in train), sum(b.size for b in test)) == (n_train, n_test)
  assert digest(train, test) == sha


@needs_fashion
def test_fashion_mnist_through_load_federated():
  """The pooled order (train split, then test split) of the real pipeline."""
  fd = data.load_federated("fashion_mnist", source="idx", partition="flbench", num_clients=100,
                           alpha=0.1, seed=42, normalization="none")
  rows = lambda idx, counts: [idx[i, :counts[i]] for i in range(fd.num_clients)]
  assert digest(rows(fd.train_idx, fd.train_counts), rows(fd.test_idx, fd.test_counts)) == \
      CHECK[0.1][5]


def test_flbench_client_stream_spec_values():
  stream = flbench_client_stream(42, 100, 0.1, 3)
  assert stream.shape == (3, 10) and stream.dtype == np.int32
  assert stream[0].tolist() == [81, 14, 3, 94, 35, 31, 28, 17, 13, 86]
  assert stream[1].tolist() == [94, 69, 11, 75, 54, 4, 3, 27, 29, 64]


def test_flbench_client_stream_equals_global_random_and_leaves_it_alone():
  saved = random.getstate()
  try:
    random.seed(1234)   # FL-bench: random.seed(seed), then one sample per round
    want = [random.sample(range(37), max(1, int(37 * 0.3))) for _ in range(5)]
    random.seed(99)
    before = random.getstate()
    got = flbench_client_stream(1234, 37, 0.3, 5)
    assert random.getstate() == before
  finally:
    random.setstate(saved)
  np.testing.assert_array_equal(got, want)
  assert flbench_client_stream(0, 5, 0.1, 2).shape == (2, 1)      # max(1, int(0.5))
  assert flbench_client_stream(0, 5, 1.0, 0).shape == (0, 5)
  assert sorted(flbench_client_stream(0, 5, 1.0, 1)[0].tolist()) == [0, 1, 2, 3, 4]
  for kwargs, match in [({"num_clients": 0}, "num_clients"), ({"join_ratio": 0.0}, "join_ratio"),
                        ({"num_rounds": -1}, "num_rounds")]:
    args = {"seed": 0, "num_clients": 5, "join_ratio": 0.5, "num_rounds": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
      flbench_client_stream(**args)
