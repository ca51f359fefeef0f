"""The run loop: config -> data -> model -> algorithm -> rounds -> results.

Outputs in ``workdir``: ``config.json``, ``metrics.jsonl`` (one JSON object per
evaluation), ``metrics.csv`` (its scalars, one row per evaluation),
``tb/`` (TensorBoard event files), ``summary.json``, ``summary.md``,
``checkpoints/`` and the PNG plots ``accuracy.png``, ``loss.png``,
``client_accuracy_hist.png`` (:mod:`fedjax_pfl.outputs`,
:mod:`fedjax_pfl.plots`); all but the event files written atomically, JSON
always valid (a non-finite number is written as null).

``config.json`` holds the config plus a ``run`` entry: the resolved ``auto``
choices (execution, round loop, model, convolution, data source), the
environment (jax/jaxlib versions, device kind and count, git commit) and the
run's fingerprint (:mod:`fedjax_pfl.runinfo`). A new run refuses a workdir
that holds a run unless ``overwrite``; a resumed run is checked against the
fingerprint stored in its checkpoint.
"""

import dataclasses
import math
import os
import sys
import time
from typing import Any, Callable

import jax

from fedjax_pfl import algorithms, io, outputs, runinfo
from fedjax_pfl import config as config_lib
from fedjax_pfl.core import backend, rng
from fedjax_pfl.core.local import LocalSpec, make_optimizer
from fedjax_pfl.core.rounds import MIB
from fedjax_pfl.core.simulation import Simulation
from fedjax_pfl.data import flbench_client_stream, load_federated
from fedjax_pfl.errors import ConfigError, DivergenceError
from fedjax_pfl.models import get_model
from fedjax_pfl.models.base import resolve_model_name


def resolve_execution(system: config_lib.SystemConfig) -> backend.Execution:
  """``auto`` fields take the measured per-backend defaults; with
  ``system.lanes`` set they resolve to vmap + scan (packing needs both)."""
  default = backend.default_execution()
  if system.lanes is not None:
    default = backend.Execution(parallelism="vmap", step_loop="scan",
                                num_devices=default.num_devices)
  parallelism = default.parallelism if system.parallelism == "auto" else system.parallelism
  step_loop = default.step_loop if system.step_loop == "auto" else system.step_loop
  num_devices = system.num_devices
  if num_devices is None and parallelism == "vmap":
    num_devices = default.num_devices
  return backend.Execution(parallelism=parallelism, step_loop=step_loop,
                          chunk_size=system.chunk_size, num_devices=num_devices,
                          lanes=system.lanes, eval_chunk_size=system.eval_chunk_size)


def load_data(cfg: config_lib.DataConfig):
  """Loads and partitions the dataset named in ``cfg`` (host numpy)."""
  return load_federated(
      cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, partition=cfg.partition,
      num_clients=cfg.num_clients, alpha=cfg.alpha, shards_per_client=cfg.shards_per_client,
      min_samples_per_client=cfg.min_samples_per_client, max_retries=cfg.max_retries,
      test_ratio=cfg.test_ratio, seed=cfg.seed, max_examples=cfg.max_examples,
      train_per_client=cfg.train_per_client, test_per_client=cfg.test_per_client,
      normalization=cfg.normalization)


def check_test_data(config: config_lib.ExperimentConfig, data) -> None:
  """Every client needs test examples (its accuracy is undefined otherwise).

  Raises:
    ConfigError: naming how many and which clients have none.
  """
  empty = [int(i) for i in (data.test_counts == 0).nonzero()[0]]
  if empty:
    field = ("data.test_per_client" if config.data.partition == "fling" else "data.test_ratio")
    value = getattr(config.data, field.split(".")[1])
    raise ConfigError(
        f"{field}={value!r} leaves {len(empty)} of {data.num_clients} clients without test "
        f"data (clients {empty[:10]}{' ...' if len(empty) > 10 else ''}); allowed: a larger "
        f"{field} or fewer data.num_clients")


