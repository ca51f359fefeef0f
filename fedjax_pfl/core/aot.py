"""Ahead-of-time compilation of a simulation's round programs, for benchmarks
that report compile time separately from steady state (``jit(f).lower(...)
.compile()`` of every program a round runs, installed in the backend's cache so
nothing compiles again)."""

import time

import jax
import numpy as np

from fedjax_pfl.core.rounds import SimState


def compile_round(sim, state: SimState) -> dict[str, float]:
  """AOT-compiles every program ``sim.run_round`` runs from ``state`` and
  installs it, so that rounds then run without compiling (all cohorts have
  the same padded size: one compile serves every round; a full-participation
  round, ``Algorithm.full_rounds``, compiles its own program on first use).
  For separating compile time from steady state in benchmarks.

  Returns:
    ``{program: compile seconds, ..., "total": seconds}``.
  """
  ids, valid = sim.backend.pad_cohort(sim.cohort(state.round))
  r = np.int32(state.round)
  if sim.backend.fused:
    opts = {"donate": sim._donated, "state_outputs": True}
    start = time.perf_counter()
    compiled = sim.backend.jit(sim._round, **opts).lower(
        state.server, state.clients, sim.data,
        *sim.backend.put((ids, valid, r, valid))).compile()
    secs = {"round": time.perf_counter() - start}
    sim.backend.install(sim._round, compiled, **opts)
  else:
    shared = sim._shared(state.server, sim.keys, state.round)
    secs, outputs = compile_task(sim.backend, sim.task, shared, state.clients, sim.data, ids)
    start = time.perf_counter()
    compiled = sim.backend.jit(sim._finish, donate=sim._donated).lower(
        state.server, state.clients, outputs, ids, valid, r, valid).compile()
    secs["aggregate_scatter"] = time.perf_counter() - start
    sim.backend.install(sim._finish, compiled, donate=sim._donated)
  secs["total"] = sum(secs.values())
  return secs


def lower_round(sim, state: SimState):
  """The lowered (not yet compiled) program of one round of ``state`` on the
  compiled backend (``.compile()``, ``.cost_analysis()``), for benchmarks.

  Raises:
    ValueError: on the host backend (its round is several programs).
  """
  if not sim.backend.fused:
    raise ValueError("lower_round needs the compiled backend (vmap + scan)")
  ids, valid = sim.backend.pad_cohort(sim.cohort(state.round))
  prog = sim.backend.jit(sim._round, donate=sim._donated, state_outputs=True)
  return prog.lower(state.server, state.clients, sim.data,
                    *sim.backend.put((ids, valid, np.int32(state.round), valid)))


def compile_task(backend, task, shared, stacked_clients, data, ids: np.ndarray):
  """AOT-compiles the pieces ``HostBackend.map_cohort`` runs for padded ``ids`` and
  installs them (later calls run the executables; nothing compiles again).

  Returns:
    ``({piece: compile seconds}, shapes of the stacked ``[C]`` outputs)``.
  """
  batched = backend.execution.parallelism == "vmap"
  pro, step, scan_steps, epi = backend._pieces(task, batched)
  size = (backend.execution.chunk_size or len(ids)) if batched else 1
  group = ids[:size] if batched else ids[0]
  secs = {}
  state = jax.eval_shape(pro, shared, stacked_clients, data, group)
  pro, secs["prologue"] = _timed_compile(pro, shared, stacked_clients, data, group)
  if backend.execution.step_loop == "scan":
    scan_steps, secs["scan_steps"] = _timed_compile(scan_steps, state, data, group)
  else:
    step, secs["step"] = _timed_compile(step, state, np.int32(0), data, group)
  out = jax.eval_shape(epi, shared, stacked_clients, state, group)
  epi, secs["epilogue"] = _timed_compile(epi, shared, stacked_clients, state, group)
  backend.install_pieces(task, (pro, step, scan_steps, epi))
  c = len(ids)
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
      ((c,) + a.shape[1:]) if batched else ((c,) + a.shape), a.dtype), out)
  return secs, shapes


def _timed_compile(fn, *args):
  """``(fn.lower(*args).compile(), seconds)``."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start
