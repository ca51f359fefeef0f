"""Every accelerator number of issue 16 in one command; one JSON and one Markdown table.

Sections (each timed on its own; a section that fails records its error and the
report goes on; sections past ``--budget-s`` are recorded as skipped):

1. ``w``: workload W (FedAvg; Fashion-MNIST 100 clients Dir(0.1), 10 per round,
   5 epochs, batch 32, FedAvgCNN): compile + first round and steady-state
   ms/round of the host loop (``Simulation.run_round``, one program per round)
   and of the compiled multi-round loop (``Simulation.run_rounds``: one
   program for ``R`` rounds where the execution is vmap + scan, else the same
   host loop);
2. ``throughput``: client-parallel vs centralized samples/s at C = 10 and 100
   (FedAvg, C clients x ``steps`` batches of 32, one local epoch; centralized =
   one client holding all C x ``steps`` x 32 examples with batch C x 32, the
   same number of steps);
3. ``seeds``: S = 4 runs (``Simulation.init_batch`` / ``run_rounds_batch``)
   vs one run (``run_rounds``) of the same rounds: ``ratio = t(S) / t(1)``
   (needs vmap + scan; on CPU the section forces it);
4. ``scale``: FedOBP with N = 10,000 clients (one FedAvgCNN per client, 32
   train examples each, 10 per round): round time, state bytes and peak
   memory (device ``memory_stats`` where available, else host RSS);
5. ``lanes``: W (FedAvg) as vmap + scan, every client padded to the
   cohort's longest against the cohort packed onto ``L`` lanes
   (``system.lanes``, :mod:`fedjax_pfl.core.lanes`): compile + first call and
   steady ms/round of the multi-round loop, lane utilization (useful client
   steps / lane steps executed) and the train loss (the same for every row);
6. ``eval``: evaluating every client of W (FedAvg, ``Simulation.evaluate``)
   with ``train.eval_batch_size`` = 32, 64 and 256 (compile + first call,
   steady seconds, accuracy): sets the accelerator default of
   :func:`fedjax_pfl.core.execution.default_eval_batch_size`;
7. ``flbench``: 100 rounds of FedOBP and FedAvg on Fashion-MNIST under the
   FedOBP/FL-bench protocol (W, evaluation of every client at the end):
   wall time, ms/round and accuracy.

Data: the Fashion-MNIST IDX files (Debian's ``dataset-fashion-mnist``) from
``--data-dir``, ``/usr/share/datasets/fashion-mnist`` or
``<repo>/data/fashion-mnist`` (copy the four ``*-ubyte.gz`` files there to carry
them to a machine without the package); without them, synthetic images with W's
client sizes (the same Dirichlet partition of 70,000 labels). Never uses the
network. Only the public ``Simulation`` API and :mod:`fedjax_pfl.experiment`
helpers are used.

Usage::

  python -m benchmarks.device_report --out DIR            # GPU: <= 8 min
  python -m benchmarks.device_report --smoke --out DIR    # CPU CI: tiny sizes, MLP
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import bench_round, common
from fedjax_pfl import algorithms, experiment
from fedjax_pfl import config as C
from fedjax_pfl.data.sources import DEFAULT_IDX_DIRS
from fedjax_pfl.models import get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEDOBP_QUANTILE_FMNIST_A01 = 0.99993  # experiments/configs/_common.py FEDOBP_Q
SECTIONS = ("w", "throughput", "seeds", "scale", "lanes", "eval", "flbench")


def _sizes(smoke: bool) -> dict[str, Any]:
  """Workload sizes: the full report, or tiny ones for CPU CI."""
  if smoke:
    return dict(model="mlp", clients=6, participation=0.34, epochs=1, rounds=2, cohorts=(2,),
                tp_steps=1, seeds=2, scale_n=50, flbench_rounds=2, lanes=(None, 1),
                eval_batches=(2, 4))
  return dict(model="cnn", clients=100, participation=0.1, epochs=5, rounds=10,
              cohorts=(10, 100), tp_steps=4, seeds=4, scale_n=10_000,
              flbench_rounds=100, lanes=(None, 2, 4, 10), eval_batches=(32, 64, 256))


def find_fmnist(data_dir: str | None) -> str | None:
  """The first directory holding Fashion-MNIST's IDX training images."""
  for d in (data_dir, DEFAULT_IDX_DIRS["fashion_mnist"], os.path.join(REPO, "data", "fashion-mnist")):
    if d and os.path.exists(os.path.join(d, "train-images-idx3-ubyte.gz")):
      return d
  return None