def resolved_choices(config: config_lib.ExperimentConfig, sim: Simulation,
                     data) -> dict[str, Any]:
  """What ran for each ``auto`` choice: execution, round loop, model, conv, data
  source, evaluation batch size."""
  from fedjax_pfl.data.sources import resolve_source
  from fedjax_pfl.models.conv import resolve_conv
  ex = sim.backend.execution  # the execution the simulation was built with (auto resolved)
  model_name = resolve_model_name(config.model.name, data.x.shape[1:])
  compiled = sim.backend.fused and config.system.round_loop != "host"
  return {"parallelism": ex.parallelism, "step_loop": ex.step_loop,
          "chunk_size": ex.chunk_size, "num_devices": ex.num_devices, "lanes": ex.lanes,
          "round_loop": "compiled" if compiled else "host", "model": model_name,
          "conv": resolve_conv(config.model.conv), "eval_batch_size": sim.eval_batch_size,
          "eval_chunk_size": (ex.eval_chunk(sim.num_clients) if ex.parallelism == "vmap"
                              else 1),
          "source": resolve_source(config.data.dataset, config.data.source,
                                   config.data.data_dir)}


def initial_params(model, seed: int):
  """The initial model of a run with ``train.seed = seed`` (``init`` key stream)."""
  return model.init(rng.stream_key(rng.root_key(seed), "init"))


def algorithm_builder(config: config_lib.ExperimentConfig, model, params0,
                      num_slots: int) -> Callable[..., tuple[Any, LocalSpec]]:
  """``build(hparams={}) -> (Algorithm, LocalSpec)`` for ``config``.

  ``hparams`` maps batchable field names (:func:`batchable_fields`:
  ``"train.lr"``, ``"algo.<field>"``) to values that replace the config's;
  the values may be JAX tracers (one program for many learning rates or
  quantiles, :meth:`Simulation.run_rounds_batch`). Nothing is cached: every
  call builds fresh closures over the values it is given.

  Raises:
    ConfigError: (from ``build``) a name in ``hparams`` that is not batchable
      for this algorithm.
  """
  t = config.train

  def build(hparams=None):
    hparams = dict(hparams or {})
    unknown = set(hparams) - set(batchable_fields(config))
    if unknown:
      raise ConfigError(f"not batchable for {config.algorithm}: {sorted(unknown)}; "
                        f"batchable: {batchable_fields(config)}")
    lr = hparams.pop("train.lr", t.lr)
    algo = config.algo
    if hparams:
      algo = dataclasses.replace(algo, **{k.split(".", 1)[1]: v for k, v in hparams.items()})
    spec = LocalSpec(model.apply, make_optimizer(lr, t.momentum, t.weight_decay),
                     t.local_epochs, t.batch_size, num_slots, model.apply_train,
                     model.state_mask, lr, model.init)
    return algorithms.build(config.algorithm, algo, spec=spec, params=params0), spec
  return build


def build_simulation(config: config_lib.ExperimentConfig, data) -> tuple[Simulation, Any]:
  """Model, local program, algorithm and :class:`Simulation` for loaded data.

  The simulation can rebuild its algorithm with other batchable
  hyperparameters (:func:`algorithm_builder`), for :func:`run_batch`.

  Returns:
    ``(simulation, initial_params)``.
  """
  t = config.train
  model = get_model(config.model.name, data.x.shape[1:], data.num_classes,
                    config.model.conv, config.model.bn_running_var, config.model.pool)
  params0 = initial_params(model, t.seed)
  build = algorithm_builder(config, model, params0, int(data.train_idx.shape[1]))
  alg, spec = build()
  finetune = None
  if t.finetune_epochs and alg.eval_apply is None:
    finetune = spec.program(epochs=t.finetune_epochs)
  table = None
  if t.client_stream == "flbench":
    table = flbench_client_stream(t.seed, int(data.train_idx.shape[0]), t.participation,
                                  t.rounds)
  sim = Simulation(alg, model.apply, data, seed=t.seed, participation=t.participation,
                   execution=resolve_execution(config.system),
                   eval_batch_size=t.eval_batch_size, finetune=finetune,
                   data_placement=config.system.data_placement,
                   rebuild=lambda hparams: build(hparams)[0], cohort_table=table)
  return sim, params0


