"""data.normalization: train statistics (default), FL-bench's constants, raw [0, 1]."""

import numpy as np
import pytest

from fedjax_pfl import data
from tests.data.test_sources import _write_mnist_dir

# Reference-protocols spec §1 "Input scaling" (FL-bench DATA_MEAN / DATA_STD).
SPEC = {
    "mnist": ([0.1307], [0.3015]),
    "fashion_mnist": ([0.286], [0.3205]),
    "emnist/byclass": ([0.1736], [0.3248]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.201]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2009, 0.1984, 0.2023]),
    "svhn_cropped": ([0.4377, 0.4438, 0.4728], [0.1201, 0.1231, 0.1052]),
}


def test_flbench_constants_are_the_specs():
  assert {k: (list(m), list(s)) for k, (m, s) in data.FLBENCH_STATS.items()} == SPEC
  assert set(data.FLBENCH_STATS) <= set(data.KNOWN_DATASETS)
  assert data.NORMALIZATIONS == ("train_stats", "flbench", "none")


def test_none_gives_raw_unit_pixels(tmp_path):
  arrays = _write_mnist_dir(str(tmp_path))
  raw = data.load_raw("fashion_mnist", data_dir=str(tmp_path), source="idx",
                      normalization="none")
  np.testing.assert_array_equal(raw.train_x[..., 0], arrays["train"][0].astype(np.float32) / 255)
  np.testing.assert_array_equal(raw.test_x[..., 0], arrays["test"][0].astype(np.float32) / 255)
  assert raw.train_x.dtype == np.float32 and raw.train_x.min() >= 0 and raw.train_x.max() <= 1
  digits = data.load_raw("digits", normalization="none")
  from sklearn.datasets import load_digits
  np.testing.assert_allclose(digits.train_x[..., 0], load_digits().images / 16.0, rtol=1e-6)


def test_flbench_uses_the_fixed_constants(tmp_path):
  arrays = _write_mnist_dir(str(tmp_path))
  raw = data.load_raw("fashion_mnist", data_dir=str(tmp_path), source="idx",
                      normalization="flbench")
  want = (arrays["train"][0] / 255.0 - 0.286) / 0.3205
  np.testing.assert_allclose(raw.train_x[..., 0], want, rtol=1e-5, atol=1e-6)
  x = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
  tr, te = data.normalize(x, x[:1], 255.0, "flbench", "cifar10")
  mean, std = np.array(SPEC["cifar10"][0]), np.array(SPEC["cifar10"][1])
  np.testing.assert_allclose(tr, (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(te, tr[:1])


def test_train_stats_is_still_the_default(tmp_path):
  _write_mnist_dir(str(tmp_path))
  kw = dict(data_dir=str(tmp_path), source="idx")
  default = data.load_raw("fashion_mnist", **kw)
  stats = data.load_raw("fashion_mnist", normalization="train_stats", **kw)
  np.testing.assert_array_equal(default.train_x, stats.train_x)
  np.testing.assert_allclose(default.train_x.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(default.train_x.std(), 1.0, rtol=1e-4)
  fd = data.load_federated("digits", num_clients=4, normalization="none")
  assert fd.x.min() == 0.0 and fd.x.max() == 1.0


def test_errors(tmp_path):
  x = np.zeros((2, 4, 4, 1), np.uint8)
  with pytest.raises(data.DataError, match="data.normalization='zscore'; allowed"):
    data.normalize(x, x, 255.0, "zscore", "mnist")
  with pytest.raises(data.DataError, match="no constants for dataset 'digits'"):
    data.load_raw("digits", normalization="flbench")
  with pytest.raises(data.DataError, match="channels"):
    data.normalize(x, x, 255.0, "flbench", "cifar10")
  with pytest.raises(data.DataError, match="allowed"):
    data.load_raw("digits", normalization="zscore")
