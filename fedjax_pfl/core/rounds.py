"""The one round skeleton, as pure functions.

A round (:func:`round_fn`): the cohort's clients run
``broadcast -> local_train -> finalize`` (mapped by a backend,
:mod:`fedjax_pfl.core.backend`), their new client states are written into the
stacked ``[N, ...]`` state, and ``aggregate`` combines the uploads with
train-set-size weights (0 for padding). This module is the only code that calls
the algorithm slots during training, and it builds their contexts
(:class:`~fedjax_pfl.core.algorithm.ClientContext`,
:class:`~fedjax_pfl.core.algorithm.ServerContext`).

Keys (:mod:`fedjax_pfl.core.rng`): client ``i`` of round ``t`` trains with
``fold_in(fold_in(train, t), i)`` and its slots get
``fold_in(fold_in(algorithm, t), i)``; ``aggregate`` gets
``fold_in(aggregate, t)``; the cohort of round ``t`` is drawn from
``fold_in(sample, t)`` or read from a fixed ``[R, C]`` stream table.
"""

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.core import cohort, rng
from fedjax_pfl.core.algorithm import Algorithm, ClientContext, ServerContext
from fedjax_pfl.types import Metrics, PyTree

BYTES_PER_VALUE = 4  # fp32
MIB = 2 ** 20


class SimState(NamedTuple):
  """Server state, stacked client state ``[N, ...]`` and the next round index."""
  server: PyTree
  clients: PyTree
  round: int


class RunKeys(NamedTuple):
  """The per-run key streams a round reads (typed keys)."""
  sample: jax.Array
  train: jax.Array
  algorithm: jax.Array
  aggregate: jax.Array


class RoundShared(NamedTuple):
  """What every client of one round shares (replicated): the server state,
  the round index ``[]`` int32 and the round's train and algorithm keys."""
  server: PyTree
  round: jax.Array
  train_key: jax.Array
  algorithm_key: jax.Array


def run_keys(seed: int) -> RunKeys:
  """The key streams of a run with root seed ``seed``."""
  root = rng.root_key(seed)
  return RunKeys(*(rng.stream_key(root, s) for s in ("sample", "train", "algorithm",
                                                      "aggregate")))


def cohort_size(num_clients: int, participation: float) -> int:
  """``C = max(1, floor(rho * N))`` clients per round (at most ``N``)."""
  return max(1, min(num_clients, math.floor(participation * num_clients + 1e-9)))


def round_shared(server: PyTree, keys: RunKeys, round_idx) -> RoundShared:
  """The replicated inputs of round ``round_idx`` (traceable)."""
  r = jnp.asarray(round_idx, jnp.int32)
  return RoundShared(server, r, jax.random.fold_in(keys.train, r),
                     jax.random.fold_in(keys.algorithm, r))


def client_task(alg: Algorithm) -> cohort.ClientTask:
  """One client's part of a round as ``prologue -> step* -> epilogue``:
  ``broadcast`` and the local program's ``init``; its steps; its ``finish``,
  ``finalize`` and the default communication figures."""
  prog = alg.local_train

  def prologue(shared: RoundShared, client, cdata, cid):
    ctx = ClientContext(shared.round, cid, jax.random.fold_in(shared.algorithm_key, cid))
    params, extra = alg.broadcast(shared.server, client, ctx=ctx)
    return prog.init(params, cdata, jax.random.fold_in(shared.train_key, cid)), extra, ctx

  def step(state, t, cdata):
    carry, extra, ctx = state
    return prog.step(carry, t, cdata), extra, ctx

  def epilogue(shared: RoundShared, client, state):
    carry, extra, ctx = state
    trained, train_metrics = prog.finish(carry)
    upload, new_client, metrics = alg.finalize(shared.server, client, trained, extra, ctx=ctx)
    comm = default_communication(upload, trained)
    return upload, new_client, {**train_metrics, **comm, **metrics}

  def annotate(out, stats):
    upload, new_client, metrics = out
    return upload, new_client, {**metrics, **stats}

  return cohort.ClientTask(prologue, step, epilogue, prog.num_steps, prog.active_steps,
                           prog.step_schedule, annotate)