def _summary(config, records: list[dict], seconds: float) -> dict:
  best = max(records, key=lambda r: r["accuracy"])
  best_mean = max(records, key=lambda r: r["client_mean_accuracy"])
  final = records[-1]
  return {
      "algorithm": config.algorithm, "dataset": config.data.dataset,
      "rounds": final["round"], "final_accuracy": final["accuracy"],
      "final_client_mean_accuracy": final["client_mean_accuracy"],
      "final_loss": final["loss"],
      "best_accuracy": best["accuracy"], "best_round": best["round"],
      "best_client_mean_accuracy": best_mean["client_mean_accuracy"],
      **({"best_finetuned_accuracy": max(r["finetuned/accuracy"] for r in records)}
         if "finetuned/accuracy" in final else {}),
      **_comm_summary(final.get("comm_totals", {})),
      "seconds": round(seconds, 2),
  }


def _comm_summary(totals: dict) -> dict:
  """Run totals and per-client-round means of the communication (MiB = 2^20 B)."""
  n = max(totals.get("client_rounds", 0.0), 1.0)
  up, down = totals.get("uplink_MiB", 0.0), totals.get("downlink_MiB", 0.0)
  return {"total_uplink_MiB": round(up, 3), "total_downlink_MiB": round(down, 3),
          "uplink_MiB_per_client_round": round(up / n, 4),
          "downlink_MiB_per_client_round": round(down / n, 4)}


def summary_markdown(summary: dict) -> str:
  """``summary.md`` (accuracies in %; :func:`outputs.summary_markdown`)."""
  return outputs.summary_markdown(summary)


class _RunLog:
  """One run's outputs: records, communication totals, files, checkpoints."""

  def __init__(self, config: config_lib.ExperimentConfig, workdir: str, writer: bool,
               fingerprint: dict, run_info: dict):
    from fedjax_pfl.checkpoint import Checkpointer
    self.config, self.workdir, self.writer = config, workdir, writer
    self.fingerprint, self.run_info = fingerprint, run_info
    os.makedirs(workdir, exist_ok=True)
    self.ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    self.records: list[dict] = []
    self.comm: dict = {}
    self.tb: outputs.TensorBoardLog | None = None

  def restore(self, state):
    """The latest intact checkpoint's state (None: none), after checking that
    it belongs to this run; says so on stderr when it skipped corrupt ones."""
    restored = self.ckpt.restore(
        state, check=lambda fp: runinfo.check_fingerprint(self.workdir, fp, self.fingerprint))
    if restored is None:
      return None
    if self.writer:
      for step, reason in restored.skipped:
        print(f"warning: checkpoint of round {step} in {self.workdir} is corrupt ({reason}); "
              f"moved to checkpoints/corrupt-{step}", file=sys.stderr)
      if restored.skipped:
        print(f"warning: resuming {self.workdir} from round {restored.state.round}, the newest "
              "intact checkpoint", file=sys.stderr)
    if self.writer:
      self._note_code_change()
    self.records, self.comm = restored.records, restored.totals
    return restored.state

  def _note_code_change(self) -> None:
    """A warning when the run was started from another git commit (the
    fingerprint holds the package version, not the commit)."""
    try:
      before = io.read_json(os.path.join(self.workdir, "config.json")).get("run", {})
    except (OSError, ValueError, AttributeError):
      return
    old, new = before.get("git_commit"), self.run_info.get("git_commit")
    if old and new and old != new:
      print(f"warning: {self.workdir} was started at git commit {old}; resuming at {new}",
            file=sys.stderr)

  def save(self, state) -> None:
    self.ckpt.save(state, self.records, self.comm, self.fingerprint)

  def diverged(self, e: DivergenceError) -> DivergenceError:
    """``e`` with where the run can be found (never promising a checkpoint
    that does not exist)."""
    latest = self.ckpt.latest_round()
    where = (f"the last checkpoint (round {latest}) is kept in {self.workdir}" if latest
             else f"no checkpoint was written in {self.workdir}")
    return DivergenceError(f"{e}; {where}")

  def write_config(self) -> None:
    """``config.json``: the config plus what ran (``run``: resolved choices,
    environment, the data/partition/code parts of the fingerprint)."""
    if self.writer:
      fingerprint = {k: v for k, v in self.fingerprint.items() if k != "config"}
      io.write_json_atomic(os.path.join(self.workdir, "config.json"), {
          **config_lib.to_dict(self.config),
          "run": {**self.run_info, "fingerprint": fingerprint}})

  def write_metrics(self) -> None:
    if self.writer:
      io.write_jsonl_atomic(os.path.join(self.workdir, "metrics.jsonl"), self.records)
      outputs.write_csv(self.workdir, self.records)

  def add_round(self, round_idx: int, metrics: dict) -> None:
    _check_finite(metrics, round_idx)
    for key in ("uplink", "downlink"):
      self.comm[f"{key}_MiB"] = (self.comm.get(f"{key}_MiB", 0.0)
                                 + metrics[f"round_{key}_bytes"] / MIB)
    self.comm["client_rounds"] = self.comm.get("client_rounds", 0.0) + metrics["round_clients"]

  def add_eval(self, record: dict) -> dict:
    record["comm_totals"] = dict(self.comm)
    _check_finite(record, record["round"])
    if self.writer and self.tb is None:  # opened here: a resumed run knows its records now
      first_new = self.records[-1]["round"] + 1 if self.records else 1
      self.tb = outputs.TensorBoardLog(self.workdir, first_new_round=first_new)
    self.records.append(record)
    self.write_metrics()
    if self.tb is not None:
      self.tb.add(record)
    return record

  def log_eval(self, record: dict, total_rounds: int) -> None:
    """One stderr line per evaluation (when no progress bar is shown)."""
    if self.writer:
      outputs.log_line(outputs.eval_line(
          record, prefix=os.path.basename(os.path.normpath(self.workdir)),
          total_rounds=total_rounds))

  def close(self) -> None:
    self.ckpt.close()
    if self.tb is not None:
      self.tb.close()

  def finish(self, seconds: float) -> dict:
    summary = _summary(self.config, self.records, seconds)
    if self.writer:
      io.write_json_atomic(os.path.join(self.workdir, "summary.json"), summary)
      io.write_text_atomic(os.path.join(self.workdir, "summary.md"), outputs.summary_markdown(
          summary, "Run summary: " + outputs.run_title(config_lib.to_dict(self.config))))
      from fedjax_pfl.plots import plot_run
      plot_run(self.workdir)
    return summary


