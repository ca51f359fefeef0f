"""Several runs (seeds, float hyperparameters) as one program: the run-batching
part of :class:`~fedjax_pfl.core.simulation.Simulation`.

S runs that differ in seed and in float hyperparameters (learning rate,
FedOBP's quantile) share one compiled program: ``jax.vmap`` over a leading
axis of runs (never of clients) of the compiled round loop, the algorithm
rebuilt inside the trace from each run's traced values. Needs the compiled
backend on one device (``Backend.supports_run_batching``).
"""

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.core import evaluation, rng, rounds
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.rounds import SimState
from fedjax_pfl.types import Metrics, PyTree


class RunBatching:
  """Mixin of :class:`~fedjax_pfl.core.simulation.Simulation`: the attributes it
  reads (``algorithm``, ``rebuild``, ``backend``, ``plan``, ``task``, ``data``,
  ``keys``, ``num_clients``, ``test_counts``, ...) are the simulation's."""

  def _algorithm_for(self, hparams: Mapping[str, Any]) -> Algorithm:
    if not hparams:
      return self.algorithm
    if self.rebuild is None:
      raise ValueError(f"hyperparameters {sorted(hparams)} can only be batched with "
                       "Simulation(rebuild=...)")
    return self.rebuild(dict(hparams))

  def _task_for(self, alg: Algorithm):
    return self.task if alg is self.algorithm else rounds.client_task(alg)

  @staticmethod
  def _stacked_hparams(hparams, num_runs: int) -> dict[str, jax.Array]:
    hparams = dict(hparams or {})
    for name, values in hparams.items():
      if len(values) != num_runs:
        raise ValueError(f"hparams[{name!r}] has {len(values)} values for {num_runs} runs")
    return {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in hparams.items()}

  def init_batch(self, params_per_run: Sequence[PyTree],
                 hparams: Mapping[str, Sequence[float]] | None = None,
                 seeds: Sequence[int] | None = None) -> SimState:
    """Stacked initial state ``[S, ...]`` of S runs: one initial model per run
    and, optionally, per-run values of float hyperparameters (``hparams``:
    ``{name: S values}``) and seeds (for the algorithms' init keys; default:
    this simulation's seed for every run)."""
    self.backend.check_run_batching()
    hparams = dict(hparams or {})
    self._stacked_hparams(hparams, len(params_per_run))
    init_keys = ([self.algorithm_init_key] * len(params_per_run) if seeds is None else
                 [rng.stream_key(rng.root_key(int(s)), "algorithm_init") for s in seeds])
    states = [self._algorithm_for({k: float(v[i]) for k, v in hparams.items()})
              .init(p, self.num_clients, key=init_keys[i]) for i, p in enumerate(params_per_run)]
    server = jax.tree.map(lambda *xs: jnp.stack(xs), *[s[0] for s in states])
    clients = jax.tree.map(lambda *xs: jnp.stack(xs), *[s[1] for s in states])
    return SimState(server, clients, 0)

  def _rounds_batch(self, server, clients, data, first_round, keys, num_rounds: int, hparams):
    def one_run(s, c, k, hp):
      alg = self._algorithm_for(hp)  # built inside the trace from this run's values
      return rounds.rounds_fn(alg, self._task_for(alg), self.backend.map_cohort, self.plan, s,
                              c, data, first_round, k, num_rounds)
    return self.backend.vmap_runs(one_run)(server, clients, keys, hparams)

  def _full_round_batch(self, server, clients, data, ids, valid, round_idx, keys, hparams):
    def one_run(s, c, k, hp):
      alg = self._algorithm_for(hp)
      sampled = rounds.sampled_mask(self.plan, k.sample, round_idx, ids, valid)
      return rounds.round_fn(alg, self._task_for(alg), self.backend.map_cohort, s, c, data,
                             ids, valid, round_idx, k, sampled)
    return self.backend.vmap_runs(one_run)(server, clients, keys, hparams)

  def run_rounds_batch(self, state: SimState, seeds: Sequence[int], num_rounds: int,
                       hparams: Mapping[str, Sequence[float]] | None = None,
                       ) -> tuple[SimState, list[list[Metrics]]]:
    """S runs as ONE program: ``jax.vmap`` over the runs of :meth:`run_rounds`'
    compiled loop (state stacked ``[S, ...]`` from :meth:`init_batch`). Run
    ``s`` has seed ``seeds[s]`` and, for each ``name`` in ``hparams``, the
    value ``hparams[name][s]``; it gets exactly the keys, cohorts and results
    of a ``Simulation`` built with that seed and those values (float reductions
    aside). Each distinct set of ``hparams`` names compiles one program.

    Returns:
      The new stacked state and, per run, one metrics dict per round.

    Raises:
      ValueError: without vmap + scan on one device, ``num_rounds < 1``,
        ``hparams`` without ``rebuild``, or value lists not of length S.
    """
    self.backend.check_run_batching()
    rounds.check_num_rounds(num_rounds)
    stacked_hp = self._stacked_hparams(hparams, len(seeds))
    keys = rounds.RunKeys(*(jnp.stack(k) for k in zip(*(rounds.run_keys(int(s))
                                                        for s in seeds))))
    records: list[list[Metrics]] = [[] for _ in seeds]
    server, clients, r = state.server, state.clients, state.round
    for _, length, full in rounds.segments(r, num_rounds, self.algorithm.full_rounds):
      if full:  # every client trains: its own program, C = N (vmapped over runs)
        ids, valid = rounds.full_ids(self.num_clients, self.backend.padded_size(self.num_clients))
        prog = self.backend.jit(self._full_round_batch, donate=self._donated)
        server, clients, stacked = prog(server, clients, self.data, ids, valid, jnp.int32(r),
                                        keys, stacked_hp)
        stacked = {k: v[:, None] for k, v in stacked.items()}  # [S] -> [S, 1]
      else:
        prog = self.backend.jit(self._rounds_batch, donate=self._donated, static=(5,))
        server, clients, stacked = prog(server, clients, self.data, jnp.int32(r), keys,
                                        length, stacked_hp)
      for i in range(len(seeds)):  # [S, R] -> run i
        records[i].extend(rounds.per_round(jax.tree.map(lambda v, i=i: v[i], stacked)))
      r += length
    return SimState(server, clients, state.round + num_rounds), records

  def _eval_batch(self, server, clients, data, round_idx, hparams):
    def one_run(sv, cl, hp):
      alg = self._algorithm_for(hp)
      if alg.personalize_with_data is None:
        return self._evaluate_traced(sv, cl, data, alg.personalize)
      models = self._personalized_traced(alg, sv, cl, data, round_idx)
      return self._evaluate_traced((), models, data, evaluation.own_params)
    return self.backend.vmap_runs(one_run)(server, clients, hparams)

  def evaluate_batch(self, state: SimState,
                     hparams: Mapping[str, Sequence[float]] | None = None) -> list[Metrics]:
    """:meth:`evaluate` of each run of a stacked ``[S, ...]`` state, in one
    program (``hparams`` as given to :meth:`run_rounds_batch`)."""
    self.backend.check_run_batching()
    num_runs = int(jax.tree.leaves((state.server, state.clients))[0].shape[0])
    stacked_hp = self._stacked_hparams(hparams, num_runs)
    sums = np.asarray(self.backend.jit(self._eval_batch)(state.server, state.clients,
                                                         self.data, jnp.int32(state.round),
                                                         stacked_hp))
    return [evaluation.summarize_eval(s[:, 0], s[:, 1], self.test_counts)
            for s in sums]  # [S, N, 2]

  def unstack_run(self, state: SimState, index: int) -> SimState:
    """Run ``index`` of a stacked state, as a plain single-run ``SimState``."""
    take = lambda a: a[index]
    return SimState(jax.tree.map(take, state.server), jax.tree.map(take, state.clients),
                    state.round)

  # -- evaluation ----------------------------------------------------------------
