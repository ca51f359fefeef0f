"""Tests for the TFDS source, using tfds.testing.mock_data (no network)."""

import sys

import numpy as np
import pytest

from fedjax_pfl import data
from fedjax_pfl.data import tfds_source

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize(
  "name,shape,num_classes",
  [
    ("fashion_mnist", (28, 28, 1), 10),
    ("cifar10", (32, 32, 3), 10),
    ("cifar100", (32, 32, 3), 100),
  ],
)
def test_load_raw_tfds_mocked(tmp_path, name, shape, num_classes):
  with tfds.testing.mock_data(num_examples=12):
    raw = data.load_raw(name, data_dir=str(tmp_path), source="tfds")
  assert raw.name == name and raw.num_classes == num_classes
  assert raw.train_x.shape == (12, *shape) and raw.test_x.shape == (12, *shape)
  assert raw.train_x.dtype == np.float32 and raw.train_y.dtype == np.int32
  assert raw.train_y.min() >= 0 and raw.train_y.max() < num_classes
  mean = raw.train_x.reshape(-1, shape[-1]).mean(axis=0)
  np.testing.assert_allclose(mean, 0.0, atol=1e-4)


def test_load_tfds_raw_uint8(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    tr_x, tr_y, te_x, te_y = tfds_source.load_tfds("cifar10", data_dir=str(tmp_path))
  assert tr_x.dtype == np.uint8 and tr_x.shape == (5, 32, 32, 3)
  assert tr_y.dtype == np.int32 and te_y.shape == (5,) and te_x.shape == tr_x.shape


def test_auto_falls_back_to_tfds_when_no_idx_files(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    raw = data.load_raw("mnist", data_dir=str(tmp_path))  # no IDX files there
  assert raw.train_x.shape == (4, 28, 28, 1)


def test_federated_on_mocked_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    fd = data.load_federated(
      "cifar10", data_dir=str(tmp_path), partition="iid", num_clients=4, seed=0
    )
  assert fd.x.shape == (80, 32, 32, 3) and fd.input_shape == (32, 32, 3)
  assert int(fd.train_counts.sum() + fd.test_counts.sum()) == 80


def test_unprepared_dataset_raises_data_error(tmp_path):
  with pytest.raises(data.DataError, match="ArrayRecord") as e:
    tfds_source.load_tfds("cifar10", data_dir=str(tmp_path / "empty"))
  assert "cifar10" in str(e.value)


def test_missing_tfds_install_hint(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  assert not tfds_source.tfds_available()
  with pytest.raises(data.DataError, match=r"fedjax-pfl\[tfds\]"):
    data.load_raw("cifar10")


def test_unknown_tfds_name():
  with pytest.raises(ValueError, match="unsupported TFDS dataset"):
    tfds_source.load_tfds("digits")