def w_config(algorithm: str, sz: dict, rounds: int, system: C.SystemConfig | None = None) -> C.ExperimentConfig:
  """W under the FedOBP/FL-bench protocol (experiments/configs/_common.py
  ``fedobp_setup``; FedOBP's quantile for Fashion-MNIST Dir(0.1))."""
  cls = algorithms.REGISTRY[algorithms.canonical_name(algorithm)].config_cls
  algo = cls(quantile=FEDOBP_QUANTILE_FMNIST_A01) if algorithm == "fedobp" else cls()
  return C.ExperimentConfig(
      algorithm=algorithm, algo=algo,
      data=C.DataConfig(dataset="fashion_mnist", alpha=0.1, num_clients=sz["clients"], seed=42),
      model=C.ModelConfig(name=sz["model"]),
      train=C.TrainConfig(rounds=rounds, participation=sz["participation"],
                          local_epochs=sz["epochs"], batch_size=32, lr=0.01, momentum=0.7,
                          seed=0, eval_every=rounds),
      system=system or C.SystemConfig())


def w_data(args, sz: dict):
  """W's federated data (real Fashion-MNIST if found, else synthetic)."""
  ns = argparse.Namespace(smoke=args.smoke, clients=sz["clients"], alpha=0.1, data_seed=42,
                          data_dir=find_fmnist(args.data_dir) or "/nonexistent")
  return bench_round.load_workload(ns)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  t0 = time.perf_counter()
  out = common.block(fn())
  return out, time.perf_counter() - t0


def _execution(sim) -> dict:
  ex = sim.backend.execution
  return {"parallelism": ex.parallelism, "step_loop": ex.step_loop, "chunk_size": ex.chunk_size,
          "num_devices": ex.num_devices, "lanes": ex.lanes, "fused": sim.backend.fused}


def _ex_text(ex: dict) -> str:
  """``vmap+scan (one program per round), 1 device`` style summary."""
  text = f"{ex['parallelism']}+{ex['step_loop']}"
  text += " (fused round program)" if ex["fused"] else " (host-driven)"
  if ex.get("chunk_size"):
    text += f", chunk {ex['chunk_size']}"
  if ex.get("lanes"):
    text += f", {ex['lanes']} lanes"
  return text + f", {ex.get('num_devices') or 1} device(s)"


def section_w(args, sz, data, source) -> dict:
  cfg = w_config("fedavg", sz, sz["rounds"])
  sim, params0 = experiment.build_simulation(cfg, data)
  state = common.block(sim.init(params0))
  (state, _), first = _timed(lambda: sim.run_round(state))
  host = []
  for _ in range(sz["rounds"]):
    (state, metrics), t = _timed(lambda: sim.run_round(state))
    host.append(t)
  (state, _), multi_first = _timed(lambda: sim.run_rounds(state, sz["rounds"]))
  (state, records), multi = _timed(lambda: sim.run_rounds(state, sz["rounds"]))
  return {"data": source, "execution": _execution(sim), "rounds": sz["rounds"],
          "host_compile_and_first_round_s": first,
          "host_ms_per_round_median": 1e3 * statistics.median(host),
          "host_ms_per_round_min": 1e3 * min(host),
          "multi_compile_and_first_call_s": multi_first,
          "multi_ms_per_round": 1e3 * multi / sz["rounds"],
          "train_loss": float(records[-1]["train_loss"])}


