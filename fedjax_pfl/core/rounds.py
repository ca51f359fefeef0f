"""The one round skeleton and the evaluation of all clients.

:class:`Simulation` binds an :class:`~fedjax_pfl.core.algorithm.Algorithm`, a
model's ``apply`` function and the resident data, and runs rounds:

1. sample the cohort (uniform without replacement, key = (seed, round));
2. map ``broadcast -> local_train -> finalize`` over the cohort (executor);
3. ``aggregate`` with train-set-size weights (0 for padding);
4. scatter the new client states into the stacked ``[N, ...]`` state.

With ``vmap`` + ``scan`` the whole round is one compiled program, and
:meth:`Simulation.run_rounds` puts many rounds (cohort sampling included) into
one compiled ``lax.scan``, so the host syncs only for logging, evaluation and
checkpoints. :meth:`Simulation.run_rounds_batch` vmaps that loop over S runs
that differ in seed and in float hyperparameters (learning rate, FedOBP's
quantile), rebuilding the algorithm from each run's traced values.
"""

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_pfl.core import cohort as cohort_lib
from fedjax_pfl.core import rng
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import ClientData
from fedjax_pfl.types import Metrics, PyTree


class SimState(NamedTuple):
  """Server state, stacked client state ``[N, ...]`` and the next round index."""
  server: PyTree
  clients: PyTree
  round: int


def cohort_size(num_clients: int, participation: float) -> int:
  """``C = max(1, floor(rho * N))``."""
  return max(1, min(num_clients, math.floor(participation * num_clients + 1e-9)))


def _mean_valid(metrics: Metrics, valid: jax.Array) -> Metrics:
  w = valid.astype(jnp.float32)
  return {k: jnp.sum(v * w) / jnp.maximum(jnp.sum(w), 1.0) for k, v in metrics.items()}


