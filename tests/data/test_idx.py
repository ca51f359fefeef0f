"""Tests for the strict IDX reader."""

import gzip
import os
import struct

import numpy as np
import pytest

from fedjax_pfl.data import idx


def _images(n=5, rows=4, cols=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_roundtrip_images_and_labels(tmp_path, suffix):
  images = _images()
  labels = np.array([0, 9, 3, 3, 1], np.uint8)
  ip, lp = str(tmp_path / f"im{suffix}"), str(tmp_path / f"lb{suffix}")
  idx.write_idx(ip, images)
  idx.write_idx(lp, labels)
  with open(ip, "rb") as f:
    assert (f.read(2) == b"\x1f\x8b") == bool(suffix)
  got = idx.read_idx_images(ip)
  assert got.dtype == np.uint8 and got.shape == (5, 4, 3)
  np.testing.assert_array_equal(got, images)
  got_labels = idx.read_idx_labels(lp, num_classes=10)
  assert got_labels.dtype == np.int32
  np.testing.assert_array_equal(got_labels, labels)


def test_gzip_detected_from_content_not_name(tmp_path):
  p = str(tmp_path / "labels-no-suffix")
  idx.write_idx(p, np.array([1, 2], np.uint8), compress=True)
  np.testing.assert_array_equal(idx.read_idx_labels(p), [1, 2])


def test_bad_magic(tmp_path):
  p = str(tmp_path / "x")
  idx.write_idx(p, np.zeros(4, np.uint8))  # a label file (0x801) read as images
  with pytest.raises(idx.DataError, match=r"bad magic number 0x00000801.*0x00000803") as e:
    idx.read_idx_images(p)
  assert p in str(e.value)


def test_non_uint8_type_code_rejected(tmp_path):
  p = str(tmp_path / "x")
  with open(p, "wb") as f:  # type code 0x0D (float32), 1 dim.
    f.write(struct.pack(">II", 0x00000D01, 1) + b"\0\0\0\0")
  with pytest.raises(idx.DataError, match="bad magic"):
    idx.read_idx_labels(p)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload(tmp_path, gz):
  p = str(tmp_path / "x")
  payload = struct.pack(">IIII", idx.IMAGES_MAGIC, 2, 2, 2) + bytes(7)  # needs 8
  with open(p, "wb") as f:
    f.write(gzip.compress(payload) if gz else payload)
  with pytest.raises(idx.DataError, match=r"truncated: 23 bytes, expected exactly 24"):
    idx.read_idx_images(p)


def test_trailing_bytes(tmp_path):
  p = str(tmp_path / "x")
  with open(p, "wb") as f:
    f.write(struct.pack(">II", idx.LABELS_MAGIC, 2) + bytes(3))
  with pytest.raises(idx.DataError, match="trailing bytes"):
    idx.read_idx_labels(p)


def test_truncated_header_and_empty_file(tmp_path):
  p = str(tmp_path / "x")
  with open(p, "wb") as f:
    f.write(struct.pack(">II", idx.IMAGES_MAGIC, 2))
  with pytest.raises(idx.DataError, match="truncated header"):
    idx.read_idx_images(p)
  open(p, "wb").close()
  with pytest.raises(idx.DataError, match="too short"):
    idx.read_idx_images(p)


def test_corrupt_gzip(tmp_path):
  p = str(tmp_path / "x.gz")
  idx.write_idx(p, _images())
  with open(p, "rb") as f:
    data = f.read()
  with open(p, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(idx.DataError, match="gzip"):
    idx.read_idx_images(p)


def test_label_out_of_range(tmp_path):
  p = str(tmp_path / "x")
  idx.write_idx(p, np.array([0, 3, 10, 12], np.uint8))
  with pytest.raises(idx.DataError, match=r"label 10 at position 2 is out of range \[0, 10\)"):
    idx.read_idx_labels(p, num_classes=10)
  assert idx.read_idx_labels(p).max() == 12  # no range check without num_classes


def test_missing_file(tmp_path):
  p = str(tmp_path / "nope")
  with pytest.raises(idx.DataError, match="not found.*nope"):
    idx.read_idx_images(p)


def _write_split(d, split, images, labels, gz=True):
  ims, lbs = idx.IDX_FILES[split]
  suf = ".gz" if gz else ""
  idx.write_idx(os.path.join(d, ims + suf), images)
  idx.write_idx(os.path.join(d, lbs + suf), labels)


def test_load_split_and_count_mismatch(tmp_path):
  d = str(tmp_path)
  _write_split(d, "train", _images(5), np.arange(5, dtype=np.uint8), gz=True)
  _write_split(d, "test", _images(3), np.arange(2, dtype=np.uint8), gz=False)
  x, y = idx.load_idx_split(d, "train", 10)
  assert x.shape == (5, 4, 3) and y.tolist() == [0, 1, 2, 3, 4]
  with pytest.raises(idx.DataError, match="3 images but .* 2 labels"):
    idx.load_idx_split(d, "test", 10)


def test_load_split_missing_file_names_path_and_hint(tmp_path):
  with pytest.raises(idx.DataError) as e:
    idx.load_idx_split(str(tmp_path), "train", 10, hint="apt-get install foo")
  msg = str(e.value)
  assert os.path.join(str(tmp_path), "train-images-idx3-ubyte") in msg
  assert "apt-get install foo" in msg


def test_data_error_is_value_error():
  assert issubclass(idx.DataError, ValueError)