def mean_valid(metrics: Metrics, valid: jax.Array) -> Metrics:
  """Mean of each ``[C]`` metric over the valid (non-padding) clients."""
  w = valid.astype(jnp.float32)
  return {k: jnp.sum(v * w) / jnp.maximum(jnp.sum(w), 1.0) for k, v in metrics.items()}


def finish_round(alg: Algorithm, server, clients, outputs, ids: jax.Array, valid: jax.Array,
                 train_counts: jax.Array, round_idx, keys: RunKeys,
                 sampled: jax.Array | None = None):
  """Writes the cohort's new client states, then ``aggregate``.

  Args:
    alg: the algorithm.
    server, clients: the state before the round (clients stacked ``[N]``).
    outputs: the mapped ``(uploads, new_clients, metrics)``, stacked ``[C]``.
    ids, valid: ``[C]`` int32 cohort ids (``N`` = padding) and bool mask.
    train_counts: ``[N]`` train-set sizes (the aggregation weights).
    round_idx: ``[]`` int32 round index.
    keys: the run's key streams.
    sampled: ``[C]`` bool, the normally sampled clients (full rounds);
      default ``valid``.

  Returns:
    ``(server, clients, metrics)``: cohort means of the per-client metrics,
    ``round_uplink_bytes`` / ``round_downlink_bytes`` / ``round_clients``
    totals and ``aggregate``'s own metrics.
  """
  uploads, new_clients, metrics = outputs
  num_clients = train_counts.shape[0]
  weights = (train_counts[jnp.minimum(ids, num_clients - 1)] * valid).astype(jnp.float32)
  clients = cohort.scatter(clients, ids, new_clients, valid)
  r = jnp.asarray(round_idx, jnp.int32)
  sampled = valid if sampled is None else sampled
  ctx = ServerContext(r, ids, valid, jax.random.fold_in(keys.aggregate, r), clients, sampled)
  out = alg.aggregate(server, uploads, weights, ctx=ctx)
  server, agg_metrics = out[0], out[1]
  if len(out) == 3:
    clients = out[2]
  w = valid.astype(jnp.float32)
  totals = {f"round_{k}": jnp.sum(metrics[k] * w) for k in ("uplink_bytes", "downlink_bytes")}
  totals["round_clients"] = jnp.sum(w)
  return server, clients, {**mean_valid(metrics, valid), **totals, **agg_metrics}


def round_fn(alg: Algorithm, task: cohort.ClientTask, map_cohort: Callable[..., Any],
             server, clients, data, ids: jax.Array, valid: jax.Array, round_idx,
             keys: RunKeys, sampled: jax.Array | None = None):
  """One traced round: ``map_cohort`` (a backend's traced client map) over
  ``task``, then :func:`finish_round`. Returns ``(server, clients, metrics)``."""
  shared = round_shared(server, keys, round_idx)
  outputs = map_cohort(task, shared, clients, data, ids)
  return finish_round(alg, server, clients, outputs, ids, valid, data.train_counts, round_idx,
                      keys, sampled)


def sampled_mask(plan: "CohortPlan", sample_key: jax.Array, round_idx, ids: jax.Array,
                 valid: jax.Array) -> jax.Array:
  """``[C']`` bool: which of ``ids`` are in round ``round_idx``'s normally
  sampled cohort (traceable; for full-participation rounds)."""
  return valid & jnp.isin(ids, cohort_ids(plan, sample_key, round_idx))