def _round_time(data, batch: int, sz: dict, repeats: int) -> tuple[float, float, dict]:
  """(compile + first round s, best steady round s, execution) of FedAvg with
  full participation, one epoch and batch ``batch`` on ``data``."""
  cfg = C.ExperimentConfig(
      algorithm="fedavg", algo=algorithms.REGISTRY["fedavg"].config_cls(),
      model=C.ModelConfig(name=sz["model"]),
      train=C.TrainConfig(rounds=1, participation=1.0, local_epochs=1, batch_size=batch,
                          lr=0.01, momentum=0.7, seed=0))
  sim, params0 = experiment.build_simulation(cfg, data)
  state = common.block(sim.init(params0))
  (state, _), first = _timed(lambda: sim.run_round(state))
  times = []
  for _ in range(repeats):
    (state, _), t = _timed(lambda: sim.run_round(state))
    times.append(t)
  return first, min(times), _execution(sim)


def section_throughput(args, sz, shape) -> dict:
  rows = []
  steps = sz["tp_steps"]
  for c in sz["cohorts"]:
    clients = common.synthetic_federated([steps * 32] * c, input_shape=shape, seed=c)
    central = common.synthetic_federated([steps * 32 * c], input_shape=shape, seed=c)
    first_c, t_c, ex = _round_time(clients, 32, sz, args.repeats)
    first_z, t_z, _ = _round_time(central, 32 * c, sz, args.repeats)
    samples = c * steps * 32
    rows.append({"C": c, "steps": steps, "samples": samples, "execution": ex,
                 "clients_compile_and_first_s": first_c, "clients_round_s": t_c,
                 "central_compile_and_first_s": first_z, "central_round_s": t_z,
                 "clients_samples_per_s": samples / t_c, "central_samples_per_s": samples / t_z,
                 "ratio": t_z / t_c})
  return {"rows": rows}


def section_seeds(args, sz, data) -> dict:
  system = C.SystemConfig(parallelism="vmap", step_loop="scan")  # batching needs vmap + scan
  cfg = w_config("fedavg", sz, 1, system)
  sim, params0 = experiment.build_simulation(cfg, data)
  one = common.block(sim.init(params0))
  (one, _), one_first = _timed(lambda: sim.run_rounds(one, 1))
  (one, _), one_t = _timed(lambda: sim.run_rounds(one, 1))
  seeds = list(range(sz["seeds"]))
  model = get_model(cfg.model.name, data.x.shape[1:], data.num_classes)
  batch = sim.init_batch([experiment.initial_params(model, s) for s in seeds], seeds=seeds)
  (batch, _), s_first = _timed(lambda: sim.run_rounds_batch(batch, seeds, 1))
  (batch, _), s_t = _timed(lambda: sim.run_rounds_batch(batch, seeds, 1))
  return {"S": len(seeds), "execution": _execution(sim), "one_run_first_s": one_first,
          "one_run_s": one_t, "batched_first_s": s_first, "batched_s": s_t,
          "ratio": s_t / one_t}


def _peak_memory() -> dict:
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  out = {"rss_bytes": common.rss_bytes()}
  if stats:
    out.update(device_peak_bytes=stats.get("peak_bytes_in_use"),
               device_bytes_in_use=stats.get("bytes_in_use"))
  return out


