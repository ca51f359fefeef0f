"""Lane packing: a cohort's ragged clients queued onto a few vmapped lanes.

Under plain ``vmap`` + ``scan`` every client of a cohort runs the static
``num_steps`` of the local program, i.e. as many steps as the largest client
slot allows, most of them masked no-ops (workload W on FL-bench's cohorts:
655-1,030 useful client steps per round out of 10 x 400 lane steps, 16-26% lane
utilization; benchmarks/README.md). Packing
(``system.lanes = L``) runs the cohort on ``L`` vmapped lanes inside one
``lax.while_loop``:

* the clients are queued longest first (by their number of active steps, the
  steps :meth:`~fedjax_pfl.core.local.LocalProgram.active_steps` runs for
  one client on the sequential path);
* every iteration steps each busy lane once, at its client's next *active*
  step (steps without a batch are skipped, as the Python-stepped path does);
* a lane whose client has taken its last step writes that client's output
  (``epilogue``) at the client's cohort position and takes the next client of
  the queue (``prologue``); both run only in iterations where some lane
  finishes (``lax.cond``).

Each client runs exactly the steps, keys and data of the sequential path, so
results equal the unpacked path up to float reassociation of batched
kernels; they do not depend on ``L``, on the queue order or on which lane a
client lands on. Statistics (:func:`packed_map`'s ``annotate``):
``client_steps`` (the client's active steps) and ``lane_utilization``
(useful client steps / lane steps executed, the same value for every client
of the cohort).

Under a ``vmap`` over runs (batched seeds or hyperparameters) JAX turns the
batched ``lax.cond`` into a select, so every iteration then also pays one
prologue and one epilogue per lane; the results are the same.
"""

from typing import Any

import jax
import jax.numpy as jnp

from fedjax_pfl.core.cohort import ClientTask, client_data, data_axes, gather
from fedjax_pfl.types import PyTree


def _select(mask: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """``new`` on lanes where ``mask [L]`` is True, else ``old``."""
  return jax.tree.map(
      lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o), new, old)


def _schedules(task: ClientTask, counts: jax.Array):
  """``(totals [C] int32, step_of(k [L], counts [L]) -> t [L])``."""
  if task.schedule is None:
    return (jnp.full(counts.shape, task.num_steps, jnp.int32),
            lambda k, c: k)
  totals = jax.vmap(lambda c: task.schedule(c)[0])(counts)
  return totals, jax.vmap(lambda k, c: task.schedule(c)[1](k))


def packed_map(task: ClientTask, shared: Any, stacked_clients: PyTree, data, ids: jax.Array,
               lanes: int) -> PyTree:
  """Runs ``task`` for cohort ``ids [C]`` on ``lanes`` packed lanes (traced).

  Args:
    task: the clients' :class:`~fedjax_pfl.core.cohort.ClientTask`.
    shared: replicated inputs of every client (server state, round keys).
    stacked_clients: ``[N, ...]`` client state.
    data: the resident dataset (pooled or client-major).
    ids: ``[C]`` int32 cohort ids (padding ids clip to client ``N - 1``, as on
      the unpacked path; their outputs are dropped by the caller).
    lanes: ``L >= 1`` lanes (``min(L, C)`` are used).

  Returns:
    The stacked ``[C]`` outputs, in cohort order, passed through
    ``task.annotate`` with ``client_steps`` and ``lane_utilization`` (each
    ``[C]`` float32) when the task has one.
  """
  num_clients = data.train_counts.shape[0]
  size = ids.shape[0]
  width = max(1, min(int(lanes), size))
  counts = data.train_counts[jnp.minimum(ids, num_clients - 1)]
  totals, step_of = _schedules(task, counts)
  order = jnp.argsort(-totals, stable=True).astype(jnp.int32)  # longest first
  axes = data_axes(data)
  per_lane = [i for i, a in enumerate(axes) if a is not None]

  def full_view(carried):  # the lanes' data views from their carried per-lane fields
    base = list(client_data(data, ids[0]))
    for i, a in zip(per_lane, carried):
      base[i] = a
    return type(axes)(*base)

  def start(pos):  # prologue of the clients at cohort positions pos [L]
    cids = ids[pos]
    view = client_data(data, cids)
    state = jax.vmap(task.prologue, in_axes=(None, 0, axes, 0))(
        shared, gather(stacked_clients, cids), view, cids)
    return state, tuple(view[i] for i in per_lane)

  def finished(c):  # busy lanes whose client has taken its last step
    return c["busy"] & (c["k"] >= c["total"])

  def stepping(c):
    return c["busy"] & (c["k"] < c["total"])

  first = order[:width]
  state, view = start(first)
  finish = jax.vmap(task.epilogue, in_axes=(None, 0, 0))
  out_shape = jax.eval_shape(lambda s, p: finish(shared, gather(stacked_clients, ids[p]), s),
                             state, first)
  outputs = jax.tree.map(lambda sd: jnp.zeros((size,) + sd.shape[1:], sd.dtype), out_shape)
  carry0 = dict(state=state, view=view, pos=first, busy=jnp.ones(width, bool),
                k=jnp.zeros(width, jnp.int32), total=totals[first], next=jnp.int32(width),
                out=outputs, iters=jnp.int32(0))

  def harvest(c):
    done = finished(c)
    vals = finish(shared, gather(stacked_clients, ids[c["pos"]]), c["state"])
    target = jnp.where(done, c["pos"], size)
    out = jax.tree.map(lambda buf, v: buf.at[target].set(v, mode="drop"), c["out"], vals)
    queue = c["next"] + jnp.cumsum(done) - 1
    take = done & (queue < size)
    pos = jnp.where(take, order[jnp.minimum(queue, size - 1)], c["pos"])
    new_state, new_view = start(pos)
    return dict(c, out=out, pos=pos, busy=c["busy"] & (~done | take),
                state=_select(take, new_state, c["state"]),
                view=_select(take, new_view, c["view"]),
                k=jnp.where(take, 0, c["k"]), total=jnp.where(take, totals[pos], c["total"]),
                next=c["next"] + jnp.sum(done).astype(jnp.int32))

  def step(c):
    active = stepping(c)
    t = step_of(c["k"], counts[c["pos"]]).astype(jnp.int32)
    new = jax.vmap(task.step, in_axes=(0, 0, axes))(c["state"], t, full_view(c["view"]))
    return dict(c, state=_select(active, new, c["state"]),
                k=c["k"] + active.astype(jnp.int32), iters=c["iters"] + 1)

  def body(c):
    c = jax.lax.cond(jnp.any(finished(c)), harvest, lambda c: c, c)
    return jax.lax.cond(jnp.any(stepping(c)), step, lambda c: c, c)

  final = jax.lax.while_loop(lambda c: jnp.any(c["busy"]), body, carry0)
  if task.annotate is None:
    return final["out"]
  useful = jnp.sum(totals).astype(jnp.float32)
  executed = (final["iters"] * width).astype(jnp.float32)
  stats = {"client_steps": totals.astype(jnp.float32),
           "lane_utilization": jnp.broadcast_to(useful / jnp.maximum(executed, 1.0), (size,))}
  return task.annotate(final["out"], stats)
