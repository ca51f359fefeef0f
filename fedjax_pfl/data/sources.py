"""Raw (centralized) image classification datasets as normalized numpy arrays.

:func:`load_raw` returns a :class:`RawDataset` with the official train/test
splits. Sources:

* ``"sklearn"`` -- ``digits``: scikit-learn's bundled 8x8 digits (1,797
  images, values 0..16, no official split: everything is train).
* ``"idx"`` -- ``fashion_mnist`` / ``mnist`` from local IDX files (see
  :mod:`fedjax_pfl.data.idx`). The Debian package ``dataset-fashion-mnist``
  installs Fashion-MNIST in ``/usr/share/datasets/fashion-mnist``. Debian has
  no MNIST package; ``/usr/share/datasets/mnist`` is used by analogy (put the
  four standard files there or pass ``data_dir``).
* ``"tfds"`` -- every name in :data:`KNOWN_DATASETS` except ``digits``, via
  ``tfds.data_source`` (prepared ArrayRecord data; no network access here).
* ``"auto"`` -- ``digits`` -> sklearn; ``fashion_mnist``/``mnist`` -> idx if
  any of the four files is in ``data_dir`` (or the default dir; a missing one
  is then named), else tfds; others -> tfds.

Preprocessing (identical for every source): pixels are scaled to ``[0, 1]``
(divided by 255, or by 16 for digits), then normalized per channel according
to ``normalization`` (:data:`NORMALIZATIONS`):

* ``"train_stats"`` (default): standardized with the mean and standard
  deviation computed on the **train split only**; the same statistics are
  applied to the test split. Channels with zero std are only centred.
* ``"flbench"``: ``(x - mean) / std`` with FL-bench's fixed per-dataset
  constants (:data:`FLBENCH_STATS`, FL-bench ``src/utils/constants.py``
  ``DATA_MEAN`` / ``DATA_STD``; reference-protocols spec §1 "Input scaling").
* ``"none"``: raw ``[0, 1]`` pixels, as Fling (FedCAC / FedPURIN) feeds them.

Output images are float32 ``[n, H, W, C]`` (C=1 for grayscale).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from fedjax_pfl.data import tfds_source
from fedjax_pfl.data.idx import IDX_FILES, DataError, find_idx_file, load_idx_split

__all__ = [
  "DEFAULT_IDX_DIRS",
  "KNOWN_DATASETS",
  "NUM_CLASSES",
  "SOURCES",
  "FLBENCH_STATS",
  "NORMALIZATIONS",
  "DataError",
  "RawDataset",
  "load_raw",
  "normalize",
  "resolve_source",
  "standardize",
]

KNOWN_DATASETS: tuple[str, ...] = ("digits", *tfds_source.TFDS_DATASETS)
NUM_CLASSES: dict[str, int] = {
  "digits": 10,
  **{k: v[0] for k, v in tfds_source.TFDS_DATASETS.items()},
}
SOURCES: tuple[str, ...] = ("auto", "sklearn", "idx", "tfds")
NORMALIZATIONS: tuple[str, ...] = ("train_stats", "flbench", "none")

# FL-bench's fixed per-channel (mean, std) of [0, 1] pixels, by our dataset
# names (FL-bench: mnist, fmnist, emnist, cifar10, cifar100, svhn).
FLBENCH_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
  "mnist": ((0.1307,), (0.3015,)),
  "fashion_mnist": ((0.286,), (0.3205,)),
  "emnist/byclass": ((0.1736,), (0.3248,)),
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2009, 0.1984, 0.2023)),
  "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1201, 0.1231, 0.1052)),
}

# Where `source="idx"` looks when no data_dir is given.
DEFAULT_IDX_DIRS: dict[str, str] = {
  "fashion_mnist": "/usr/share/datasets/fashion-mnist",  # Debian: dataset-fashion-mnist
  "mnist": "/usr/share/datasets/mnist",  # no Debian package; same layout by convention
}
_IDX_HINTS: dict[str, str] = {
  "fashion_mnist": "apt-get install -y dataset-fashion-mnist or pass --data-dir DIR",
  "mnist": (
    "put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in "
    "/usr/share/datasets/mnist or pass --data-dir DIR"
  ),
}


class RawDataset(NamedTuple):
  """A centralized dataset with its official train/test split.

  Attributes:
    train_x: ``[n_train, H, W, C]`` float32, normalized (see module doc).
    train_y: ``[n_train]`` int32 in ``[0, num_classes)``.
    test_x: ``[n_test, H, W, C]`` float32; ``n_test`` may be 0 (digits).
    test_y: ``[n_test]`` int32.
    num_classes: number of classes.
    name: dataset name (one of :data:`KNOWN_DATASETS`).
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  name: str


