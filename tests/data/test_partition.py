"""Tests for the seeded client partitions."""

import numpy as np
import pytest

from fedjax_pfl import data


def _labels(n=1000, num_classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, num_classes, n)


def _assert_exact_cover(parts, n):
  allidx = np.concatenate(parts)
  assert allidx.size == n
  np.testing.assert_array_equal(np.sort(allidx), np.arange(n))
  assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dirichlet_cover_min_size_determinism():
  y = _labels()
  parts = data.dirichlet_partition(
    y, 20, 0.5, min_samples_per_client=10, rng=np.random.default_rng(1)
  )
  assert len(parts) == 20
  _assert_exact_cover(parts, y.size)
  assert min(p.size for p in parts) >= 10
  again = data.dirichlet_partition(y, 20, 0.5, rng=np.random.default_rng(1))
  other = data.dirichlet_partition(y, 20, 0.5, rng=np.random.default_rng(2))
  assert _same(parts, again) and not _same(parts, other)


def test_dirichlet_small_alpha_is_skewed():
  y = _labels(2000)
  skewed = data.dirichlet_partition(
    y, 10, 0.05, min_samples_per_client=1, rng=np.random.default_rng(0)
  )
  uniform = data.dirichlet_partition(y, 10, 1000.0, rng=np.random.default_rng(0))

  def mean_classes(parts):  # classes holding >= 5% of a client's data
    return np.mean([np.sum(np.bincount(y[p], minlength=10) >= 0.05 * p.size) for p in parts])

  assert mean_classes(skewed) < 5 < mean_classes(uniform)


def test_dirichlet_termination_error():
  y = np.repeat(np.arange(2), 50)  # 2 classes, 100 examples
  with pytest.raises(data.PartitionError) as e:
    data.dirichlet_partition(
      y, 10, 1e-3, min_samples_per_client=9, max_retries=20, rng=np.random.default_rng(0)
    )
  msg = str(e.value)
  assert "alpha=0.001" in msg and "num_clients=10" in msg and "20 attempts" in msg
  assert "smallest client had 0" in msg and "lower min_samples_per_client" in msg
  with pytest.raises(data.PartitionError, match="impossible"):
    data.dirichlet_partition(y, 20, 1.0, min_samples_per_client=6, rng=np.random.default_rng(0))


def test_dirichlet_tiny_alpha_still_valid():
  y = _labels(300, 3)
  parts = data.dirichlet_partition(
    y, 3, 1e-6, min_samples_per_client=0, rng=np.random.default_rng(0)
  )
  _assert_exact_cover(parts, 300)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": float("nan")}, "alpha"),
    ({"num_clients": 0}, "num_clients"),
    ({"num_clients": 1001}, "num_clients"),
    ({"min_samples_per_client": -1}, "min_samples_per_client"),
    ({"max_retries": 0}, "max_retries"),
  ],
)
def test_dirichlet_validation(kwargs, match):
  args = {"num_clients": 5, "alpha": 0.5, **kwargs}
  with pytest.raises(ValueError, match=match):
    data.dirichlet_partition(_labels(), rng=np.random.default_rng(0), **args)


def test_bad_inputs():
  with pytest.raises(ValueError, match="labels"):
    data.dirichlet_partition(np.zeros((2, 2), int), 1, 1.0, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="integer dtype"):
    data.shard_partition(np.zeros(10), 1, rng=np.random.default_rng(0))
  with pytest.raises(TypeError, match="Generator"):
    data.iid_partition(10, 2, rng=0)


def test_iid_sizes_and_determinism():
  parts = data.iid_partition(103, 10, rng=np.random.default_rng(0))
  _assert_exact_cover(parts, 103)
  assert sorted(p.size for p in parts) == [10] * 7 + [11] * 3
  assert _same(parts, data.iid_partition(103, 10, rng=np.random.default_rng(0)))
  assert not _same(parts, data.iid_partition(103, 10, rng=np.random.default_rng(1)))
  with pytest.raises(ValueError, match="num_clients"):
    data.iid_partition(5, 6, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="num_examples"):
    data.iid_partition(0, 1, rng=np.random.default_rng(0))


def test_shard_label_structure():
  y = np.repeat(np.arange(10), 100)
  np.random.default_rng(0).shuffle(y)
  parts = data.shard_partition(y, 50, 2, rng=np.random.default_rng(3))
  _assert_exact_cover(parts, 1000)
  assert all(p.size == 20 for p in parts)
  # Each shard (10 examples) is single-class here, so a client has <= 2 classes.
  assert max(np.unique(y[p]).size for p in parts) <= 2
  assert _same(parts, data.shard_partition(y, 50, 2, rng=np.random.default_rng(3)))
  with pytest.raises(ValueError, match="shards_per_client"):
    data.shard_partition(y, 5, 0, rng=np.random.default_rng(0))
  with pytest.raises(ValueError, match="num_clients \\* shards_per_client"):
    data.shard_partition(y, 600, 2, rng=np.random.default_rng(0))


def test_split_train_test_ratios():
  parts = [np.arange(0, 10), np.arange(10, 13), np.arange(13, 113), np.array([], np.int64)]
  train, test = data.split_train_test(parts, 0.25, rng=np.random.default_rng(0))
  assert [t.size for t in test] == [2, 0, 25, 0]
  assert [t.size for t in train] == [8, 3, 75, 0]
  for p, tr, te in zip(parts, train, test):
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), p)
  train0, _ = data.split_train_test(parts, 0.0, rng=np.random.default_rng(0))
  assert [t.size for t in train0] == [10, 3, 100, 0]
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match="test_ratio"):
      data.split_train_test(parts, bad, rng=np.random.default_rng(0))
