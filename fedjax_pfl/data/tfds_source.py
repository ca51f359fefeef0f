"""Reading TFDS datasets into numpy via ``tfds.data_source`` (ArrayRecord).

This is the only module of the package that touches ``tensorflow_datasets``,
and it imports it lazily inside functions, so the rest of ``fedjax_pfl``
works without the optional ``[tfds]`` extra. ``tfds.data_source`` gives random
access to prepared ArrayRecord files and decodes examples with numpy, so
TensorFlow itself is not needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedjax_pfl.data.idx import DataError

__all__ = ["TFDS_DATASETS", "load_tfds", "tfds_available"]

# name -> (num_classes, image shape [H, W, C]) of the datasets we support.
TFDS_DATASETS: dict[str, tuple[int, tuple[int, int, int]]] = {
  "fashion_mnist": (10, (28, 28, 1)),
  "mnist": (10, (28, 28, 1)),
  "cifar10": (10, (32, 32, 3)),
  "cifar100": (100, (32, 32, 3)),
  "emnist/byclass": (62, (28, 28, 1)),
  "svhn_cropped": (10, (32, 32, 3)),
}

_INSTALL_HINT = (
  "install the optional extra: pip install 'fedjax-pfl[tfds]' "
  "(tensorflow-datasets and array_record)"
)


def _import_tfds() -> Any:
  """Imports tensorflow_datasets or raises DataError with the install hint."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"tensorflow_datasets is not installed; {_INSTALL_HINT}") from e
  return tfds


def tfds_available() -> bool:
  """Whether ``tensorflow_datasets`` can be imported."""
  try:
    _import_tfds()
  except DataError:
    return False
  return True


def _read_split(
  tfds: Any, name: str, split: str, data_dir: str | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
  """Reads every record of one split into ``(images uint8, labels int64)``."""
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except Exception as e:  # tfds raises assorted types for "not prepared".
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
    raise DataError(
      f"cannot open TFDS dataset {name!r} split {split!r} in {where}. It must be "
      f"prepared there in ArrayRecord format (e.g. `tfds build {name} "
      "--file_format=array_record --data_dir DIR` on a machine with network access, "
      "then pass that folder with --data-dir DIR, i.e. data.data_dir; the CLI never "
      f"downloads). TFDS said: {type(e).__name__}: {e}"
    ) from e
  n = len(source)
  _, shape = TFDS_DATASETS[name]
  images = np.empty((n, *shape), dtype=np.uint8)
  labels = np.empty((n,), dtype=np.int64)
  for i in range(n):
    example = source[i]
    image = np.asarray(example["image"])
    if image.shape != shape:
      raise DataError(
        f"TFDS {name!r}/{split} record {i}: image shape {image.shape}, expected {shape}"
      )
    images[i] = image
    labels[i] = int(np.asarray(example["label"]))
  return images, labels


def load_tfds(
  name: str, *, data_dir: str | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Loads the official train and test splits of a supported TFDS dataset.

  Args:
    name: one of :data:`TFDS_DATASETS` (e.g. ``"cifar10"``, ``"emnist/byclass"``).
    data_dir: TFDS data directory; ``None`` uses TFDS's default.
    download: let TFDS download and prepare missing data (needs network).

  Returns:
    ``(train_x [n, H, W, C] uint8, train_y [n] int32, test_x [m, H, W, C] uint8,
    test_y [m] int32)``, raw pixel values 0..255.

  Raises:
    DataError: tensorflow_datasets missing, dataset not prepared/readable,
      unexpected image shape, or a label outside ``[0, num_classes)``.
    ValueError: ``name`` is not in :data:`TFDS_DATASETS`.
  """
  if name not in TFDS_DATASETS:
    raise ValueError(f"unsupported TFDS dataset {name!r}; known: {sorted(TFDS_DATASETS)}")
  tfds = _import_tfds()
  num_classes, _ = TFDS_DATASETS[name]
  out = []
  for split in ("train", "test"):
    images, labels = _read_split(tfds, name, split, data_dir, download)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise DataError(
        f"TFDS {name!r}/{split}: labels span [{labels.min()}, {labels.max()}], "
        f"expected [0, {num_classes})"
      )
    out += [images, labels.astype(np.int32)]
  return tuple(out)  # type: ignore[return-value]
