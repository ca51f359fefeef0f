"""The run loop: config -> data -> model -> algorithm -> rounds -> results.

Outputs in ``workdir``: ``config.json``, ``metrics.jsonl`` (one JSON object per
evaluation), ``summary.json``, ``summary.md``, ``checkpoints/`` and the PNG plots
``accuracy.png``, ``loss.png``, ``client_accuracy_hist.png``; all written
atomically.
"""

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax

from fedjax_pfl import algorithms, io
from fedjax_pfl import config as config_lib
from fedjax_pfl.core import backend, rng
from fedjax_pfl.core.local import LocalSpec, make_optimizer
from fedjax_pfl.core.rounds import MIB
from fedjax_pfl.core.simulation import Simulation
from fedjax_pfl.data import flbench_client_stream, load_federated
from fedjax_pfl.errors import ConfigError
from fedjax_pfl.models import get_model


def resolve_execution(system: config_lib.SystemConfig) -> backend.Execution:
  """``auto`` fields take the measured per-backend defaults."""
  default = backend.default_execution()
  parallelism = default.parallelism if system.parallelism == "auto" else system.parallelism
  step_loop = default.step_loop if system.step_loop == "auto" else system.step_loop
  num_devices = system.num_devices
  if num_devices is None and parallelism == "vmap":
    num_devices = default.num_devices
  return backend.Execution(parallelism=parallelism, step_loop=step_loop,
                          chunk_size=system.chunk_size, num_devices=num_devices)


def load_data(cfg: config_lib.DataConfig):
  """Loads and partitions the dataset named in ``cfg`` (host numpy)."""
  return load_federated(
      cfg.dataset, data_dir=cfg.data_dir, source=cfg.source, partition=cfg.partition,
      num_clients=cfg.num_clients, alpha=cfg.alpha, shards_per_client=cfg.shards_per_client,
      min_samples_per_client=cfg.min_samples_per_client, max_retries=cfg.max_retries,
      test_ratio=cfg.test_ratio, seed=cfg.seed, max_examples=cfg.max_examples,
      train_per_client=cfg.train_per_client, test_per_client=cfg.test_per_client,
      normalization=cfg.normalization)


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
                    config.model.conv, config.model.bn_running_var)
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
  rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
  return f"# Run summary\n\n| field | value |\n|---|---|\n{rows}\n"


class _RunLog:
  """One run's outputs: records, communication totals, files, checkpoints."""

  def __init__(self, config: config_lib.ExperimentConfig, workdir: str, writer: bool):
    from fedjax_pfl.checkpoint import Checkpointer
    self.config, self.workdir, self.writer = config, workdir, writer
    os.makedirs(workdir, exist_ok=True)
    if writer:
      io.write_json_atomic(os.path.join(workdir, "config.json"), config_lib.to_dict(config))
    self.ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    self.records: list[dict] = []
    self.comm: dict = {}

  def restore(self, state):
    restored = self.ckpt.restore(state)
    if restored is None:
      return None
    state, self.records, self.comm = restored
    return state

  def write_metrics(self) -> None:
    if self.writer:
      io.write_jsonl_atomic(os.path.join(self.workdir, "metrics.jsonl"), self.records)

  def add_round(self, round_idx: int, metrics: dict) -> None:
    _check_finite(metrics, round_idx)
    for key in ("uplink", "downlink"):
      self.comm[f"{key}_MiB"] = (self.comm.get(f"{key}_MiB", 0.0)
                                 + metrics[f"round_{key}_bytes"] / MIB)
    self.comm["client_rounds"] = self.comm.get("client_rounds", 0.0) + metrics["round_clients"]

  def add_eval(self, record: dict) -> dict:
    record["comm_totals"] = dict(self.comm)
    _check_finite(record, record["round"])
    self.records.append(record)
    self.write_metrics()
    return record

  def finish(self, seconds: float) -> dict:
    summary = _summary(self.config, self.records, seconds)
    if self.writer:
      io.write_json_atomic(os.path.join(self.workdir, "summary.json"), summary)
      io.write_text_atomic(os.path.join(self.workdir, "summary.md"), summary_markdown(summary))
      from fedjax_pfl.plots import plot_run
      plot_run(self.workdir)
    return summary


def run(config: config_lib.ExperimentConfig, workdir: str, *, progress: bool = True,
        resume: bool = False, on_eval: Callable[[dict], None] | None = None,
        on_round: Callable[[int], None] | None = None) -> dict:
  """Runs one experiment, or continues it from its latest checkpoint.

  Args:
    config: the experiment (validated here, before any compute).
    workdir: output folder (``config.json``, ``metrics.jsonl``, ``summary.*``,
      ``checkpoints/``).
    progress: show a progress bar.
    resume: continue from ``workdir``'s latest checkpoint if there is one; the
      final results equal those of an uninterrupted run.
    on_eval: called with each evaluation record.
    on_round: called with the round number after each round (tests use it).

  Returns:
    The summary dict (also in ``summary.json``).

  Raises:
    ConfigError: invalid config (before any compute).
    DataError / PartitionError: missing or corrupt data, impossible partition.
    DivergenceError: NaN/Inf loss; the last good checkpoint is kept.
  """
  config_lib.validate(config)
  data = load_data(config.data)
  sim, params0 = build_simulation(config, data)
  log = _RunLog(config, workdir, writer=jax.process_index() == 0)  # only process 0 writes
  t = config.train
  state = sim.init(params0)
  if resume:
    restored = log.restore(state)
    state = state if restored is None else sim.place(restored)
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
      if last or (t.checkpoint_every and state.round % t.checkpoint_every == 0):
        log.ckpt.save(state, log.records, log.comm)
      bar.update(1)
      if on_round:
        on_round(state.round)
  finally:
    bar.close()
    log.ckpt.close()
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
  data = load_data(config.data)
  sim, _ = build_simulation(config, data)
  model = get_model(config.model.name, data.x.shape[1:], data.num_classes,
                    config.model.conv, config.model.bn_running_var)
  params = [initial_params(model, s) for s in seeds]
  writer = jax.process_index() == 0
  logs = [_RunLog(c, w, writer) for c, w in zip(configs, workdirs)]
  for log in logs:
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
          log.add_eval({"round": state.round, "seconds": seconds, **chunk[-1], **ev})
      if last or (t.checkpoint_every and state.round % t.checkpoint_every == 0):
        for i, log in enumerate(logs):
          log.ckpt.save(sim.unstack_run(state, i), log.records, log.comm)
  finally:
    bar.close()
    for log in logs:
      log.ckpt.close()
  return [log.finish(time.perf_counter() - start) for log in logs]


def _next_sync(round_idx: int, t: config_lib.TrainConfig) -> int:
  """First round after ``round_idx`` that evaluates, checkpoints or ends."""
  stops = [t.rounds, (round_idx // t.eval_every + 1) * t.eval_every]
  if t.checkpoint_every:
    stops.append((round_idx // t.checkpoint_every + 1) * t.checkpoint_every)
  return min(stops)


class DivergenceError(RuntimeError):
  """Loss or accuracy became NaN/Inf."""


def _check_finite(metrics: dict, round_idx: int) -> None:
  for key in ("loss", "train_loss"):
    if key in metrics and not math.isfinite(metrics[key]):
      raise DivergenceError(f"{key} is {metrics[key]} at round {round_idx}: the run diverged "
                            "(try a smaller train.lr); the last good checkpoint is kept")


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="round", disable=not enabled,
              dynamic_ncols=True)
