"""Strict reader (and tiny writer) for the IDX format used by MNIST-style data.

An IDX file is a big-endian header followed by raw row-major data:

* 4-byte magic number ``0x0000TTNN``: two zero bytes, a type code ``TT``
  (``0x08`` = unsigned byte) and the number of dimensions ``NN``;
* ``NN`` 4-byte unsigned dimension sizes;
* ``prod(dims)`` bytes of data.

Only the two layouts used by (Fashion-)MNIST are accepted: uint8 images
(magic ``0x00000803``, dims ``[n, rows, cols]``) and uint8 labels (magic
``0x00000801``, dims ``[n]``). Files may be gzip-compressed (detected from the
content, not the file name). Every problem raises :class:`DataError` naming
the file and what is wrong; nothing is silently truncated or padded.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

__all__ = [
  "IDX_FILES",
  "IMAGES_MAGIC",
  "LABELS_MAGIC",
  "DataError",
  "find_idx_file",
  "load_idx_split",
  "read_idx_images",
  "read_idx_labels",
  "write_idx",
]

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"

# (images, labels) file stems per split; each may also exist with a `.gz` suffix.
IDX_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(ValueError):
  """A data set is missing, malformed or inconsistent (message says which and why)."""


def find_idx_file(directory: str, stem: str) -> str | None:
  """Returns the path of ``stem`` or ``stem.gz`` inside ``directory``, or None.

  The uncompressed file wins when both exist.
  """
  for candidate in (stem, stem + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  return None


def _read_bytes(path: str) -> bytes:
  """Reads a whole file, transparently gunzipping it; errors become DataError."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError as e:
    raise DataError(f"IDX file not found: {path}") from e
  except OSError as e:
    raise DataError(f"cannot read IDX file {path}: {e}") from e
  if raw[:2] == _GZIP_MAGIC:
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from e
  return raw


def _parse(path: str, expected_magic: int, kind: str) -> tuple[tuple[int, ...], np.ndarray]:
  """Parses an IDX payload, validating magic number and exact length.

  Returns:
    ``(dims, data)`` where ``data`` is a flat uint8 array of ``prod(dims)`` bytes.

  Raises:
    DataError: bad magic, short header, or payload length != prod(dims).
  """
  buf = _read_bytes(path)
  ndim = expected_magic & 0xFF
  header_len = 4 + 4 * ndim
  if len(buf) < 4:
    raise DataError(f"{path}: file is {len(buf)} bytes, too short for an IDX header")
  (magic,) = struct.unpack(">I", buf[:4])
  if magic != expected_magic:
    raise DataError(
      f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
      f"({kind}: uint8, {ndim} dims); is this the right file?"
    )
  if len(buf) < header_len:
    raise DataError(
      f"{path}: truncated header ({len(buf)} bytes, need {header_len} for {ndim} dims)"
    )
  dims = struct.unpack(f">{ndim}I", buf[4:header_len])
  expected = header_len + int(np.prod(dims, dtype=np.int64))
  if len(buf) != expected:
    what = "truncated" if len(buf) < expected else "has trailing bytes"
    raise DataError(
      f"{path}: {what}: {len(buf)} bytes, expected exactly {expected} "
      f"(header {header_len} + data for dims {list(dims)})"
    )
  return dims, np.frombuffer(buf, dtype=np.uint8, offset=header_len)


def read_idx_images(path: str) -> np.ndarray:
  """Reads an IDX3 uint8 image file.

  Args:
    path: file path, gzip-compressed or raw.

  Returns:
    ``[n, rows, cols]`` uint8 array (a fresh, writable copy).

  Raises:
    DataError: missing/unreadable file, wrong magic number, zero-sized
      rows/cols, or a payload that is not exactly ``n * rows * cols`` bytes.
  """
  dims, data = _parse(path, IMAGES_MAGIC, "images")
  n, rows, cols = dims
  if rows == 0 or cols == 0:
    raise DataError(f"{path}: invalid image size {rows}x{cols}")
  return data.reshape(n, rows, cols).copy()


def read_idx_labels(path: str, num_classes: int | None = None) -> np.ndarray:
  """Reads an IDX1 uint8 label file.

  Args:
    path: file path, gzip-compressed or raw.
    num_classes: if given, every label must be ``< num_classes``.

  Returns:
    ``[n]`` int32 array.

  Raises:
    DataError: missing/unreadable file, wrong magic number, wrong length, or
      a label outside ``[0, num_classes)``.
  """
  (n,), data = _parse(path, LABELS_MAGIC, "labels")
  labels = data.astype(np.int32)
  if num_classes is not None and n:
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
      raise DataError(
        f"{path}: label {int(labels[bad[0]])} at position {int(bad[0])} is out of "
        f"range [0, {num_classes}) ({bad.size} bad labels in total)"
      )
  return labels


def load_idx_split(
  directory: str, split: str, num_classes: int, *, hint: str = ""
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split (``"train"`` or ``"test"``) of an MNIST-style IDX directory.

  Args:
    directory: folder holding the four standard IDX files (optionally ``.gz``).
    split: ``"train"`` (``train-*``) or ``"test"`` (``t10k-*``).
    num_classes: labels must lie in ``[0, num_classes)``.
    hint: appended to the missing-file message (how to obtain the files).

  Returns:
    ``(images [n, rows, cols] uint8, labels [n] int32)``.

  Raises:
    DataError: a file is missing or malformed, or image/label counts differ.
    ValueError: unknown ``split``.
  """
  if split not in IDX_FILES:
    raise ValueError(f"split must be one of {sorted(IDX_FILES)}, got {split!r}")
  paths = []
  for stem in IDX_FILES[split]:
    path = find_idx_file(directory, stem)
    if path is None:
      missing = os.path.join(directory, stem)
      raise DataError(f"missing IDX file {missing}[.gz]" + (f"; {hint}" if hint else ""))
    paths.append(path)
  images = read_idx_images(paths[0])
  labels = read_idx_labels(paths[1], num_classes)
  if images.shape[0] != labels.shape[0]:
    raise DataError(
      f"count mismatch in {directory!r} ({split}): {paths[0]} has {images.shape[0]} "
      f"images but {paths[1]} has {labels.shape[0]} labels"
    )
  return images, labels


def write_idx(path: str, array: np.ndarray, *, compress: bool | None = None) -> None:
  """Writes a uint8 array as an IDX file (handy for tests and fixtures).

  Args:
    path: output path.
    array: uint8 array with 1 dimension (labels) or 3 (images); any shape with
      1..255 dims is written, with magic ``0x000008NN``.
    compress: gzip the output; defaults to ``path.endswith(".gz")``.

  Raises:
    ValueError: ``array`` is not uint8 or has 0 or > 255 dimensions.
  """
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"write_idx needs a uint8 array, got {array.dtype}")
  if not 1 <= array.ndim <= 255:
    raise ValueError(f"write_idx needs 1..255 dims, got {array.ndim}")
  payload = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
  payload += np.ascontiguousarray(array).tobytes()
  if compress is None:
    compress = path.endswith(".gz")
  with open(path, "wb") as f:
    f.write(gzip.compress(payload) if compress else payload)
