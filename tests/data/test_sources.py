"""Tests for load_raw: digits, IDX directories, source resolution, preprocessing."""

import os
import sys

import numpy as np
import pytest

from fedjax_pfl import data
from fedjax_pfl.data import idx, sources

DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"


def _write_mnist_dir(d, n_train=30, n_test=12, seed=0, gz=True):
  rng = np.random.default_rng(seed)
  suf = ".gz" if gz else ""
  arrays = {
    "train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10),
    "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test) % 10),
  }
  for split, (x, y) in arrays.items():
    ims, lbs = idx.IDX_FILES[split]
    idx.write_idx(os.path.join(d, ims + suf), x)
    idx.write_idx(os.path.join(d, lbs + suf), y.astype(np.uint8))
  return arrays


def test_digits_shape_dtype_labels():
  raw = data.load_raw("digits")
  assert raw.name == "digits" and raw.num_classes == 10
  assert raw.train_x.shape == (1797, 8, 8, 1) and raw.train_x.dtype == np.float32
  assert raw.train_y.shape == (1797,) and raw.train_y.dtype == np.int32
  assert set(np.unique(raw.train_y)) == set(range(10))
  assert raw.test_x.shape == (0, 8, 8, 1) and raw.test_x.dtype == np.float32
  assert raw.test_y.shape == (0,) and raw.test_y.dtype == np.int32
  # Standardized with train statistics.
  assert abs(float(raw.train_x.mean())) < 1e-4
  assert abs(float(raw.train_x.std()) - 1.0) < 1e-3


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_idx_source(tmp_path, name, gz):
  arrays = _write_mnist_dir(str(tmp_path), gz=gz)
  raw = data.load_raw(name, data_dir=str(tmp_path), source="idx")
  assert raw.train_x.shape == (30, 28, 28, 1) and raw.test_x.shape == (12, 28, 28, 1)
  assert raw.train_x.dtype == np.float32 and raw.train_y.dtype == np.int32
  np.testing.assert_array_equal(raw.train_y, arrays["train"][1])
  np.testing.assert_array_equal(raw.test_y, arrays["test"][1])
  # Test split uses the train mean/std.
  tr = arrays["train"][0].astype(np.float64) / 255.0
  mean, std = tr.mean(), tr.std()
  expected = (arrays["test"][0].astype(np.float64) / 255.0 - mean) / std
  np.testing.assert_allclose(raw.test_x[..., 0], expected, rtol=1e-4, atol=1e-4)


def test_auto_prefers_idx_when_files_present(tmp_path):
  _write_mnist_dir(str(tmp_path))
  assert sources.resolve_source("fashion_mnist", "auto", str(tmp_path)) == "idx"
  assert sources.resolve_source("mnist", "auto", str(tmp_path / "none")) == "tfds"
  assert sources.resolve_source("digits") == "sklearn"
  assert sources.resolve_source("cifar10") == "tfds"
  raw = data.load_raw("fashion_mnist", data_dir=str(tmp_path))
  assert raw.train_x.shape[0] == 30


def test_idx_missing_files_message(tmp_path):
  with pytest.raises(data.DataError, match="apt-get install -y dataset-fashion-mnist"):
    data.load_raw("fashion_mnist", data_dir=str(tmp_path / "absent"), source="idx")
  _write_mnist_dir(str(tmp_path))
  os.remove(os.path.join(str(tmp_path), "t10k-labels-idx1-ubyte.gz"))
  with pytest.raises(data.DataError) as e:
    data.load_raw("fashion_mnist", data_dir=str(tmp_path), source="idx")
  assert "t10k-labels-idx1-ubyte" in str(e.value) and "--data-dir" in str(e.value)


def test_idx_corrupt_file_propagates(tmp_path):
  _write_mnist_dir(str(tmp_path))
  p = os.path.join(str(tmp_path), "train-labels-idx1-ubyte.gz")
  idx.write_idx(p, np.array([0, 1, 42] * 10, np.uint8))
  with pytest.raises(data.DataError, match="label 42 .* out of range"):
    data.load_raw("mnist", data_dir=str(tmp_path), source="idx")


def test_unknown_name_and_source():
  with pytest.raises(data.DataError) as e:
    data.load_raw("imagenet")
  for name in data.KNOWN_DATASETS:
    assert name in str(e.value)
  with pytest.raises(data.DataError, match="unknown source"):
    data.load_raw("digits", source="web")
  with pytest.raises(data.DataError, match="cannot be loaded from source 'idx'"):
    data.load_raw("cifar10", source="idx")
  with pytest.raises(data.DataError, match="cannot be loaded from source 'tfds'"):
    data.load_raw("digits", source="tfds")


def test_auto_without_idx_or_tfds_mentions_both(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(data.DataError) as e:
    data.load_raw("fashion_mnist", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "apt-get install -y dataset-fashion-mnist" in msg and "[tfds]" in msg


def test_standardize_constant_channel_and_errors():
  x = np.zeros((4, 2, 2, 2), np.uint8)
  x[..., 1] = np.arange(4)[:, None, None]
  tr, te = data.standardize(x, x[:1], 255.0)
  assert np.all(tr[..., 0] == 0)  # zero-std channel: centred only
  np.testing.assert_allclose(tr[..., 1].std(), 1.0, rtol=1e-5)
  assert te.shape == (1, 2, 2, 2) and te.dtype == np.float32
  with pytest.raises(data.DataError, match="non-empty"):
    data.standardize(x[:0], x[:0], 255.0)
  with pytest.raises(data.DataError, match="shapes differ"):
    data.standardize(x, np.zeros((1, 3, 2, 2)), 255.0)


@pytest.mark.skipif(
  not os.path.isdir(DEBIAN_FASHION), reason="apt-get install dataset-fashion-mnist to run"
)
def test_real_debian_fashion_mnist():
  raw = data.load_raw("fashion_mnist", source="idx")
  assert raw.train_x.shape == (60000, 28, 28, 1) and raw.test_x.shape == (10000, 28, 28, 1)
  assert raw.num_classes == 10
  assert set(np.unique(raw.train_y)) == set(range(10)) == set(np.unique(raw.test_y))
