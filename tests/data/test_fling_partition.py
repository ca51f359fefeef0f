"""The Fling (FedCAC / FedPURIN) partition: per-client class mixes from
RandomState(seed), fixed sizes, train from the official train split and test
from the official test split with the same mix."""

import os

import numpy as np
import pytest

from fedjax_pfl import data
from fedjax_pfl.data.federated import PARTITIONS, PartitionOptions
from fedjax_pfl.data.partition import PartitionError, fling_dirichlet_sampling


def fling_reference(labels, client_number, sample_num, seed, alpha):
  """Fling's ``dirichlet_sampling`` transcribed (lists, as in the original)."""
  num_classes = len(np.unique(labels))
  idxs_classes = [[] for _ in range(num_classes)]
  for i in range(len(labels)):
    idxs_classes[labels[i]].append(i)
  client_indexes = [[] for _ in range(client_number)]
  random_state = np.random.RandomState(seed)
  q = random_state.dirichlet(np.repeat(alpha, num_classes), client_number)
  for i in range(client_number):
    num_samples_of_client = 0
    for j in range(num_classes):
      select_num = (int(sample_num * q[i][j] + 0.5) if j < num_classes - 1
                    else sample_num - num_samples_of_client)
      select_num = min(select_num, sample_num - num_samples_of_client)
      select_num = max(select_num, 0)
      num_samples_of_client += select_num
      selected = random_state.choice(idxs_classes[j], select_num,
                                     replace=(select_num > len(idxs_classes[j])))
      client_indexes[i] += list(selected)
    client_indexes[i] = np.array(client_indexes[i])
  return client_indexes


def _pool(seed=0):
  rng = np.random.default_rng(seed)
  train = rng.integers(0, 4, 400)
  test = rng.integers(0, 4, 120)
  y = np.concatenate([train, test]).astype(np.int32)
  return y, np.arange(y.size) >= train.size


def _opts(**kw):
  base = dict(num_clients=6, alpha=0.5, shards_per_client=2, min_samples_per_client=10,
              max_retries=10, test_ratio=0.25, train_per_client=50, test_per_client=10, seed=3)
  return PartitionOptions(**{**base, **kw})


def test_matches_the_reference_loop():
  y, is_test = _pool()
  train, test = PARTITIONS["fling"](y, is_test, _opts(), np.random.default_rng(0))
  train_pos, test_pos = np.flatnonzero(~is_test), np.flatnonzero(is_test)
  ref_train = fling_reference(y[train_pos], 6, 50, 3, 0.5)
  ref_test = fling_reference(y[test_pos], 6, 10, 3, 0.5)
  for i in range(6):
    np.testing.assert_array_equal(train[i], train_pos[ref_train[i]])
    np.testing.assert_array_equal(test[i], test_pos[ref_test[i]])


def test_sizes_splits_same_mix_and_determinism():
  y, is_test = _pool()
  train, test = PARTITIONS["fling"](y, is_test, _opts(), np.random.default_rng(0))
  q = np.random.RandomState(3).dirichlet(np.repeat(0.5, 4), 6)
  for i in range(6):
    assert train[i].size == 50 and test[i].size == 10
    assert not is_test[train[i]].any() and is_test[test[i]].all()
    n_tr, n_te = np.bincount(y[train[i]], minlength=4), np.bincount(y[test[i]], minlength=4)
    # Both splits follow q[i]: class j < C-1 gets int(S q + 0.5) unless clipped.
    for j in range(3):
      if np.cumsum(np.floor(50 * q[i] + .5))[j] <= 50:
        assert n_tr[j] == int(50 * q[i, j] + 0.5)
      if np.cumsum(np.floor(10 * q[i] + .5))[j] <= 10:
        assert n_te[j] == int(10 * q[i, j] + 0.5)
    np.testing.assert_allclose(n_tr / 50, n_te / 10, atol=0.2)
  again = PARTITIONS["fling"](y, is_test, _opts(), np.random.default_rng(99))  # rng unused
  for a, b in zip(train + test, again[0] + again[1]):
    np.testing.assert_array_equal(a, b)
  other = PARTITIONS["fling"](y, is_test, _opts(seed=4), np.random.default_rng(0))
  assert not all(np.array_equal(a, b) for a, b in zip(train, other[0]))


def test_small_pools_sample_with_replacement():
  labels = np.array([0] * 3 + [1] * 200)
  clients = fling_dirichlet_sampling(labels, 30, 0.05, 40, seed=0)
  assert all(c.size == 40 for c in clients)
  heavy = [c for c in clients if np.sum(labels[c] == 0) > 3]
  assert heavy and all(len(np.unique(c[labels[c] == 0])) <= 3 for c in heavy)
  # Clients draw independently, so examples repeat across clients.
  assert len(np.unique(np.concatenate(clients))) < sum(c.size for c in clients)


def test_errors():
  y, is_test = _pool()
  with pytest.raises(PartitionError, match="official test split"):
    PARTITIONS["fling"](y, np.zeros_like(is_test), _opts(), np.random.default_rng(0))
  with pytest.raises(PartitionError, match="does not have"):
    fling_dirichlet_sampling(np.zeros(5, int), 3, 1.0, 10, seed=0, classes=np.array([0, 1]))
  with pytest.raises(ValueError, match="samples_per_client"):
    fling_dirichlet_sampling(np.zeros(5, int), 3, 1.0, 0, seed=0)
  with pytest.raises(ValueError, match="train_per_client"):
    data.load_federated("digits", partition="fling", train_per_client=0)
  with pytest.raises(PartitionError, match="official test split"):
    data.load_federated("digits", partition="fling", num_clients=4)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Fashion-MNIST IDX files not installed")
def test_fashion_mnist_500_100():
  fd = data.load_federated("fashion_mnist", partition="fling", num_clients=20, alpha=0.1, seed=1)
  assert fd.train_counts.tolist() == [500] * 20 and fd.test_counts.tolist() == [100] * 20
  assert fd.train_idx.max() < 60000 <= fd.test_idx.min()
  q = np.random.RandomState(1).dirichlet(np.repeat(0.1, 10), 20)
  for i in range(20):
    n_tr = np.bincount(fd.y[fd.train_idx[i]], minlength=10)
    n_te = np.bincount(fd.y[fd.test_idx[i]], minlength=10)
    np.testing.assert_allclose(n_tr / 500, q[i], atol=0.02)
    np.testing.assert_allclose(n_te / 100, q[i], atol=0.06)