def run(config: config_lib.ExperimentConfig, workdir: str, *, progress: bool = True,
        resume: bool = False, overwrite: bool = False,
        on_eval: Callable[[dict], None] | None = None,
        on_round: Callable[[int], None] | None = None) -> dict:
  """Runs one experiment, or continues it from its latest checkpoint.

  Args:
    config: the experiment (validated here, before any compute).
    workdir: output folder (``config.json``, ``metrics.jsonl``, ``summary.*``,
      ``checkpoints/``).
    progress: show a progress bar.
    resume: continue from ``workdir``'s latest intact checkpoint if there is
      one; the final results equal those of an uninterrupted run. The
      checkpoint must carry this run's fingerprint
      (:func:`runinfo.fingerprint`; only :data:`config.RESUME_SAFE_FIELDS`
      may differ, ``train.rounds`` not below the rounds already run).
    overwrite: a new run (``resume=False``) replaces a run already in
      ``workdir`` (its files, :data:`runinfo.RUN_FILES`); without it such a
      workdir is refused.
    on_eval: called with each evaluation record.
    on_round: called with the round number after each round (tests use it).

  Returns:
    The summary dict (also in ``summary.json``).

  Raises:
    ConfigError: invalid config, a client without test data (before any compute).
    WorkdirError: ``workdir`` cannot be created, holds another run (new run
      without ``overwrite``), or its checkpoint belongs to another run (resume).
    CorruptFileError: every checkpoint in ``workdir`` is corrupt (resume).
    DataError / PartitionError: missing or corrupt data, impossible partition.
    DivergenceError: NaN/Inf loss (the message says which checkpoint is kept).
  """
  config_lib.validate(config)
  writer = jax.process_index() == 0  # only process 0 writes
  if writer:
    io.ensure_writable_dir(workdir)
    if not resume:
      runinfo.check_new_workdir(workdir, config, overwrite=overwrite)
  data = load_data(config.data)
  check_test_data(config, data)
  sim, params0 = build_simulation(config, data)
  fingerprint = runinfo.fingerprint(config, runinfo.data_digests(data))
  log = _RunLog(config, workdir, writer, fingerprint,
                {"resolved": resolved_choices(config, sim, data), **runinfo.environment()})
  t = config.train
  state = sim.init(params0)
  if resume:
    try:
      restored = log.restore(state)
    except BaseException:
      log.ckpt.close()
      raise
    if restored is not None and restored.round > t.rounds:
      log.ckpt.close()
      raise ConfigError(f"train.rounds={t.rounds} is below the {restored.round} rounds already "
                        f"run in {workdir}; allowed when resuming: >= {restored.round}")
    state = state if restored is None else sim.place(restored)
  log.write_config()
  log.write_metrics()
  start = time.perf_counter() - (log.records[-1]["seconds"] if log.records else 0.0)
  bar = _progress(t.rounds, config.algorithm, progress and log.writer, initial=state.round)
  compiled = sim.backend.fused and config.system.round_loop != "host"
  try:
    while state.round < t.rounds:
      # Rounds up to the next host sync point run as one program when compiled.
      stop = _next_sync(state.round, t) if compiled else state.round + 1
      first = state.round + 1
      state, chunk = sim.run_rounds(state, stop - state.round)
      for round_idx, round_metrics in enumerate(chunk, start=first):
        log.add_round(round_idx, round_metrics)
        if round_idx < state.round:  # the chunk's last round: after eval/checkpoint
          bar.update(1)
          if on_round:
            on_round(round_idx)
      last = state.round == t.rounds
      if state.round % t.eval_every == 0 or last:
        record = {"round": state.round, "seconds": round(time.perf_counter() - start, 3),
                  **round_metrics, **sim.evaluate(state)}
        if sim.finetune is not None:
          tuned = sim.evaluate_finetuned(state)
          record.update({f"finetuned/{k}": v for k, v in tuned.items()})
        log.add_eval(record)
        if on_eval:
          on_eval(record)
        bar.set_postfix(acc=f"{record['accuracy']:.4f}", refresh=False)
        if bar.disable:
          log.log_eval(record, t.rounds)
      if last or (t.checkpoint_every and state.round % t.checkpoint_every == 0):
        log.save(state)
      bar.update(1)
      if on_round:
        on_round(state.round)
  except DivergenceError as e:
    raise log.diverged(e) from None
  finally:
    bar.close()
    log.close()
  return log.finish(time.perf_counter() - start)