def section_scale(args, sz, shape) -> dict:
  n = sz["scale_n"]
  data = common.synthetic_federated([32] * n, input_shape=shape, test_sizes=[8] * n, seed=1)
  cfg = C.ExperimentConfig(
      algorithm="fedobp",
      algo=algorithms.REGISTRY["fedobp"].config_cls(quantile=FEDOBP_QUANTILE_FMNIST_A01),
      model=C.ModelConfig(name=sz["model"]),
      train=C.TrainConfig(rounds=1, participation=10 / n, local_epochs=1, batch_size=32,
                          lr=0.01, momentum=0.7, seed=0))
  sim, params0 = experiment.build_simulation(cfg, data)
  state = common.block(sim.init(params0))
  state_bytes = common.tree_bytes(state.clients)
  (state, _), first = _timed(lambda: sim.run_round(state))
  times = []
  for _ in range(args.repeats):
    (state, _), t = _timed(lambda: sim.run_round(state))
    times.append(t)
  return {"N": n, "C": sim.cohort_size, "execution": _execution(sim),
          "params": common.num_params(params0), "state_bytes": state_bytes,
          "compile_and_first_round_s": first, "ms_per_round_median": 1e3 * statistics.median(times),
          "ms_per_round_min": 1e3 * min(times), **_peak_memory()}


def section_lanes(args, sz, data, source) -> dict:
  rows = []
  for lanes in sz["lanes"]:
    system = C.SystemConfig(parallelism="vmap", step_loop="scan", lanes=lanes)
    sim, params0 = experiment.build_simulation(w_config("fedavg", sz, sz["rounds"], system),
                                               data)
    state = common.block(sim.init(params0))
    (state, _), first = _timed(lambda: sim.run_rounds(state, sz["rounds"]))
    (state, records), steady = _timed(lambda: sim.run_rounds(state, sz["rounds"]))
    if lanes:
      util = statistics.mean(r["lane_utilization"] for r in records)
    else:  # every client runs the program's static step count
      cohorts = [sim.cohort(r) for r in range(state.round - sz["rounds"], state.round)]
      util = (sum(common.cohort_steps(sim, ids) for ids in cohorts)
              / sum(common.lane_steps(sim, sim.backend.pad_cohort(ids)[0]) for ids in cohorts))
    rows.append({"lanes": lanes, "execution": _execution(sim), "rounds": sz["rounds"],
                 "compile_and_first_call_s": first,
                 "ms_per_round": 1e3 * steady / sz["rounds"], "lane_utilization": util,
                 "train_loss": float(records[-1]["train_loss"])})
  return {"data": source, "rows": rows}


def section_eval(args, sz, data, source) -> dict:
  rows = []
  for batch in sz["eval_batches"]:
    cfg = w_config("fedavg", sz, 1)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_batch_size=batch))
    sim, params0 = experiment.build_simulation(cfg, data)
    state = common.block(sim.init(params0))
    metrics, first = _timed(lambda: sim.evaluate(state))
    _, steady = _timed(lambda: sim.evaluate(state))
    rows.append({"eval_batch_size": sim.eval_batch_size, "compile_and_first_call_s": first,
                 "eval_s": steady, "accuracy": metrics["accuracy"], "execution": _execution(sim)})
  return {"data": source, "test_examples": int(np.sum(sim.test_counts)), "rows": rows}


def section_flbench(args, sz, data, source) -> dict:
  rows = []
  for algorithm in ("fedobp", "fedavg"):
    cfg = w_config(algorithm, sz, sz["flbench_rounds"])
    sim, params0 = experiment.build_simulation(cfg, data)
    state = common.block(sim.init(params0))
    (state, records), wall = _timed(lambda: sim.run_rounds(state, sz["flbench_rounds"]))
    metrics, eval_s = _timed(lambda: sim.evaluate(state))
    rows.append({"algorithm": algorithm, "rounds": sz["flbench_rounds"], "wall_s": wall,
                 "ms_per_round": 1e3 * wall / sz["flbench_rounds"], "eval_s": eval_s,
                 "accuracy": metrics["accuracy"],
                 "client_mean_accuracy": metrics["client_mean_accuracy"],
                 "train_loss_last": float(records[-1]["train_loss"]),
                 "execution": _execution(sim)})
  return {"data": source, "rows": rows}


