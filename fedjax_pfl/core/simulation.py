"""``Simulation``: an algorithm, a model and resident data run by a backend.

A thin facade over the pure round (:mod:`fedjax_pfl.core.rounds`), the
backends that map clients (:mod:`fedjax_pfl.core.backend`) and evaluation
(:mod:`fedjax_pfl.core.evaluation`):

1. sample the cohort (uniform without replacement, key = (seed, round), or a
   fixed stream table);
2. map ``broadcast -> local_train -> finalize`` over the cohort (backend);
3. write the new client states, ``aggregate`` with train-set-size weights.

With vmap + scan a round is one compiled program and :meth:`run_rounds` puts
many rounds into one ``lax.scan``; :meth:`run_rounds_batch` vmaps that loop
over S runs that differ in seed and float hyperparameters (learning rate,
FedOBP's quantile), rebuilding the algorithm from each run's traced values.
"""

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.core import aot, evaluation, rng, rounds
from fedjax_pfl.core import backend as backend_lib
from fedjax_pfl.core import execution as execution_lib
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.batching import RunBatching
from fedjax_pfl.core.rounds import SimState
from fedjax_pfl.types import Metrics, PyTree


class Simulation(RunBatching):
  """Runs an algorithm over resident federated data (see module docstring).

  Args:
    algorithm: the algorithm's slots.
    apply_fn: ``(params, x [B, ...]) -> logits [B, K]`` for evaluation.
    data: host-side federated data (``fedjax_pfl.data.FederatedData``).
    seed: root seed of all keys (init, sampling, training, algorithm).
    participation: fraction ``rho`` in (0, 1] of clients per round.
    execution: how clients run (``backend.Execution``).
    eval_batch_size: test examples per forward pass (capped at the widest
      client test set); ``None``: the backend's measured default
      (:func:`~fedjax_pfl.core.execution.default_eval_batch_size`: 32 on CPU,
      256 elsewhere). Changes only the float rounding of summed losses.
    finetune: optional ``LocalProgram`` for :meth:`evaluate_finetuned`.
    donate: if True (default), rounds donate the stacked client state of their
      input, which is updated in place (the input ``SimState.clients`` is then
      invalid; keep a copy or pass False to reuse old states).
    data_placement: ``"replicated"`` or ``"by_client"`` (``Backend.put_data``).
    rebuild: optional ``hparams -> Algorithm``: the same algorithm with some
      float hyperparameters replaced (``{"train.lr": 0.05, "algo.quantile":
      0.99}``; values may be tracers), for :meth:`run_rounds_batch`;
      ``rebuild({})`` must equal ``algorithm``. Evaluation applies the base
      algorithm's ``eval_apply``.
    cohort_table: optional ``[R, C]`` int cohort ids per round (a reference
      protocol's client stream); round ``t`` uses row ``t``; running past
      round ``R - 1`` raises.

  Raises:
    ValueError: an unknown ``data_placement``, ``eval_batch_size < 1``, an
      invalid execution, or a ``cohort_table`` whose ids are out of range.
  """

  def __init__(self, algorithm: Algorithm, apply_fn: Callable[..., jax.Array], data: Any, *,
               seed: int, participation: float, execution: backend_lib.Execution,
               eval_batch_size: int | None = None, finetune: Any = None, donate: bool = True,
               data_placement: str = "replicated",
               rebuild: Callable[[Mapping[str, Any]], Algorithm] | None = None,
               cohort_table: np.ndarray | None = None):
    if eval_batch_size is None:
      eval_batch_size = execution_lib.default_eval_batch_size()
    if int(eval_batch_size) < 1:
      raise ValueError(f"eval_batch_size={eval_batch_size}; allowed: >= 1")
    self.algorithm = algorithm
    self.rebuild = rebuild
    self.apply_fn = algorithm.eval_apply or apply_fn
    self.num_clients = int(data.train_idx.shape[0])
    self.train_counts = np.asarray(data.train_counts)
    self.test_counts = np.asarray(data.test_counts)
    self.backend = backend_lib.make_backend(execution, self.num_clients)
    self.data = self.backend.put_data(data.x, data.y, data.train_idx, data.train_counts,
                                      data.test_idx, data.test_counts, placement=data_placement)
    if cohort_table is not None:
      cohort_table = np.asarray(cohort_table, np.int32)
      if cohort_table.ndim != 2 or cohort_table.min() < 0 or cohort_table.max() >= self.num_clients:
        raise ValueError(f"cohort_table: shape {cohort_table.shape}, ids must be in "
                         f"0..{self.num_clients - 1}")
      self.cohort_size = int(cohort_table.shape[1])
    else:
      self.cohort_size = rounds.cohort_size(self.num_clients, participation)
    self.plan = rounds.CohortPlan(self.num_clients, self.cohort_size,
                                  self.backend.padded_size(self.cohort_size),
                                  None if cohort_table is None else rounds.CohortTable(cohort_table))
    # No batch larger than the widest client test set: padding rows cost a full
    # forward pass each (50 test examples in batches of 256 = 5x work).
    self.eval_batch_size = max(1, min(int(eval_batch_size), int(data.test_idx.shape[1])))
    root = rng.root_key(seed)
    self.keys = rounds.run_keys(seed)
    self.init_key = rng.stream_key(root, "init")
    self.algorithm_init_key = rng.stream_key(root, "algorithm_init")
    self.sample_key, self.train_key = self.keys.sample, self.keys.train
    self.eval_key = rng.stream_key(root, "eval")
    self.task = rounds.client_task(algorithm)
    self.finetune = finetune
    self._ft_task = None if finetune is None else evaluation.finetune_task(algorithm, finetune)
    self._donated = (1,) if donate else ()
    self._sample = jax.jit(rounds.cohort_ids, static_argnums=0)
    self._shared = jax.jit(rounds.round_shared)
    self._batch_fn = functools.partial(evaluation.batch_sums, self.apply_fn, self.eval_batch_size)

  # -- state ---------------------------------------------------------------------
  def init(self, params: PyTree) -> SimState:
    """Initial state from the initial model ``params`` (theta^0)."""
    server, clients = self.algorithm.init(params, self.num_clients, key=self.algorithm_init_key)
    return self.place(SimState(server, clients, 0))

  def place(self, state: SimState) -> SimState:
    """Puts a state on the mesh (server replicated, clients split); identity
    without a mesh. Used for initial and restored states."""
    return SimState(*self.backend.place_state(state.server, state.clients), state.round)

  def cohort(self, round_idx: int) -> np.ndarray:
    """Sorted client ids of round ``round_idx`` (host numpy, ``[C]``).

    Raises:
      ValueError: past the last row of a ``cohort_table``.
    """
    self._check_table(round_idx + 1)
    return np.asarray(self._sample(self.plan, self.sample_key, round_idx))

  def _check_table(self, end_round: int) -> None:
    if self.plan.table is not None and end_round > self.plan.table.shape[0]:
      raise ValueError(f"round {end_round - 1} is past the cohort table's "
                       f"{self.plan.table.shape[0]} rounds (train.rounds)")

  # -- rounds --------------------------------------------------------------------
  def _finish(self, server, clients, outputs, ids, valid, round_idx, sampled):
    return rounds.finish_round(self.algorithm, server, clients, outputs, ids, valid,
                               self.data.train_counts, round_idx, self.keys, sampled)

  def _round(self, server, clients, data, ids, valid, round_idx, sampled):
    return rounds.round_fn(self.algorithm, self.task, self.backend.map_cohort, server, clients,
                           data, ids, valid, round_idx, self.keys, sampled)

  def is_full_round(self, round_idx: int) -> bool:
    """Whether round ``round_idx`` is one of the algorithm's full-participation
    rounds (``Algorithm.full_rounds``: every client trains)."""
    return int(round_idx) in self.algorithm.full_rounds

  def round_cohort(self, round_idx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [C'], valid [C'], sampled [C'])`` of round ``round_idx`` (host
    numpy): the padded sampled cohort, or every client in a full round
    (``sampled`` then marks the normally sampled ones)."""
    picked = self.cohort(round_idx)
    if not self.is_full_round(round_idx):
      ids, valid = self.backend.pad_cohort(picked)
      return ids, valid, valid
    ids, valid = rounds.full_ids(self.num_clients, self.backend.padded_size(self.num_clients))
    return ids, valid, valid & np.isin(ids, picked)

  def run_round(self, state: SimState) -> tuple[SimState, Metrics]:
    """One round; returns the new state and host-side scalar metrics. In a
    full-participation round (:meth:`is_full_round`) every client trains
    (one program with ``C = N``).

    With ``donate=True`` (the default) ``state.clients`` is consumed."""
    ids, valid, sampled = self.round_cohort(state.round)
    b = self.backend
    if b.fused:
      prog = b.jit(self._round, donate=self._donated, state_outputs=True)
      ids_, valid_, r, sampled_ = b.put((ids, valid, np.int32(state.round), sampled))
      server, clients, metrics = prog(state.server, state.clients, self.data, ids_, valid_, r,
                                      sampled_)
    else:
      shared = self._shared(state.server, self.keys, state.round)
      counts = self.train_counts[np.minimum(ids, self.num_clients - 1)]
      outputs = b.map_cohort(self.task, shared, state.clients, self.data, ids, counts)
      finish = b.jit(self._finish, donate=self._donated)
      server, clients, metrics = finish(state.server, state.clients, outputs, ids, valid,
                                        np.int32(state.round), sampled)
    metrics = {k: float(v) for k, v in metrics.items()}
    return SimState(server, clients, state.round + 1), metrics

  def compile_round(self, state: SimState) -> dict[str, float]:
    """AOT-compiles and installs every program :meth:`run_round` runs from
    ``state`` (:func:`fedjax_pfl.core.aot.compile_round`); returns
    ``{program: compile seconds, ..., "total": seconds}``."""
    return aot.compile_round(self, state)

  def lower_round(self, state: SimState):
    """The lowered program of one round on the compiled backend
    (:func:`fedjax_pfl.core.aot.lower_round`).

    Raises:
      ValueError: on the host backend.
    """
    return aot.lower_round(self, state)

  def _rounds(self, server, clients, data, first_round, keys, num_rounds: int):
    return rounds.rounds_fn(self.algorithm, self.task, self.backend.map_cohort, self.plan,
                            server, clients, data, first_round, keys, num_rounds)

  def run_rounds(self, state: SimState, num_rounds: int) -> tuple[SimState, list[Metrics]]:
    """``num_rounds`` rounds; returns the new state and one metrics dict per round.

    On the compiled backend all rounds are ONE program (a ``lax.scan`` over
    rounds that samples each cohort on device); the host syncs once at the end
    and one program is compiled per distinct ``num_rounds``; the scan is split
    at the algorithm's full-participation rounds, each of which runs as its
    own program (:meth:`run_round`). Otherwise this loops :meth:`run_round`.
    Results equal ``num_rounds`` calls of :meth:`run_round` (float reductions
    may differ in the last bits).

    Raises:
      ValueError: if ``num_rounds < 1``.
    """
    rounds.check_num_rounds(num_rounds)
    if not self.backend.fused:
      records = []
      for _ in range(num_rounds):
        state, metrics = self.run_round(state)
        records.append(metrics)
      return state, records
    self._check_table(state.round + num_rounds)
    records = []
    for _, length, full in rounds.segments(state.round, num_rounds,
                                           self.algorithm.full_rounds):
      if full:
        state, metrics = self.run_round(state)
        records.append(metrics)
        continue
      prog = self.backend.jit(self._rounds, donate=self._donated, static=(5,),
                              state_outputs=True)
      first = self.backend.put(jnp.int32(state.round))
      server, clients, stacked = prog(state.server, state.clients, self.data, first, self.keys,
                                      length)
      state = SimState(server, clients, state.round + length)
      records.extend(rounds.per_round(stacked))
    return state, records

  def _evaluate_traced(self, server, clients, data, prepare):
    one = functools.partial(evaluation.client_sums, self._batch_fn, self.eval_batch_size,
                            prepare)
    ids = jnp.arange(self.num_clients, dtype=jnp.int32)
    return self.backend.map_clients(one, server, clients, data, ids)

  def _evaluate_with(self, prepare, shared, stacked) -> Metrics:
    sums = self.backend.evaluate_sums(prepare, self._batch_fn, shared, stacked, self.data,
                                      self.test_counts, self.eval_batch_size,
                                      self._evaluate_traced)
    return evaluation.summarize_eval(sums[:, 0], sums[:, 1], self.test_counts)

  def _personalized_traced(self, alg: Algorithm, server, clients, data, round_idx):
    """``[N]`` stacked models of ``alg.personalize_with_data`` over every
    client's train data (mapped like evaluation; keys from the ``eval``
    stream, (seed, round, client id))."""
    key = jax.random.fold_in(self.eval_key, round_idx)

    def one(shared, client, cdata, cid):
      return evaluation.personalized(alg, shared, client, cdata, cid, round_idx, key)
    ids = jnp.arange(self.num_clients, dtype=jnp.int32)
    return self.backend.map_clients(one, server, clients, data, ids, test=False, with_ids=True)

  def _personalize_all(self, server, clients, data, round_idx):
    return self._personalized_traced(self.algorithm, server, clients, data, round_idx)

  def evaluate(self, state: SimState) -> Metrics:
    """Evaluates every client with ``personalize``: pooled (sample-weighted)
    accuracy, unweighted client-mean accuracy, pooled loss, per-client lists
    (:func:`~fedjax_pfl.core.evaluation.summarize_eval`). With
    ``personalize_with_data`` every client's model is first built from its
    train data (one program, all clients), then evaluated as its own model."""
    if self.algorithm.personalize_with_data is not None:
      models = self.backend.jit(self._personalize_all)(
          state.server, state.clients, self.data, self.backend.put(jnp.int32(state.round)))
      return self._evaluate_with(evaluation.own_params, (), models)
    return self._evaluate_with(self.algorithm.personalize, state.server, state.clients)

  def _finetune_all(self, server, clients, data, ids, key, round_idx):
    return self.backend.map_cohort(self._ft_task, (server, key, round_idx), clients, data, ids)

  def evaluate_finetuned(self, state: SimState) -> Metrics:
    """FL-bench's "after fine-tuning" numbers: every client trains its
    personalized model for ``finetune`` epochs on its own train set (keys from
    the ``eval`` stream, (seed, round, client id)), then is evaluated. The
    state is not changed.

    Raises:
      ValueError: without a ``finetune`` program.
    """
    if self.finetune is None:
      raise ValueError("evaluate_finetuned needs Simulation(finetune=...)")
    ids, _ = self.backend.pad_cohort(np.arange(self.num_clients))
    key = jax.random.fold_in(self.eval_key, state.round)
    r = np.int32(state.round)
    if self.backend.fused:
      tuned = self.backend.jit(self._finetune_all)(state.server, state.clients, self.data,
                                                   *self.backend.put((ids, key, r)))
    else:
      counts = self.train_counts[np.minimum(ids, self.num_clients - 1)]
      tuned = self.backend.map_cohort(self._ft_task, (state.server, key, r), state.clients,
                                      self.data, ids, counts)
    tuned = jax.tree.map(lambda a: a[:self.num_clients], tuned)
    return self._evaluate_with(evaluation.own_params, (), tuned)