def batchable_fields(config: config_lib.ExperimentConfig) -> list[str]:
  """Fields besides ``train.seed`` in which runs of one program may differ:
  ``train.lr`` and the algorithm's batchable fields (``AlgorithmSpec.batchable``,
  e.g. FedOBP's ``algo.quantile``)."""
  extra = algorithms.REGISTRY[config.algorithm].batchable
  return ["train.lr", *(f"algo.{name}" for name in extra)]


def _get_field(config: config_lib.ExperimentConfig, name: str):
  section, field = name.split(".", 1)
  return getattr(getattr(config, section), field)


def batch_key(config: config_lib.ExperimentConfig):
  """Configs with equal keys differ only in ``train.seed`` and batchable
  hyperparameters (:func:`batchable_fields`: learning rate, quantile) and can
  run as one program (:func:`run_batch`); None if this config cannot be
  batched (batching needs vmap + scan on one device, the compiled round loop
  and no fine-tuning evaluation)."""
  ex = resolve_execution(config.system)
  if (not ex.supports_run_batching or config.train.finetune_epochs
      or config.system.round_loop == "host" or config.train.client_stream != "uniform"):
    return None
  algo = config.algo
  extra = algorithms.REGISTRY[config.algorithm].batchable
  if extra:
    algo = dataclasses.replace(algo, **{name: None for name in extra})
  return repr(dataclasses.replace(
      config, train=dataclasses.replace(config.train, seed=0, lr=0.0), algo=algo))