def _channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean/std of ``[n, H, W, C]`` data in float64, chunked (low memory)."""
  c = x.shape[-1]
  count = x.size // c
  total = np.zeros(c, np.float64)
  for s in range(0, x.shape[0], chunk):
    total += x[s : s + chunk].sum(axis=(0, 1, 2), dtype=np.float64)
  mean = total / count
  sq = np.zeros(c, np.float64)
  for s in range(0, x.shape[0], chunk):
    sq += np.square(x[s : s + chunk] - mean).sum(axis=(0, 1, 2))
  return mean, np.sqrt(sq / count)


def standardize(
  train_x: np.ndarray, test_x: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
  """Scales to [0, 1] and standardizes per channel with train-split statistics.

  Args:
    train_x: ``[n, H, W, C]`` raw pixels (any numeric dtype), ``n >= 1``.
    test_x: ``[m, H, W, C]`` raw pixels, ``m >= 0``.
    scale: maximum raw pixel value (255 for uint8 images, 16 for digits).

  Returns:
    ``(train, test)`` float32 arrays of the same shapes.

  Raises:
    DataError: empty train split or mismatched trailing shapes.
  """
  if train_x.ndim != 4 or train_x.shape[0] == 0:
    raise DataError(f"need a non-empty [n, H, W, C] train split, got shape {train_x.shape}")
  if test_x.shape[1:] != train_x.shape[1:]:
    raise DataError(f"train/test image shapes differ: {train_x.shape[1:]} vs {test_x.shape[1:]}")
  out = []
  for a in (train_x, test_x):
    a = a.astype(np.float32)
    a /= np.float32(scale)
    out.append(a)
  mean, std = _channel_stats(out[0])
  std = np.where(std > 1e-8, std, 1.0)
  for a in out:
    a -= mean.astype(np.float32)
    a /= std.astype(np.float32)
  return out[0], out[1]


def normalize(
  train_x: np.ndarray, test_x: np.ndarray, scale: float, normalization: str = "train_stats",
  name: str = "",
) -> tuple[np.ndarray, np.ndarray]:
  """Scales raw pixels to ``[0, 1]`` and normalizes them per channel.

  Args:
    train_x: ``[n, H, W, C]`` raw pixels, ``n >= 1``.
    test_x: ``[m, H, W, C]`` raw pixels, ``m >= 0``.
    scale: maximum raw pixel value (255, or 16 for digits).
    normalization: ``"train_stats"`` (:func:`standardize`), ``"flbench"``
      (FL-bench's fixed constants of dataset ``name``, :data:`FLBENCH_STATS`)
      or ``"none"`` (``x / scale``, Fling's raw ``[0, 1]`` inputs).
    name: the dataset (needed for ``"flbench"``).

  Returns:
    ``(train, test)`` float32 arrays of the same shapes.

  Raises:
    DataError: unknown ``normalization``, no FL-bench constants for ``name``,
      a channel count that differs from the constants', or the errors of
      :func:`standardize`.
  """
  if normalization not in NORMALIZATIONS:
    raise DataError(f"data.normalization={normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")
  if normalization == "train_stats":
    return standardize(train_x, test_x, scale)
  if normalization == "flbench" and name not in FLBENCH_STATS:
    raise DataError(f"data.normalization='flbench' has no constants for dataset {name!r}; "
                    f"allowed: {', '.join(FLBENCH_STATS)}")
  out = [a.astype(np.float32) / np.float32(scale) for a in (train_x, test_x)]
  if normalization == "flbench":
    mean, std = (np.asarray(v, np.float32) for v in FLBENCH_STATS[name])
    if train_x.shape[-1] != mean.size:
      raise DataError(f"{name!r} images have {train_x.shape[-1]} channels but FL-bench's "
                      f"constants have {mean.size}")
    out = [(a - mean) / std for a in out]
  return out[0], out[1]


def _idx_dir(name: str, data_dir: str | None) -> str:
  return data_dir if data_dir is not None else DEFAULT_IDX_DIRS[name]


def _idx_files_present(directory: str) -> bool:
  """True when ``directory`` holds any of the four IDX files (then ``auto``
  reads IDX, and a missing one is named instead of falling back to TFDS)."""
  stems = [s for pair in IDX_FILES.values() for s in pair]
  return any(find_idx_file(directory, s) is not None for s in stems)


def resolve_source(name: str, source: str = "auto", data_dir: str | None = None) -> str:
  """Returns the concrete source (``"sklearn"``, ``"idx"`` or ``"tfds"``) for a dataset.

  Raises:
    DataError: unknown dataset name or source, or a source the dataset lacks.
  """
  if name not in KNOWN_DATASETS:
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
  if source not in SOURCES:
    raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
  if source == "auto":
    if name == "digits":
      return "sklearn"
    if name in DEFAULT_IDX_DIRS and _idx_files_present(_idx_dir(name, data_dir)):
      return "idx"
    return "tfds"
  allowed = {"digits": ("sklearn",)}.get(
    name, ("idx", "tfds") if name in DEFAULT_IDX_DIRS else ("tfds",)
  )
  if source not in allowed:
    raise DataError(f"dataset {name!r} cannot be loaded from source {source!r}; use {allowed}")
  return source


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

  bunch = load_digits()
  x = bunch.images.astype(np.float32)[..., None]  # [1797, 8, 8, 1], values 0..16
  y = bunch.target.astype(np.int32)
  return x, y, np.zeros((0, *x.shape[1:]), np.float32), np.zeros((0,), np.int32), 16.0


def _load_idx(name: str, data_dir: str | None):
  directory = _idx_dir(name, data_dir)
  hint = _IDX_HINTS[name]
  if not os.path.isdir(directory):
    raise DataError(f"IDX directory {directory} for {name!r} does not exist; {hint}")
  num_classes = NUM_CLASSES[name]
  tr_x, tr_y = load_idx_split(directory, "train", num_classes, hint=hint)
  te_x, te_y = load_idx_split(directory, "test", num_classes, hint=hint)
  if tr_x.shape[1:] != te_x.shape[1:]:
    raise DataError(
      f"{directory}: train images are {tr_x.shape[1:]} but test images are {te_x.shape[1:]}"
    )
  return tr_x[..., None], tr_y, te_x[..., None], te_y, 255.0


def load_raw(
  name: str, *, data_dir: str | None = None, source: str = "auto", download: bool = False,
  normalization: str = "train_stats",
) -> RawDataset:
  """Loads a dataset's official train/test split, scaled and normalized.

  Args:
    name: one of :data:`KNOWN_DATASETS`.
    data_dir: for ``idx`` the folder holding the four IDX files (default
      :data:`DEFAULT_IDX_DIRS`); for ``tfds`` the TFDS data dir. Ignored for digits.
    source: ``"auto"``, ``"sklearn"``, ``"idx"`` or ``"tfds"`` (see module doc).
    download: with ``tfds``, allow TFDS to download missing data (needs network).
    normalization: one of :data:`NORMALIZATIONS` (module doc; default: train
      statistics).

  Returns:
    A :class:`RawDataset`; images ``[n, H, W, C]`` float32 normalized as
    asked, labels int32.

  Raises:
    DataError: unknown name/source, missing or malformed files (the message
      names the path and how to fix it), or tensorflow_datasets not installed.
  """
  resolved = resolve_source(name, source, data_dir)
  if normalization not in NORMALIZATIONS:
    raise DataError(f"data.normalization={normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")
  if resolved == "sklearn":
    tr_x, tr_y, te_x, te_y, scale = _load_digits()
  elif resolved == "idx":
    tr_x, tr_y, te_x, te_y, scale = _load_idx(name, data_dir)
  else:
    try:
      tr_x, tr_y, te_x, te_y = tfds_source.load_tfds(name, data_dir=data_dir, download=download)
    except DataError as e:
      if source == "auto" and name in DEFAULT_IDX_DIRS:
        raise DataError(
          f"no IDX files for {name!r} in {_idx_dir(name, data_dir)} "
          f"({_IDX_HINTS[name]}), and the TFDS fallback failed: {e}"
        ) from e
      raise
    scale = 255.0
  train_x, test_x = normalize(tr_x, te_x, scale, normalization, name)
  return RawDataset(
    train_x=train_x,
    train_y=np.asarray(tr_y, np.int32),
    test_x=test_x,
    test_y=np.asarray(te_y, np.int32),
    num_classes=NUM_CLASSES[name],
    name=name,
  )