class Simulation:
  """Runs an algorithm over resident federated data (see module docstring).

  Args:
    algorithm: the algorithm's slots.
    apply_fn: ``(params, x [B, ...]) -> logits [B, K]`` for evaluation.
    data: host-side federated data (``fedjax_pfl.data.FederatedData``).
    seed: root seed of all keys (init, sampling, training).
    participation: fraction ``rho`` in (0, 1] of clients per round.
    execution: client-parallel strategy (``cohort.Execution``).
    eval_batch_size: test examples per forward pass.
    finetune: optional ``LocalProgram`` for :meth:`evaluate_finetuned`.
    donate: if True (default), :meth:`run_round` donates the stacked client
      state of its input to the round program, which updates it in place:
      round time and peak memory then do not grow with N, but the input
      ``SimState.clients`` is invalid afterwards (keep a copy, e.g.
      ``jax.tree.map(jnp.copy, state.clients)``, or pass False to reuse old
      states).
    data_placement: ``"replicated"`` (default): the pooled dataset on every
      device; ``"by_client"``: client-major layout (``cohort.ClientMajorData``)
      split over the ``clients`` mesh axis like the client state, so each
      process and device holds only its clients' examples (costs padding to
      the largest client; results are the same).
    rebuild: optional ``hparams -> Algorithm``: the same algorithm with some
      float hyperparameters replaced (``{name: scalar}``, e.g.
      ``{"train.lr": 0.05, "algo.quantile": 0.99}``; values may be JAX
      tracers). It lets :meth:`run_rounds_batch` run S runs that differ in
      those hyperparameters as one program; ``rebuild({})`` must equal
      ``algorithm``. Evaluation applies the base algorithm's ``eval_apply``,
      so it must not depend on the replaced values (the client learning rate
      and FedOBP's quantile enter only training and ``personalize``).

  Raises:
    ValueError: on an unknown ``data_placement``.
  """

  def __init__(self, algorithm: Algorithm, apply_fn: Callable[..., jax.Array], data: Any, *,
               seed: int, participation: float, execution: cohort_lib.Execution,
               eval_batch_size: int = 256, finetune: Any = None, donate: bool = True,
               data_placement: str = "replicated",
               rebuild: Callable[[Mapping[str, Any]], Algorithm] | None = None):
    self.algorithm = algorithm
    self.rebuild = rebuild
    self.apply_fn = algorithm.eval_apply or apply_fn
    self.num_clients = int(data.train_idx.shape[0])
    self.cohort_size = cohort_size(self.num_clients, participation)
    self.train_counts = np.asarray(data.train_counts)
    self.test_counts = np.asarray(data.test_counts)
    self.executor = cohort_lib.Executor(execution, self.num_clients)
    arrays = (data.x, data.y, data.train_idx, data.train_counts, data.test_idx, data.test_counts)
    if data_placement == "by_client":
      self.data = self.executor.put_client_major(*arrays)
    elif data_placement == "replicated":
      self.data = self.executor.put(cohort_lib.DeviceData(*(jnp.asarray(a) for a in arrays)))
    else:
      raise ValueError(f"data_placement={data_placement!r}; allowed: replicated, by_client")
    if int(eval_batch_size) < 1:
      raise ValueError(f"eval_batch_size={eval_batch_size}; allowed: >= 1")
    # No batch larger than the widest client test set: padding rows cost
    # a full forward pass each (50 test examples in batches of 256 = 5x work).
    self.eval_batch_size = max(1, min(int(eval_batch_size), int(data.test_idx.shape[1])))
    root = rng.root_key(seed)
    self.init_key = rng.stream_key(root, "init")
    self.sample_key = rng.stream_key(root, "sample")
    self.train_key = rng.stream_key(root, "train")
    self.eval_key = rng.stream_key(root, "eval")
    self.task = self._make_task(algorithm)
    self.finetune = finetune
    if finetune is not None:
      self._ft_task = self._finetune_task()
      self._finetune_fused = jax.jit(lambda server, clients, data, ids, key: (
          self.executor.map_traced(self._ft_task, (server, key), clients, data, ids)))
    self._sample = jax.jit(rng.sample_cohort, static_argnums=(2, 3))
    self._round_key = jax.jit(jax.random.fold_in)
    # Argument 1 is the stacked [N, ...] client state (see `donate`).
    donated = (1,) if donate else ()
    self._finish_round = jax.jit(self._aggregate_and_scatter, donate_argnums=donated)
    rep, by_client = self.executor.replicated(), self.executor.client_sharding()
    # The data is an argument of every program (never closed over): a split
    # client-major layout spans devices of other processes.
    self._multi_round = jax.jit(self._fused_rounds, static_argnums=5, donate_argnums=donated,
                                **({} if rep is None else
                                   {"out_shardings": (rep, by_client, rep)}))
    self._multi_round_batch = jax.jit(self._fused_rounds_batch, static_argnums=5,
                                      donate_argnums=donated)
    self._eval_batch = jax.jit(self._evaluate_batch_traced)
    if rep is None:
      self._fused_round = jax.jit(self._fused, donate_argnums=donated)
      self._eval_traced = jax.jit(self._evaluate_traced, static_argnums=3)
    else:  # outputs the host can read on every process; client state split over clients
      self._fused_round = jax.jit(self._fused, out_shardings=(rep, by_client, rep),
                                  donate_argnums=donated)
      self._eval_traced = jax.jit(self._evaluate_traced, out_shardings=rep, static_argnums=3)

  # -- per-client pieces ----------------------------------------------------
  def _make_task(self, alg: Algorithm) -> cohort_lib.ClientTask:
    prog = alg.local_train

    def prologue(shared, client, cdata: ClientData, cid):
      server, round_key = shared
      params, extra = alg.broadcast(server, client)
      return prog.init(params, cdata, jax.random.fold_in(round_key, cid)), extra

    def step(state, t, cdata):
      carry, extra = state
      return prog.step(carry, t, cdata), extra

    def epilogue(shared, client, state):
      carry, extra = state
      trained, train_metrics = prog.finish(carry)
      upload, new_client, metrics = alg.finalize(shared[0], client, trained, extra)
      comm = default_communication(upload, trained)
      return upload, new_client, {**train_metrics, **comm, **metrics}

    return cohort_lib.ClientTask(prologue, step, epilogue, prog.num_steps, prog.active_steps)

  # -- rounds ---------------------------------------------------------------
  def init(self, params: PyTree) -> SimState:
    """Initial state from the initial model ``params`` (theta^0)."""
    server, clients = self.algorithm.init(params, self.num_clients)
    return self.place(SimState(server, clients, 0))

  def place(self, state: SimState) -> SimState:
    """Puts a state on the mesh (server replicated, clients split); identity
    without a mesh. Used for initial and restored states."""
    ex = self.executor
    return SimState(ex.put(state.server), ex.put(state.clients, ex.client_sharding()),
                    state.round)

  def cohort(self, round_idx: int) -> np.ndarray:
    """Sorted client ids of round ``round_idx`` (host numpy, ``[C]``)."""
    return np.asarray(self._sample(self.sample_key, round_idx, self.num_clients, self.cohort_size))

  def _aggregate_and_scatter(self, server, clients, outputs, ids, valid, alg=None):
    uploads, new_clients, metrics = outputs
    weights = self.data.train_counts[jnp.minimum(ids, self.num_clients - 1)] * valid
    alg = self.algorithm if alg is None else alg
    server, agg_metrics = alg.aggregate(server, uploads, weights.astype(jnp.float32))
    clients = cohort_lib.scatter(clients, ids, new_clients, valid)
    w = valid.astype(jnp.float32)
    totals = {f"round_{k}": jnp.sum(metrics[k] * w) for k in ("uplink_bytes", "downlink_bytes")}
    totals["round_clients"] = jnp.sum(w)
    return server, clients, {**_mean_valid(metrics, valid), **totals, **agg_metrics}

  def _fused(self, server, clients, data, ids, valid, round_key, alg=None):
    alg = self.algorithm if alg is None else alg
    task = self.task if alg is self.algorithm else self._make_task(alg)
    outputs = self.executor.map_traced(task, (server, round_key), clients, data, ids)
    return self._aggregate_and_scatter(server, clients, outputs, ids, valid, alg)

  def _traced_cohort(self, round_idx: jax.Array, sample_key) -> tuple[jax.Array, jax.Array]:
    """`cohort` + `Executor.pad_cohort` inside a trace (same ids, same padding)."""
    ids = rng.sample_cohort(sample_key, round_idx, self.num_clients, self.cohort_size)
    pad = self.executor.padded_size(self.cohort_size) - self.cohort_size
    ids = jnp.concatenate([ids, jnp.full((pad,), self.num_clients, jnp.int32)])
    return ids, ids < self.num_clients

  def _fused_rounds(self, server, clients, data, first_round, keys, num_rounds: int,
                    alg=None):
    sample_key, train_key = keys

    def body(carry, round_idx):
      ids, valid = self._traced_cohort(round_idx, sample_key)
      key = jax.random.fold_in(train_key, round_idx)
      server, clients, metrics = self._fused(*carry, data, ids, valid, key, alg)
      return (server, clients), metrics
    rounds = first_round + jnp.arange(num_rounds, dtype=jnp.int32)
    (server, clients), metrics = jax.lax.scan(body, (server, clients), rounds)
    return server, clients, metrics

  def run_rounds(self, state: SimState, num_rounds: int) -> tuple[SimState, list[Metrics]]:
    """``num_rounds`` rounds; returns the new state and one metrics dict per round.

    With a fused executor (vmap + scan) all rounds are ONE compiled program: a
    ``lax.scan`` over rounds that samples each cohort from (seed, round),
    trains, aggregates and scatters on device; the host syncs once at the end.
    One program is compiled per distinct ``num_rounds``. Otherwise this loops
    :meth:`run_round`. Results equal ``num_rounds`` calls of :meth:`run_round`
    (same keys, cohorts and order of operations; float reductions may differ in
    the last bits). With ``donate=True`` ``state.clients`` is consumed.

    Raises:
      ValueError: if ``num_rounds < 1``.
    """
    _check_num_rounds(num_rounds)
    if not self.executor.fused:
      records = []
      for _ in range(num_rounds):
        state, metrics = self.run_round(state)
        records.append(metrics)
      return state, records
    first = self.executor.put(jnp.int32(state.round))
    keys = (self.sample_key, self.train_key)
    server, clients, stacked = self._multi_round(state.server, state.clients, self.data, first,
                                                 keys, num_rounds)
    return SimState(server, clients, state.round + num_rounds), _per_round(stacked)

  # -- several runs (seeds, hyperparameters) in one program -------------------
  def _check_batching(self) -> None:
    if not self.executor.fused or self.executor.mesh is not None:
      raise ValueError("batching runs (seeds, hyperparameters) needs system.parallelism=vmap, "
                       "system.step_loop=scan and one device (system.num_devices=1)")

  def _algorithm_for(self, hparams: Mapping[str, Any]) -> Algorithm:
    """The algorithm with ``hparams`` replaced (the base one if empty)."""
    if not hparams:
      return self.algorithm
    if self.rebuild is None:
      raise ValueError(f"hyperparameters {sorted(hparams)} can only be batched with "
                       "Simulation(rebuild=...)")
    return self.rebuild(dict(hparams))

  def _stacked_hparams(self, hparams: Mapping[str, Sequence[float]] | None,
                       num_runs: int) -> dict[str, jax.Array]:
    hparams = dict(hparams or {})
    for name, values in hparams.items():
      if len(values) != num_runs:
        raise ValueError(f"hparams[{name!r}] has {len(values)} values for {num_runs} runs")
    return {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in hparams.items()}

  def init_batch(self, params_per_run: Sequence[PyTree],
                 hparams: Mapping[str, Sequence[float]] | None = None) -> SimState:
    """Stacked initial state ``[S, ...]`` of S runs: one initial model per run
    and, optionally, per-run values of float hyperparameters (``hparams``:
    ``{name: S values}``, names as understood by the ``rebuild`` function)."""
    self._check_batching()
    hparams = dict(hparams or {})
    self._stacked_hparams(hparams, len(params_per_run))
    states = [self._algorithm_for({k: float(v[i]) for k, v in hparams.items()})
              .init(p, self.num_clients) for i, p in enumerate(params_per_run)]
    server = jax.tree.map(lambda *xs: jnp.stack(xs), *[s[0] for s in states])
    clients = jax.tree.map(lambda *xs: jnp.stack(xs), *[s[1] for s in states])
    return SimState(server, clients, 0)

  def run_rounds_batch(self, state: SimState, seeds: Sequence[int], num_rounds: int,
                       hparams: Mapping[str, Sequence[float]] | None = None,
                       ) -> tuple[SimState, list[list[Metrics]]]:
    """S runs as ONE program: ``jax.vmap`` over the runs of :meth:`run_rounds`'
    compiled loop (state stacked ``[S, ...]`` from :meth:`init_batch`). Run
    ``s`` has seed ``seeds[s]`` and, for each ``name`` in ``hparams``, the
    value ``hparams[name][s]`` (a traced float32 scalar handed to
    ``rebuild``); it gets exactly the keys, cohorts and results of a
    ``Simulation`` built with that seed and those values (float reductions
    aside). Each distinct set of ``hparams`` names compiles one program.

    Returns:
      The new stacked state and, per run, one metrics dict per round.

    Raises:
      ValueError: without vmap + scan on one device, ``num_rounds < 1``,
        ``hparams`` without ``rebuild``, or value lists not of length S.
    """
    self._check_batching()
    _check_num_rounds(num_rounds)
    stacked_hp = self._stacked_hparams(hparams, len(seeds))
    roots = [rng.root_key(int(s)) for s in seeds]
    keys = (jnp.stack([rng.stream_key(r, "sample") for r in roots]),
            jnp.stack([rng.stream_key(r, "train") for r in roots]))
    server, clients, stacked = self._multi_round_batch(
        state.server, state.clients, self.data, jnp.int32(state.round), keys, num_rounds,
        stacked_hp)
    records = [_per_round(jax.tree.map(lambda v: v[i], stacked))  # [S, R] -> run i
               for i in range(len(seeds))]
    return SimState(server, clients, state.round + num_rounds), records

  def _fused_rounds_batch(self, server, clients, data, first_round, keys, num_rounds: int,
                          hparams):
    def one_run(s, c, k, hp):
      # Built inside the trace: hyperparameters are this run's traced values.
      alg = self._algorithm_for(hp)
      return self._fused_rounds(s, c, data, first_round, k, num_rounds, alg)
    return jax.vmap(one_run)(server, clients, keys, hparams)  # vmap over runs, not clients

  def _evaluate_batch_traced(self, server, clients, data, hparams):
    def one_run(sv, cl, hp):
      return self._evaluate_traced(sv, cl, data, self._algorithm_for(hp).personalize)
    return jax.vmap(one_run)(server, clients, hparams)  # vmap over runs, not clients

  def evaluate_batch(self, state: SimState,
                     hparams: Mapping[str, Sequence[float]] | None = None) -> list[Metrics]:
    """:meth:`evaluate` of each run of a stacked ``[S, ...]`` state, in one
    program (``hparams`` as given to :meth:`run_rounds_batch`)."""
    self._check_batching()
    num_runs = int(jax.tree.leaves((state.server, state.clients))[0].shape[0])
    stacked_hp = self._stacked_hparams(hparams, num_runs)
    sums = np.asarray(self._eval_batch(state.server, state.clients, self.data, stacked_hp))
    return [summarize_eval(s[:, 0], s[:, 1], self.test_counts) for s in sums]  # [S, N, 2]

  def unstack_run(self, state: SimState, index: int) -> SimState:
    """Run ``index`` of a stacked state, as a plain single-run ``SimState``."""
    take = lambda a: a[index]
    return SimState(jax.tree.map(take, state.server), jax.tree.map(take, state.clients),
                    state.round)

  def run_round(self, state: SimState) -> tuple[SimState, Metrics]:
    """One round; returns the new state and host-side scalar metrics.

    With ``donate=True`` (the default) ``state.clients`` is consumed."""
    ids, valid = self.executor.pad_cohort(self.cohort(state.round))
    round_key = self._round_key(self.train_key, state.round)
    if self.executor.fused:
      ids_, valid_, key_ = self.executor.put((ids, valid, round_key))
      server, clients, metrics = self._fused_round(state.server, state.clients, self.data,
                                                   ids_, valid_, key_)
    else:
      counts = self.train_counts[np.minimum(ids, self.num_clients - 1)]
      outputs = self.executor.map_host(self.task, (state.server, round_key), state.clients,
                                       self.data, ids, counts)
      server, clients, metrics = self._finish_round(state.server, state.clients, outputs,
                                                    ids, valid)
    metrics = {k: float(v) for k, v in metrics.items()}
    return SimState(server, clients, state.round + 1), metrics

  # -- evaluation -----------------------------------------------------------
  def _batch_sums(self, params, cdata: ClientData, b) -> jax.Array:
    bs = self.eval_batch_size
    pos = b * bs + jnp.arange(bs)
    mask = pos < cdata.count
    examples = cdata.idx[jnp.minimum(pos, cdata.idx.shape[0] - 1)]
    logits = self.apply_fn(params, cdata.x[examples])
    labels = cdata.y[examples]
    correct = jnp.sum(mask & (jnp.argmax(logits, -1) == labels))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.stack([correct.astype(jnp.float32), jnp.sum(jnp.where(mask, ce, 0.0))])

  def _evaluate_traced(self, server, clients, data, prepare):
    num_batches = -(-data.test_idx.shape[1] // self.eval_batch_size)

    def one(shared, client, cdata):
      params = prepare(shared, client)
      sums = jax.lax.map(lambda b: self._batch_sums(params, cdata, b), jnp.arange(num_batches))
      return jnp.sum(sums, axis=0)
    ids = jnp.arange(self.num_clients, dtype=jnp.int32)
    return self.executor.map_clients(one, server, clients, data, ids)

  def _evaluate_with(self, prepare, shared, stacked) -> Metrics:
    if self.executor.execution.parallelism == "vmap":
      sums = np.asarray(self._eval_traced(shared, stacked, self.data, prepare))
    else:
      per_client = self.executor.eval_host(prepare, self._batch_sums, shared, stacked,
                                           self.data, self.test_counts, self.eval_batch_size)
      sums = np.stack([np.zeros(2) if s is None else np.asarray(s) for s in per_client])
    return summarize_eval(sums[:, 0], sums[:, 1], self.test_counts)

  def evaluate(self, state: SimState) -> Metrics:
    """Evaluates every client with ``personalize``: pooled (sample-weighted)
    accuracy, unweighted client-mean accuracy, pooled loss, per-client lists."""
    return self._evaluate_with(self.algorithm.personalize, state.server, state.clients)

  def _finetune_task(self) -> cohort_lib.ClientTask:
    alg, ft = self.algorithm, self.finetune

    def prologue(shared, client, cdata, cid):
      server, key = shared
      return ft.init(alg.personalize(server, client), cdata, jax.random.fold_in(key, cid))

    def epilogue(shared, client, state):
      return ft.finish(state)[0]
    return cohort_lib.ClientTask(prologue, ft.step, epilogue, ft.num_steps, ft.active_steps)

  def evaluate_finetuned(self, state: SimState) -> Metrics:
    """FL-bench's "after fine-tuning" numbers: every client trains its
    personalized model for ``finetune`` epochs on its own train set (keys from
    the ``eval`` stream, (seed, round, client id)), then is evaluated. The
    state is not changed. Requires a ``finetune`` program."""
    if self.finetune is None:
      raise ValueError("evaluate_finetuned needs Simulation(finetune=...)")
    ids, valid = self.executor.pad_cohort(np.arange(self.num_clients))
    key = self._round_key(self.eval_key, state.round)
    if self.executor.fused:
      tuned = self._finetune_fused(state.server, state.clients, self.data,
                                   *self.executor.put((ids, key)))
    else:
      counts = self.train_counts[np.minimum(ids, self.num_clients - 1)]
      tuned = self.executor.map_host(self._ft_task, (state.server, key), state.clients,
                                     self.data, ids, counts)
    tuned = jax.tree.map(lambda a: a[:self.num_clients], tuned)
    return self._evaluate_with(_own_params, (), tuned)


def _check_num_rounds(num_rounds: int) -> None:
  if num_rounds < 1:
    raise ValueError(f"num_rounds={num_rounds}; allowed: >= 1")


def _per_round(stacked: Metrics) -> list[Metrics]:
  """``{key: [R] array}`` -> R host-side dicts of floats."""
  stacked = {k: np.asarray(v) for k, v in stacked.items()}
  return [{k: float(v[r]) for k, v in stacked.items()}
          for r in range(len(next(iter(stacked.values()))))]


def _own_params(shared, client):
  del shared
  return client


BYTES_PER_VALUE = 4  # fp32
MIB = 2 ** 20


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


def summarize_eval(correct: np.ndarray, loss_sum: np.ndarray, counts: np.ndarray) -> Metrics:
  """Pooled and client-mean accuracy from per-client sums (host numpy)."""
  counts = np.asarray(counts, np.float64)
  has = counts > 0
  per_client = np.where(has, correct / np.maximum(counts, 1), np.nan)
  return {
      "accuracy": float(correct.sum() / max(counts.sum(), 1)),
      "client_mean_accuracy": float(np.nanmean(per_client[has])) if has.any() else float("nan"),
      "loss": float(loss_sum.sum() / max(counts.sum(), 1)),
      "client_mean_loss": (float(np.mean(loss_sum[has] / counts[has])) if has.any()
                           else float("nan")),
      "client_accuracy": [None if not h else float(a) for a, h in zip(per_client, has)],
  }
