"""Tests for padded federated arrays and load_federated."""

import numpy as np
import pytest

from fedjax_pfl import data


def test_pad_indices():
  idx, counts = data.pad_indices([np.array([3, 1, 2]), np.array([], np.int64), np.array([7])])
  assert idx.dtype == np.int32 and counts.dtype == np.int32
  np.testing.assert_array_equal(idx, [[3, 1, 2], [0, 0, 0], [7, 0, 0]])
  np.testing.assert_array_equal(counts, [3, 0, 1])
  idx, _ = data.pad_indices([np.arange(5)], multiple=4)
  assert idx.shape == (1, 8)
  idx, counts = data.pad_indices([np.array([], np.int64)] * 2)
  assert idx.shape == (2, 1) and counts.tolist() == [0, 0]
  with pytest.raises(ValueError, match="multiple"):
    data.pad_indices([np.arange(2)], multiple=0)
  with pytest.raises(ValueError, match="outside"):
    data.pad_indices([np.array([-1])])
  with pytest.raises(ValueError, match="1-D integer"):
    data.pad_indices([np.array([0.5])])


def _check_consistent(fd):
  n = fd.num_clients
  assert fd.train_idx.shape[0] == fd.test_idx.shape[0] == n
  assert fd.train_idx.dtype == fd.test_idx.dtype == np.int32
  assert fd.train_counts.shape == fd.test_counts.shape == (n,)
  rows = []
  for idx, counts in ((fd.train_idx, fd.train_counts), (fd.test_idx, fd.test_counts)):
    assert idx.shape[1] == max(int(counts.max()), 1)
    for i in range(n):
      assert np.all(idx[i, counts[i] :] == 0)  # padding
      rows.append(idx[i, : counts[i]])
  used = np.concatenate(rows)
  np.testing.assert_array_equal(np.sort(used), np.arange(fd.x.shape[0]))  # exact cover


def test_digits_end_to_end():
  fd = data.load_federated("digits", num_clients=20, alpha=0.1, seed=42)
  assert isinstance(fd, data.FederatedData)
  assert fd.num_clients == 20 and fd.input_shape == (8, 8, 1) and fd.num_classes == 10
  assert fd.x.shape == (1797, 8, 8, 1) and fd.x.dtype == np.float32 and fd.y.dtype == np.int32
  _check_consistent(fd)
  total = fd.train_counts + fd.test_counts
  assert total.min() >= 10
  np.testing.assert_array_equal(fd.test_counts, (total * 0.25).astype(int))
  again = data.load_federated("digits", num_clients=20, alpha=0.1, seed=42)
  np.testing.assert_array_equal(fd.train_idx, again.train_idx)
  np.testing.assert_array_equal(fd.test_idx, again.test_idx)
  other = data.load_federated("digits", num_clients=20, alpha=0.1, seed=7)
  assert not np.array_equal(fd.train_counts, other.train_counts)


@pytest.mark.parametrize("partition", ["iid", "shard"])
def test_other_partitions(partition):
  fd = data.load_federated("digits", partition=partition, num_clients=10, seed=0)
  _check_consistent(fd)
  assert (fd.train_counts + fd.test_counts).min() >= 178  # 1797 / 10 or 2 x (1797 / 20)


def test_max_examples():
  fd = data.load_federated("digits", num_clients=5, alpha=1.0, max_examples=300, seed=1)
  assert fd.x.shape == (300, 8, 8, 1) and fd.y.shape == (300,)
  _check_consistent(fd)
  assert int(fd.train_counts.sum() + fd.test_counts.sum()) == 300
  fd2 = data.load_federated("digits", num_clients=5, alpha=1.0, max_examples=300, seed=1)
  np.testing.assert_array_equal(fd.x, fd2.x)


def test_idx_pools_train_and_test(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("test", 20)):
    ims, lbs = data.idx.IDX_FILES[split]
    data.write_idx(str(tmp_path / ims), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    data.write_idx(str(tmp_path / lbs), (np.arange(n) % 10).astype(np.uint8))
  fd = data.load_federated(
    "fashion_mnist", data_dir=str(tmp_path), source="idx", partition="iid", num_clients=3
  )
  assert fd.x.shape == (60, 28, 28, 1)
  _check_consistent(fd)


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    ({"partition": "pathological"}, ValueError, "allowed: dirichlet, iid, shard, fling"),
    ({"num_clients": 0}, ValueError, "num_clients"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"test_ratio": 1.0}, ValueError, "test_ratio"),
    ({"seed": -3}, ValueError, "seed"),
    ({"max_examples": 5}, ValueError, "max_examples"),
    ({"shards_per_client": 0}, ValueError, "shards_per_client"),
    ({"max_retries": 0}, ValueError, "max_retries"),
    # Dirichlet: every client needs min_samples_per_client=10 of the 1797 examples.
    ({"num_clients": 2000}, ValueError, r"num_clients=2000 is invalid; allowed: 1\.\.179 "),
    ({"num_clients": 2000, "partition": "iid"}, ValueError, r"allowed: 1\.\.1797 "),
  ],
)
def test_validation(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    data.load_federated("digits", **kwargs)


def test_unknown_dataset_and_partition_error():
  with pytest.raises(data.DataError, match="known datasets"):
    data.load_federated("nope")
  with pytest.raises(data.PartitionError):
    data.load_federated(
      "digits", num_clients=100, min_samples_per_client=17, alpha=0.01, max_retries=3
    )
