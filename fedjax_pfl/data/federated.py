"""Federated datasets as padded index arrays over one pooled example array.

Examples live once in ``x``/``y``; each client is a row of indices into them,
padded to a common width so that all clients can be processed in one
vectorized (``vmap``-friendly) step. ``*_counts`` tell how many entries of
each row are real; padding entries are index 0 and must be masked out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from fedjax_pfl.data import partition as partition_lib
from fedjax_pfl.data.idx import DataError
from fedjax_pfl.data.sources import KNOWN_DATASETS, load_raw

__all__ = ["PARTITIONS", "FederatedData", "PartitionOptions", "load_federated", "pad_indices"]


class FederatedData(NamedTuple):
  """Pooled examples plus per-client padded index rows.

  Attributes:
    x: ``[T, H, W, C]`` float32 pooled examples (resident once).
    y: ``[T]`` int32 labels.
    train_idx: ``[N, M_train]`` int32 indices into ``x``; row ``i`` is valid
      for its first ``train_counts[i]`` entries and 0 beyond.
    train_counts: ``[N]`` int32.
    test_idx: ``[N, M_test]`` int32, padded like ``train_idx``.
    test_counts: ``[N]`` int32.
    num_classes: number of classes.
    name: dataset name.
  """

  x: np.ndarray
  y: np.ndarray
  train_idx: np.ndarray
  train_counts: np.ndarray
  test_idx: np.ndarray
  test_counts: np.ndarray
  num_classes: int
  name: str

  @property
  def num_clients(self) -> int:
    """Number of clients ``N``."""
    return int(self.train_idx.shape[0])

  @property
  def input_shape(self) -> tuple[int, ...]:
    """Shape of one example, ``(H, W, C)``."""
    return tuple(int(d) for d in self.x.shape[1:])


def pad_indices(lists: Sequence[np.ndarray], *, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Stacks ragged index lists into a zero-padded matrix.

  Args:
    lists: ``N`` 1-D arrays of non-negative integer indices (< 2**31).
    multiple: the width ``M`` is the longest length rounded up to a multiple
      of this (``>= 1``); ``M >= 1`` even when every list is empty.

  Returns:
    ``(idx [N, M] int32, counts [N] int32)``; ``idx[i, :counts[i]] == lists[i]``
    and the rest of each row is 0.

  Raises:
    ValueError: ``multiple < 1``, a list that is not 1-D integer, or indices
      that are negative or do not fit in int32.
  """
  if not isinstance(multiple, (int, np.integer)) or multiple < 1:
    raise ValueError(f"multiple must be an integer >= 1, got {multiple!r}")
  arrays = []
  for i, a in enumerate(lists):
    a = np.asarray(a)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
      raise ValueError(f"lists[{i}] must be a 1-D integer array, got {a.dtype} {a.shape}")
    if a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
      raise ValueError(f"lists[{i}] has indices outside [0, 2**31): [{a.min()}, {a.max()}]")
    arrays.append(a)
  counts = np.array([a.size for a in arrays], dtype=np.int32)
  longest = max(int(counts.max()) if counts.size else 0, 1)
  width = -(-longest // multiple) * multiple
  idx = np.zeros((len(arrays), width), dtype=np.int32)
  for i, a in enumerate(arrays):
    idx[i, : a.size] = a
  return idx, counts


class PartitionOptions(NamedTuple):
  """Knobs shared by the partition strategies (each uses the ones it needs)."""

  num_clients: int
  alpha: float
  shards_per_client: int
  min_samples_per_client: int
  max_retries: int
  test_ratio: float
  train_per_client: int = 500
  test_per_client: int = 100
  seed: int = 0


# (pooled labels [T], is_official_test [T] bool, options, rng) -> (train_lists, test_lists)
PartitionFn = Callable[
  [np.ndarray, np.ndarray, PartitionOptions, np.random.Generator],
  tuple[list[np.ndarray], list[np.ndarray]],
]


def _pooled(
  assign: Callable[[np.ndarray, PartitionOptions, np.random.Generator], list],
) -> PartitionFn:
  """FL-bench style: partition the pool, then split each client into train/test."""

  def fn(y, is_official_test, opts, rng):
    del is_official_test  # Pooled strategies ignore the official split.
    clients = assign(y, opts, rng)
    return partition_lib.split_train_test(clients, opts.test_ratio, rng=rng)

  return fn


def _fling(y, is_official_test, opts, rng):
  """Fling / FedCAC / FedPURIN: ``train_per_client`` examples per client from
  the official train split and ``test_per_client`` from the official test
  split, both with ``RandomState(seed)`` (same class mix ``q``); see
  :func:`~fedjax_pfl.data.partition.fling_dirichlet_sampling`."""
  del rng  # Fling seeds its own RandomState with the data seed.
  train_pos, test_pos = np.flatnonzero(~is_official_test), np.flatnonzero(is_official_test)
  if not train_pos.size or not test_pos.size:
    raise partition_lib.PartitionError(
      "partition='fling' samples clients from the official train AND test splits; this "
      "dataset has no official test split; allowed: a dataset with one (e.g. fashion_mnist)")
  classes = np.unique(y)
  lists = []
  for pos, size in ((train_pos, opts.train_per_client), (test_pos, opts.test_per_client)):
    clients = partition_lib.fling_dirichlet_sampling(
      y[pos], opts.num_clients, opts.alpha, size, seed=opts.seed, classes=classes)
    lists.append([pos[c] for c in clients])
  return lists[0], lists[1]


def _flbench(y, is_official_test, opts, rng):
  """FL-bench's own Dirichlet split (``np.random.RandomState(seed)``, in-place
  class shuffles, per-client split); see
  :func:`~fedjax_pfl.data.partition.flbench_dirichlet`."""
  del is_official_test, rng  # Pooled; FL-bench seeds its own legacy generator.
  return partition_lib.flbench_dirichlet(
    y, opts.num_clients, opts.alpha, seed=opts.seed, test_ratio=opts.test_ratio,
    min_samples=opts.min_samples_per_client, max_retries=opts.max_retries)


# Registry of partition strategies. Each sees the pooled labels and a mask of
# which pooled examples came from the official test split ("fling" keeps the
# official splits apart).
PARTITIONS: dict[str, PartitionFn] = {
  "dirichlet": _pooled(
    lambda y, o, rng: partition_lib.dirichlet_partition(
      y,
      o.num_clients,
      o.alpha,
      min_samples_per_client=o.min_samples_per_client,
      max_retries=o.max_retries,
      rng=rng,
    )
  ),
  "iid": _pooled(lambda y, o, rng: partition_lib.iid_partition(y.size, o.num_clients, rng=rng)),
  "shard": _pooled(
    lambda y, o, rng: partition_lib.shard_partition(y, o.num_clients, o.shards_per_client, rng=rng)
  ),
  "fling": _fling,
  "flbench": _flbench,
}


def _is_int(v: object) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _validate(dataset, partition, opts: PartitionOptions, seed, max_examples) -> None:
  if dataset not in KNOWN_DATASETS:
    raise DataError(f"unknown dataset {dataset!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
  if partition not in PARTITIONS:
    raise ValueError(f"unknown partition {partition!r}; allowed: {', '.join(PARTITIONS)}")
  if not _is_int(opts.num_clients) or opts.num_clients < 1:
    raise ValueError(f"num_clients must be an integer >= 1, got {opts.num_clients!r}")
  if not (
    isinstance(opts.alpha, (int, float, np.integer, np.floating)) and 0 < opts.alpha < float("inf")
  ):
    raise ValueError(f"alpha must be a finite number > 0, got {opts.alpha!r}")
  if not _is_int(opts.shards_per_client) or opts.shards_per_client < 1:
    raise ValueError(f"shards_per_client must be an integer >= 1, got {opts.shards_per_client!r}")
  if not _is_int(opts.min_samples_per_client) or opts.min_samples_per_client < 0:
    raise ValueError(
      f"min_samples_per_client must be an integer >= 0, got {opts.min_samples_per_client!r}"
    )
  if not _is_int(opts.max_retries) or opts.max_retries < 1:
    raise ValueError(f"max_retries must be an integer >= 1, got {opts.max_retries!r}")
  if not (
    isinstance(opts.test_ratio, (int, float, np.integer, np.floating)) and 0 <= opts.test_ratio < 1
  ):
    raise ValueError(f"test_ratio must be in [0, 1), got {opts.test_ratio!r}")
  for field in ("train_per_client", "test_per_client"):
    value = getattr(opts, field)
    if not _is_int(value) or value < 1:
      raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
  if not _is_int(seed) or seed < 0:
    raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
  if max_examples is not None and (not _is_int(max_examples) or max_examples < opts.num_clients):
    raise ValueError(
      f"max_examples must be None or an integer >= num_clients={opts.num_clients}, "
      f"got {max_examples!r}"
    )


def load_federated(
  dataset: str,
  *,
  data_dir: str | None = None,
  source: str = "auto",
  partition: str = "dirichlet",
  num_clients: int = 20,
  alpha: float = 0.1,
  shards_per_client: int = 2,
  min_samples_per_client: int = 10,
  max_retries: int = 1000,
  test_ratio: float = 0.25,
  seed: int = 42,
  max_examples: int | None = None,
  download: bool = False,
  train_per_client: int = 500,
  test_per_client: int = 100,
  normalization: str = "train_stats",
) -> FederatedData:
  """Loads a dataset and partitions it across clients (FL-bench protocol).

  Steps: :func:`~fedjax_pfl.data.sources.load_raw`; pool the official train
  and test splits (train first); optionally keep a random subset of
  ``max_examples`` pooled examples (seeded by ``seed``, original order kept);
  partition with ``np.random.default_rng(seed)`` (``"flbench"``:
  ``np.random.RandomState(seed)``); split each client's
  examples into local train/test with ``test_ratio``; pad the index rows.

  Args:
    dataset: one of ``KNOWN_DATASETS``.
    data_dir, source, download: passed to ``load_raw``.
    partition: a key of :data:`PARTITIONS` (``"dirichlet"``, ``"iid"``,
      ``"shard"``, ``"fling"``, ``"flbench"``). ``"flbench"`` is FL-bench's
      split bit for bit (numpy's legacy ``RandomState(seed)``; same
      ``alpha``, ``min_samples_per_client``, ``max_retries``, ``test_ratio``
      meaning as ``"dirichlet"``, which draws from ``default_rng(seed)``).
      ``"fling"`` ignores ``test_ratio``,
      ``min_samples_per_client`` and ``max_retries``: it draws
      ``train_per_client`` train examples per client from the official train
      split and ``test_per_client`` from the official test split with
      ``np.random.RandomState(seed)`` (clients may share examples).
    num_clients: ``N >= 1`` (and ``<=`` the number of examples).
    alpha: Dirichlet concentration ``> 0`` (``"dirichlet"``, ``"flbench"``, ``"fling"``).
    shards_per_client: ``>= 1`` (``"shard"`` only).
    min_samples_per_client: ``>= 0`` (``"dirichlet"`` only).
    max_retries: ``>= 1`` Dirichlet attempts.
    test_ratio: per-client test fraction in ``[0, 1)``.
    seed: ``>= 0``; same arguments and seed give identical results.
    max_examples: ``None`` or ``>= num_clients``; caps the pool size.
    train_per_client, test_per_client: ``>= 1`` (``"fling"`` only; 500, 100).
    normalization: input scaling passed to ``load_raw`` (``"train_stats"``,
      ``"flbench"`` or ``"none"``; see :mod:`fedjax_pfl.data.sources`).

  Returns:
    A :class:`FederatedData`.

  Raises:
    ValueError: an argument is out of range (checked before loading).
    DataError: unknown dataset or a loading problem.
    PartitionError: the Dirichlet partition cannot meet its constraints.
  """
  opts = PartitionOptions(
    num_clients=num_clients,
    alpha=alpha,
    shards_per_client=shards_per_client,
    min_samples_per_client=min_samples_per_client,
    max_retries=max_retries,
    test_ratio=test_ratio,
    train_per_client=train_per_client,
    test_per_client=test_per_client,
    seed=seed,
  )
  _validate(dataset, partition, opts, seed, max_examples)
  raw = load_raw(dataset, data_dir=data_dir, source=source, download=download,
                 normalization=normalization)
  x = np.concatenate([raw.train_x, raw.test_x]) if raw.test_x.shape[0] else raw.train_x
  y = np.concatenate([raw.train_y, raw.test_y]).astype(np.int32)
  is_test = np.arange(y.size) >= raw.train_y.size
  if max_examples is not None and max_examples < y.size:
    keep = np.sort(np.random.default_rng([seed, 1]).choice(y.size, max_examples, replace=False))
    x, y, is_test = x[keep], y[keep], is_test[keep]
  limit, why = y.size, f"{y.size} examples of {dataset!r}"
  if partition == "dirichlet" and min_samples_per_client > 0:
    # Every client needs min_samples_per_client examples.
    limit = y.size // min_samples_per_client
    why += f" / data.min_samples_per_client={min_samples_per_client}"
  if num_clients > limit:
    raise partition_lib.PartitionError(
      f"data.num_clients={num_clients} is invalid; allowed: 1..{limit} ({why})")
  rng = np.random.default_rng(seed)
  train_lists, test_lists = PARTITIONS[partition](y, is_test, opts, rng)
  train_idx, train_counts = pad_indices(train_lists)
  test_idx, test_counts = pad_indices(test_lists)
  return FederatedData(
    x=np.ascontiguousarray(x, dtype=np.float32),
    y=y,
    train_idx=train_idx,
    train_counts=train_counts,
    test_idx=test_idx,
    test_counts=test_counts,
    num_classes=raw.num_classes,
    name=raw.name,
  )