def full_ids(num_clients: int, padded_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(ids [N'], valid [N'])``: every client, padded (host numpy)."""
  return cohort.pad_ids(np.arange(num_clients), padded_size, num_clients)


def segments(first_round: int, num_rounds: int,
             full_rounds: tuple[int, ...]) -> list[tuple[int, int, bool]]:
  """``[(start, length, full)]``: rounds ``first .. first + R - 1`` split so
  that every full-participation round is its own segment of length 1."""
  out, start = [], first_round
  end = first_round + num_rounds
  for r in sorted(set(full_rounds)):
    if first_round <= r < end:
      if r > start:
        out.append((start, r - start, False))
      out.append((r, 1, True))
      start = r + 1
  if start < end:
    out.append((start, end - start, False))
  return out


class CohortPlan(NamedTuple):
  """How cohorts are chosen (static): ``N``, ``C``, the padded size ``C'`` and,
  optionally, a fixed ``[R, C]`` int32 table of cohort ids (a reference
  protocol's client stream; row ``t`` is round ``t``)."""
  num_clients: int
  cohort_size: int
  padded_size: int
  table: Any = None


class CohortTable:
  """A hashable wrapper of a host ``[R, C]`` cohort table (a static jit
  argument compares by content)."""

  def __init__(self, table: np.ndarray):
    self.array = np.asarray(table, np.int32)
    self.shape = self.array.shape
    self._key = (self.array.shape, self.array.tobytes())

  def __array__(self, dtype=None, copy=None):
    return self.array if dtype is None else self.array.astype(dtype)

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, CohortTable) and self._key == other._key


def cohort_ids(plan: CohortPlan, sample_key: jax.Array, round_idx) -> jax.Array:
  """Sorted ``[C]`` ids of round ``round_idx`` (traceable): row ``t`` of the
  plan's table (clamped to its last row; the facade refuses rounds past it),
  else uniform without replacement from ``fold_in(sample, t)``.
  The ids are sorted: results do not depend on cohort order."""
  if plan.table is not None:
    table = jnp.asarray(plan.table)
    return jnp.sort(table[jnp.minimum(round_idx, table.shape[0] - 1)]).astype(jnp.int32)
  return rng.sample_cohort(sample_key, round_idx, plan.num_clients, plan.cohort_size)


def rounds_fn(alg: Algorithm, task: cohort.ClientTask, map_cohort: Callable[..., Any],
              plan: CohortPlan, server, clients, data, first_round, keys: RunKeys,
              num_rounds: int):
  """``num_rounds`` rounds from ``first_round`` as one ``lax.scan`` (cohorts
  sampled on device). Returns ``(server, clients, metrics {key: [R]})``."""
  def body(carry, round_idx):
    ids = cohort_ids(plan, keys.sample, round_idx)
    ids, valid = cohort.pad_ids_traced(ids, plan.padded_size, plan.num_clients)
    server, clients, metrics = round_fn(alg, task, map_cohort, *carry, data, ids, valid,
                                        round_idx, keys)
    return (server, clients), metrics
  rounds = first_round + jnp.arange(num_rounds, dtype=jnp.int32)
  (server, clients), metrics = jax.lax.scan(body, (server, clients), rounds)
  return server, clients, metrics


def num_values(tree: PyTree) -> int:
  """Number of scalar entries of a pytree (static)."""
  return int(sum(np.prod(jnp.shape(x)) for x in jax.tree.leaves(tree)))


def default_communication(upload: PyTree, trained: PyTree) -> Metrics:
  """Per-client communication of one round when the algorithm reports none:
  uplink = every value of the upload, downlink = every value of the model the
  client trained from (dense fp32). Algorithms that send less (masks, sparse
  parts) return these keys from ``finalize`` and override this default.

  Keys: ``uplink_values``, ``downlink_values`` (parameters), ``uplink_bytes``,
  ``downlink_bytes`` (4 bytes per fp32 value + 1 bit per mask element sent).
  """
  up, down = num_values(upload), num_values(trained)
  f = jnp.float32
  return {"uplink_values": f(up), "downlink_values": f(down),
          "uplink_bytes": f(BYTES_PER_VALUE * up), "downlink_bytes": f(BYTES_PER_VALUE * down)}


def per_round(stacked: Metrics) -> list[Metrics]:
  """``{key: [R] array}`` -> R host-side dicts of floats."""
  stacked = {k: np.asarray(v) for k, v in stacked.items()}
  return [{k: float(v[r]) for k, v in stacked.items()}
          for r in range(len(next(iter(stacked.values()))))]


def check_num_rounds(num_rounds: int) -> None:
  """Raises ValueError unless ``num_rounds >= 1``."""
  if num_rounds < 1:
    raise ValueError(f"num_rounds={num_rounds}; allowed: >= 1")