def _fmt(v, digits=3) -> str:
  if isinstance(v, float):
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
  return str(v)


def markdown(report: dict) -> str:
  """One Markdown table (metric | value | conditions) of the report."""
  env = report["env"]
  lines = [f"# Device report ({'smoke' if report['smoke'] else 'full'})", "",
           f"{env['date']}, backend `{env['backend']}`, device `{env['device_kind']}` x "
           f"{env['num_devices']}, jax {env['jax_version']}, load {env['loadavg']}, "
           f"total {report['total_s']:.1f} s.", ""]
  if not report.get("complete", True):
    lines += [f"**Incomplete**: written while section `{report.get('running')}` was running; "
              "the sections below finished.", ""]
  lines += ["| section | metric | value | conditions |", "|---|---|---|---|"]
  s = report["sections"]

  def row(sec, metric, value, cond=""):
    lines.append(f"| {sec} | {metric} | {_fmt(value)} | {cond} |")
  for name in SECTIONS:
    if name not in s:  # not asked for (--only), or not reached yet
      continue
    r = s[name]
    if "error" in r or "skipped" in r:
      row(name, "status", r.get("skipped") or r["error"].splitlines()[-1])
      continue
    if name == "w":
      cond = f"{r['data']}; {_ex_text(r['execution'])}"
      row(name, "host loop: compile + first round (s)", r["host_compile_and_first_round_s"], cond)
      row(name, "host loop: ms/round (median)", r["host_ms_per_round_median"])
      row(name, f"multi-round loop ({r['rounds']} rounds): compile + first call (s)",
          r["multi_compile_and_first_call_s"])
      row(name, "multi-round loop: ms/round", r["multi_ms_per_round"])
    elif name == "throughput":
      for x in r["rows"]:
        row(name, f"C = {x['C']}: clients / centralized samples/s", x["ratio"],
            f"{x['clients_samples_per_s']:.0f} vs {x['central_samples_per_s']:.0f} samples/s; "
            f"{x['steps']} steps of batch 32 per client; {_ex_text(x['execution'])}")
    elif name == "seeds":
      row(name, f"S = {r['S']} batched / one run", r["ratio"],
          f"{r['batched_s']:.3g} s vs {r['one_run_s']:.3g} s per round; "
          f"{_ex_text(r['execution'])}")
    elif name == "scale":
      row(name, f"N = {r['N']:,}: ms/round (median)", r["ms_per_round_median"],
          f"C = {r['C']}, P = {r['params']:,}, state {r['state_bytes'] / 1e9:.2f} GB; "
          f"{_ex_text(r['execution'])}")
      peak = r.get("device_peak_bytes") or r.get("rss_bytes")
      row(name, "peak memory (GB)", (peak or 0) / 1e9,
          "device peak" if r.get("device_peak_bytes") else "host RSS")
    elif name == "lanes":
      for x in r["rows"]:
        what = (f"packed on {x['lanes']} lane{'s' if x['lanes'] > 1 else ''}" if x["lanes"]
                else "padded (one lane a client)")
        row(name, f"W {what}: ms/round", x["ms_per_round"],
            f"lane utilization {x['lane_utilization']:.3f}; compile + first call "
            f"{x['compile_and_first_call_s']:.3g} s; train loss {x['train_loss']:.5g}; "
            f"{_ex_text(x['execution'])}")
    elif name == "eval":
      for x in r["rows"]:
        row(name, f"evaluate {r['test_examples']:,} test examples, batch "
            f"{x['eval_batch_size']} (s)", x["eval_s"],
            f"compile + first call {x['compile_and_first_call_s']:.3g} s; accuracy "
            f"{x['accuracy']:.4f}; {_ex_text(x['execution'])}")
    elif name == "flbench":
      for x in r["rows"]:
        row(name, f"{x['algorithm']} {x['rounds']} rounds: accuracy", x["accuracy"],
            f"{r['data']}; {x['wall_s']:.1f} s ({x['ms_per_round']:.1f} ms/round), "
            f"client-mean {x['client_mean_accuracy']:.4f}; {_ex_text(x['execution'])}")
  return "\n".join(lines) + "\n"


