"""Datasets for fedjax_pfl: raw loading, client partitions and padded federated arrays.

Typical use::

  from fedjax_pfl import data
  fd = data.load_federated("digits", num_clients=20, alpha=0.1, seed=42)
  fd.x[fd.train_idx[0, :fd.train_counts[0]]]  # client 0's local train images

Everything here is host-side numpy. ``tensorflow_datasets`` is imported lazily
(only for TFDS-backed datasets), so the package works without it.
"""

from fedjax_pfl.data.federated import (
  PARTITIONS,
  FederatedData,
  load_federated,
  pad_indices,
)
from fedjax_pfl.data.idx import DataError, read_idx_images, read_idx_labels, write_idx
from fedjax_pfl.data.partition import (
  PartitionError,
  dirichlet_partition,
  flbench_dirichlet,
  iid_partition,
  shard_partition,
  split_train_test,
)
from fedjax_pfl.data.sources import (
  DEFAULT_IDX_DIRS,
  FLBENCH_STATS,
  KNOWN_DATASETS,
  NORMALIZATIONS,
  NUM_CLASSES,
  SOURCES,
  RawDataset,
  load_raw,
  normalize,
  standardize,
)
from fedjax_pfl.data.streams import CLIENT_STREAMS, flbench_client_stream

__all__ = [
  "CLIENT_STREAMS",
  "DEFAULT_IDX_DIRS",
  "FLBENCH_STATS",
  "KNOWN_DATASETS",
  "NORMALIZATIONS",
  "NUM_CLASSES",
  "PARTITIONS",
  "SOURCES",
  "DataError",
  "FederatedData",
  "PartitionError",
  "RawDataset",
  "dirichlet_partition",
  "flbench_dirichlet",
  "flbench_client_stream",
  "iid_partition",
  "load_federated",
  "load_raw",
  "normalize",
  "pad_indices",
  "read_idx_images",
  "read_idx_labels",
  "shard_partition",
  "split_train_test",
  "standardize",
  "write_idx",
]