def run_batch(configs: list[config_lib.ExperimentConfig], workdirs: list[str], *,
              progress: bool = True) -> list[dict]:
  """Runs S experiments that differ only in ``train.seed``, ``train.lr`` and
  the algorithm's batchable fields (e.g. FedOBP's ``quantile``) as ONE
  compiled program (``jax.vmap`` over the runs;
  :meth:`Simulation.run_rounds_batch`).

  Each run writes exactly what :func:`run` writes into its own workdir
  (metrics, summary, plots, checkpoints at ``checkpoint_every``); a batch that
  is interrupted is continued by :func:`run` per workdir (``resume=True``).
  Results equal S separate runs (float reductions aside).

  Raises:
    ConfigError: invalid configs, configs that differ in more than those
      fields or cannot be batched (see :func:`batch_key`), or two equal
      configs, before any compute.
    WorkdirError: a workdir that cannot be created or already holds a run.
    DivergenceError: NaN/Inf loss in any run.
  """
  for c in configs:
    config_lib.validate(c)
  keys = {batch_key(c) for c in configs}
  if None in keys or len(keys) != 1 or len(configs) != len(workdirs) or not configs:
    raise ConfigError("run_batch needs configs that differ only in train.seed, train.lr or "
                      "the algorithm's batchable fields, with system.parallelism=vmap, "
                      "system.step_loop=scan and one device")
  config, t = configs[0], configs[0].train
  varying = [f for f in batchable_fields(config)
             if len({_get_field(c, f) for c in configs}) > 1]
  runs = [(c.train.seed, *(_get_field(c, f) for f in varying)) for c in configs]
  if len(set(runs)) != len(runs):
    raise ConfigError(f"run_batch: runs {runs} (train.seed, {', '.join(varying)}) repeat")
  hparams = {f: [float(_get_field(c, f)) for c in configs] for f in varying}
  seeds = [c.train.seed for c in configs]
  writer = jax.process_index() == 0
  if writer:
    for c, w in zip(configs, workdirs):
      io.ensure_writable_dir(w)
      runinfo.check_new_workdir(w, c)
  data = load_data(config.data)
  check_test_data(config, data)
  sim, _ = build_simulation(config, data)
  model = get_model(config.model.name, data.x.shape[1:], data.num_classes,
                    config.model.conv, config.model.bn_running_var, config.model.pool)
  params = [initial_params(model, s) for s in seeds]
  digests = runinfo.data_digests(data)
  info = {"resolved": resolved_choices(config, sim, data), **runinfo.environment()}
  logs = [_RunLog(c, w, writer, runinfo.fingerprint(c, digests), info)
          for c, w in zip(configs, workdirs)]
  for log in logs:
    log.write_config()
    log.write_metrics()
  state = sim.init_batch(params, hparams, seeds=seeds)
  start = time.perf_counter()
  bar = _progress(t.rounds, f"{config.algorithm} x{len(configs)} runs", progress and writer)
  try:
    while state.round < t.rounds:
      first = state.round + 1
      state, chunks = sim.run_rounds_batch(state, seeds, _next_sync(state.round, t) - state.round,
                                           hparams)
      for log, chunk in zip(logs, chunks):
        for round_idx, metrics in enumerate(chunk, start=first):
          log.add_round(round_idx, metrics)
      bar.update(len(chunks[0]))
      last = state.round == t.rounds
      if state.round % t.eval_every == 0 or last:
        seconds = round(time.perf_counter() - start, 3)
        for log, chunk, ev in zip(logs, chunks, sim.evaluate_batch(state, hparams)):
          record = log.add_eval({"round": state.round, "seconds": seconds, **chunk[-1], **ev})
          if bar.disable:
            log.log_eval(record, t.rounds)
      if last or (t.checkpoint_every and state.round % t.checkpoint_every == 0):
        for i, log in enumerate(logs):
          log.save(sim.unstack_run(state, i))
  except DivergenceError as e:
    raise logs[0].diverged(e) from None
  finally:
    bar.close()
    for log in logs:
      log.close()
  return [log.finish(time.perf_counter() - start) for log in logs]


def _next_sync(round_idx: int, t: config_lib.TrainConfig) -> int:
  """First round after ``round_idx`` that evaluates, checkpoints or ends."""
  stops = [t.rounds, (round_idx // t.eval_every + 1) * t.eval_every]
  if t.checkpoint_every:
    stops.append((round_idx // t.checkpoint_every + 1) * t.checkpoint_every)
  return min(stops)


def _check_finite(metrics: dict, round_idx: int) -> None:
  for key in ("loss", "train_loss"):
    if key in metrics and not math.isfinite(metrics[key]):
      raise DivergenceError(f"{key} is {metrics[key]} at round {round_idx}: the run diverged "
                            "(try a smaller train.lr in a new run)")


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
  """A tqdm bar on a terminal; disabled (``bar.disable``) when not ``enabled``
  or stderr is no TTY, and then each evaluation logs one line instead."""
  import sys

  from tqdm.auto import tqdm
  shown = enabled and sys.stderr.isatty()
  return tqdm(total=total, initial=initial, desc=desc, unit="round", disable=not shown,
              dynamic_ncols=True)