def write_report(out: str, report: dict, t_start: float, running: str | None = None) -> None:
  """Writes ``out/device_report.{json,md}`` as they stand now; ``running``: the
  section in progress (recorded as ``report["running"]``, cleared at the end)."""
  report["total_s"] = time.perf_counter() - t_start
  report.pop("running", None)
  if running is not None:
    report["running"] = running
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "device_report.json"), "w") as f:
    json.dump(report, f, indent=1, default=common._json_default)
  with open(os.path.join(out, "device_report.md"), "w") as f:
    f.write(markdown(report))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="directory for device_report.{json,md}")
  p.add_argument("--smoke", action="store_true", help="tiny sizes and the MLP (CPU CI)")
  p.add_argument("--only", type=common.names, default=list(SECTIONS),
                 help=f"subset of {','.join(SECTIONS)}")
  p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX directory")
  p.add_argument("--repeats", type=int, default=None)
  p.add_argument("--budget-s", type=float, default=None,
                 help="skip the sections that would start after this many seconds")
  args = p.parse_args(argv)
  unknown = sorted(set(args.only) - set(SECTIONS))
  if unknown:
    p.error(f"--only {unknown}; allowed: {list(SECTIONS)}")
  args.repeats = args.repeats or (1 if args.smoke else 3)
  args.budget_s = args.budget_s or (110.0 if args.smoke else 460.0)
  sz = _sizes(args.smoke)
  shape = (8, 8, 1) if sz["model"] == "mlp" else (28, 28, 1)
  t_start = time.perf_counter()
  if args.smoke:
    rng = np.random.default_rng(0)
    data = common.synthetic_federated([int(s) for s in rng.integers(8, 40, sz["clients"])],
                                      input_shape=shape, seed=0)
    source = "synthetic (smoke)"
  else:
    data, source = w_data(args, sz)
  runners = {"w": lambda: section_w(args, sz, data, source),
             "throughput": lambda: section_throughput(args, sz, shape),
             "seeds": lambda: section_seeds(args, sz, data),
             "scale": lambda: section_scale(args, sz, shape),
             "lanes": lambda: section_lanes(args, sz, data, source),
             "eval": lambda: section_eval(args, sz, data, source),
             "flbench": lambda: section_flbench(args, sz, data, source)}
  sections = {}
  report = {"benchmark": "device_report", "smoke": args.smoke, "env": common.env_info(),
            "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sz.items()},
            "sections": sections, "complete": False}
  for name in SECTIONS:
    if name not in args.only:
      continue
    elapsed = time.perf_counter() - t_start
    if elapsed > args.budget_s:
      sections[name] = {"skipped": f"budget ({elapsed:.0f} s > {args.budget_s:.0f} s)"}
      continue
    common.log(f"section {name} ...")
    # On disk before and after every section: a run killed at the device's time
    # limit still leaves every finished section's numbers (and which one was running).
    write_report(args.out, report, t_start, running=name)
    t0 = time.perf_counter()
    try:
      sections[name] = runners[name]()
    except Exception as e:  # keep going: one report with every number that could be had
      sections[name] = {"error": "".join(traceback.format_exception_only(type(e), e)).strip(),
                        "traceback": traceback.format_exc()}
    sections[name]["section_s"] = time.perf_counter() - t0
    common.log(f"section {name}: {sections[name]['section_s']:.1f} s")
  report["complete"] = True
  write_report(args.out, report, t_start)
  print(json.dumps({"out": args.out, "total_s": report["total_s"],
                    "errors": [k for k, v in sections.items() if "error" in v]}), flush=True)
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
  sys.exit(0)
