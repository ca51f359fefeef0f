"""The client axis: stacking, gathering, scattering, padding and per-client data views.

Per-client functions are written for ONE client. The helpers here build and
index the stacked ``[N, ...]`` client state and the per-client views of the
resident data; :mod:`fedjax_pfl.core.backend` maps per-client functions over a
cohort (vmap, chunks, one client at a time, device meshes).
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.core.local import ClientData
from fedjax_pfl.types import PyTree

CLIENT_AXIS = "clients"


class ClientTask(NamedTuple):
  """Single-client pieces of a round, mapped over the cohort by a backend
  (:mod:`fedjax_pfl.core.backend`).

  ``prologue(shared, client, data, client_id) -> state``;
  ``step(state, t, data) -> state``; ``epilogue(shared, client, state) -> out``.
  ``shared`` is replicated (server state, round key); ``client`` is this
  client's slice of the stacked client state.

  ``active_steps(counts)``: host-side step indices at which any of the
  clients with train counts ``counts`` trains; ``schedule(count)``: the
  traced, one-client version (:meth:`~fedjax_pfl.core.local.LocalProgram.step_schedule`;
  ``None``: every step); ``annotate(out, stats)``: adds a packed schedule's
  per-client statistics (:mod:`fedjax_pfl.core.lanes`) to an output (``None``:
  the output is returned as is).
  """
  prologue: Callable[..., Any]
  step: Callable[..., Any]
  epilogue: Callable[..., Any]
  num_steps: int
  active_steps: Callable[[np.ndarray], Sequence[int]]
  schedule: Callable[..., Any] | None = None
  annotate: Callable[..., Any] | None = None


class DeviceData(NamedTuple):
  """The resident dataset: pooled ``x [T,...]``, ``y [T]`` and padded
  per-client index tables ``[N, M]`` with counts ``[N]``."""
  x: jax.Array
  y: jax.Array
  train_idx: jax.Array
  train_counts: jax.Array
  test_idx: jax.Array
  test_counts: jax.Array


class ClientMajorData(NamedTuple):
  """The resident dataset in client-major layout (``system.data_placement=
  "by_client"``): ``x [N, M_tr + M_te, ...]``, ``y [N, M_tr + M_te]`` hold each
  client's own train then test examples (rows past a client's counts are
  padding), so the leading axis can be split over the ``clients`` mesh axis and
  each process materializes only its clients' examples. ``train_idx [N, M_tr]``
  and ``test_idx [N, M_te]`` hold positions within a client's rows."""
  x: jax.Array
  y: jax.Array
  train_idx: jax.Array
  train_counts: jax.Array
  test_idx: jax.Array
  test_counts: jax.Array


def client_major_rows(x: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
                      test_idx: np.ndarray, rows: slice = slice(None)):
  """Host-side ``(x [n, M_tr + M_te, ...], y [n, M_tr + M_te])`` of clients
  ``rows`` from the pooled arrays and padded index tables."""
  pos = np.concatenate([np.asarray(train_idx)[rows], np.asarray(test_idx)[rows]], axis=1)
  return np.asarray(x)[pos], np.asarray(y)[pos]


def local_positions(train_idx: np.ndarray, test_idx: np.ndarray):
  """Index tables of :class:`ClientMajorData` (positions within a client's rows)."""
  n, m_tr = np.shape(train_idx)
  m_te = np.shape(test_idx)[1]
  return (np.broadcast_to(np.arange(m_tr, dtype=np.int32), (n, m_tr)),
          np.broadcast_to(np.arange(m_tr, m_tr + m_te, dtype=np.int32), (n, m_te)))


def stack_clients(tree: PyTree, num_clients: int) -> PyTree:
  """``[N, ...]`` stacked copies of ``tree`` (the initial client state)."""
  return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_clients,) + jnp.shape(a)), tree)


def per_client(fn: Callable[[jax.Array], PyTree], num_clients: int) -> PyTree:
  """Stacked ``[N, ...]`` outputs of ``fn(i)`` (``i``: ``[]`` int32 client id)
  for every client, one vmapped call (e.g. per-client initial models)."""
  return jax.vmap(fn)(jnp.arange(num_clients, dtype=jnp.int32))


def gather(stacked: PyTree, ids) -> PyTree:
  """Rows ``ids`` (scalar or ``[C]``) of a stacked pytree; out-of-range ids clip."""
  return jax.tree.map(lambda a: jnp.take(a, ids, axis=0, mode="clip"), stacked)


def scatter(stacked: PyTree, ids: jax.Array, values: PyTree, valid: jax.Array) -> PyTree:
  """Write ``values [C, ...]`` into rows ``ids`` where ``valid``; padding dropped."""
  n = jax.tree.leaves(stacked)[0].shape[0] if jax.tree.leaves(stacked) else 0
  target = jnp.where(valid, ids, n)
  return jax.tree.map(lambda a, v: a.at[target].set(v, mode="drop"), stacked, values)


def stack_outputs(outputs: Sequence[PyTree]) -> PyTree:
  """Stack per-client outputs (host loop) along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)


def client_data(data: DeviceData | ClientMajorData, ids, *, test: bool = False) -> ClientData:
  """Per-client view(s) of the resident data for ``ids`` (scalar or ``[C]``).

  Pooled layout: ``x``/``y`` are the pooled arrays; client-major layout: the
  clients' own rows ``x [(C,) M, ...]`` (gathered across devices by XLA when
  the layout is split over the mesh)."""
  idx, counts = (data.test_idx, data.test_counts) if test else (data.train_idx, data.train_counts)
  take = lambda a: jnp.take(a, ids, axis=0, mode="clip")
  x, y = (take(data.x), take(data.y)) if isinstance(data, ClientMajorData) else (data.x, data.y)
  return ClientData(x, y, take(idx), take(counts))


def data_axes(data) -> ClientData:
  """vmap axes of a batched :func:`client_data` view."""
  shared = None if isinstance(data, DeviceData) else 0
  return ClientData(shared, shared, 0, 0)


def pad_ids(ids: np.ndarray, padded_size: int, num_clients: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads cohort ``ids [C]`` to ``padded_size`` with the out-of-range id ``N``;
  returns ``(padded_ids [C'], valid [C'])`` (host numpy)."""
  ids = np.asarray(ids, np.int32)
  padded = np.concatenate([ids, np.full(padded_size - len(ids), num_clients, np.int32)])
  return padded, padded < num_clients


def pad_ids_traced(ids: jax.Array, padded_size: int, num_clients: int):
  """:func:`pad_ids` inside a trace."""
  ids = jnp.concatenate([ids, jnp.full((padded_size - ids.shape[0],), num_clients, jnp.int32)])
  return ids, ids < num_clients
