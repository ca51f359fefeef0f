"""Workload W side by side with FL-bench, on the same clients, alternating.

FL-bench (``KarhouTam/FL-bench``, an existing checkout given by ``--flbench``
and a Python environment that runs it, ``--flbench-python``; neither is a
dependency of this project) and this project run W's FedAvg (Fashion-MNIST,
FL-bench's own Dir(0.1) partition of 100 clients with seed 42, 10 clients per
round from FL-bench's seeded client stream, 5 epochs, batch 32, SGD lr 0.01
momentum 0, FedAvgCNN) for ``R`` rounds each, ``--repeats`` times, one after
the other (FL-bench, ours, FL-bench, ours, ...), so a shared machine's load
drifts over both alike. Our side runs ``--protocol flbench``
(:mod:`fedjax_pfl.protocols`): the partition and the cohorts of every round
are FL-bench's, so round ``t`` trains the same clients for the same number of
steps on both sides.

FL-bench side: its ``main.py`` under Hydra overrides (serial mode, CPU,
``--threads`` torch threads, no client-side evaluation inside rounds, one
test pass after the last round); each round's wall time is the span FL-bench
itself times, ``FedAvgServer.train_one_round`` (local training of the cohort +
aggregation), read through a small timing wrapper written to a temporary
directory. Its partition must exist (FL-bench's ``generate_data.py -d fmnist
-a 0.1 -cn 100``, the defaults seed 42 and 25% test). Our side: the CPU
default execution, evaluation excluded, rounds timed after a first round.

Reported: per round both times, their ratio and the client steps; medians
over every repeat; the load average before and after each part.

Usage::

  python -m benchmarks.flbench_side_by_side --flbench ~/FL-bench \
      --flbench-python ~/flbench-venv/bin/python --rounds 5 --repeats 2 [--threads 1]
"""

import argparse
import dataclasses
import os
import statistics
import subprocess
import tempfile
import textwrap
import time

from benchmarks import bench_round, common

WRAPPER = textwrap.dedent('''
    import os, runpy, sys, time
    root = sys.argv[1]
    os.chdir(root)
    sys.path.insert(0, root)
    import torch
    torch.set_num_threads(int(os.environ["SIDE_BY_SIDE_THREADS"]))
    from src.server.fedavg import FedAvgServer
    inner = FedAvgServer.train_one_round
    def timed(self):
        t0 = time.perf_counter()
        inner(self)
        print("SIDE_BY_SIDE", self.current_epoch, time.perf_counter() - t0,
              ",".join(str(int(c)) for c in self.selected_clients), flush=True)
    FedAvgServer.train_one_round = timed
    sys.argv = [os.path.join(root, "main.py")] + sys.argv[2:]
    runpy.run_path(os.path.join(root, "main.py"), run_name="__main__")
''')


def run_flbench(args, rounds: int) -> list[dict]:
  """FL-bench's FedAvg on W for ``rounds`` rounds: ``[{round, s, clients}]``."""
  overrides = [
      "method=fedavg", "dataset.name=fmnist", "model.name=avgcnn", "mode=serial",
      "common.seed=42", f"common.global_epoch={rounds}", "common.join_ratio=0.1",
      "common.local_epoch=5", "common.batch_size=32", "optimizer.name=sgd",
      "optimizer.lr=0.01", "optimizer.momentum=0", "common.use_cuda=false",
      "common.client_side_evaluation=false", f"common.test.client.interval={rounds}",
      "common.test.server.interval=-1", "common.save_learning_curve_plot=false"]
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", SIDE_BY_SIDE_THREADS=str(args.threads),
             OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
  with tempfile.TemporaryDirectory() as tmp:
    wrapper = os.path.join(tmp, "timed_main.py")
    with open(wrapper, "w") as f:
      f.write(WRAPPER)
    proc = subprocess.run([args.flbench_python, wrapper, os.path.abspath(args.flbench),
                           *overrides], env=env, capture_output=True, text=True)
  rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("SIDE_BY_SIDE")]
  if proc.returncode != 0 or len(rows) != rounds:
    raise RuntimeError(f"FL-bench failed (exit {proc.returncode}, {len(rows)} of {rounds} "
                       f"rounds): {proc.stderr.strip().splitlines()[-1:]}")
  return [{"round": int(r[1]), "s": float(r[2]), "clients": sorted(int(c) for c in r[3].split(","))}
          for r in rows]


def run_ours(sim, params0, rounds: int) -> list[dict]:
  """Our FedAvg on W: a first round (compiles), then ``rounds - 1`` timed;
  the first round's time includes compilation and is reported apart."""
  state = common.block(sim.init(params0))
  out = []
  for r in range(rounds):
    ids = sim.cohort(state.round)
    t0 = time.perf_counter()
    state, _ = sim.run_round(state)
    common.block(state)
    out.append({"round": r, "s": time.perf_counter() - t0, "clients": sorted(ids.tolist()),
                "client_steps": common.cohort_steps(sim, ids)})
  return out


def main(argv=None) -> dict:
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--flbench", required=True, help="FL-bench checkout (with its fmnist partition)")
  p.add_argument("--flbench-python", required=True, help="the Python that runs FL-bench")
  p.add_argument("--rounds", type=int, default=5, help="rounds per part (R)")
  p.add_argument("--threads", type=int, default=1, help="FL-bench's torch threads")
  p.add_argument("--data-dir", default=None)
  args = p.parse_args(argv)
  if not os.path.isfile(os.path.join(args.flbench, "main.py")):
    p.error(f"--flbench {args.flbench!r}: no FL-bench checkout there (main.py is missing)")
  if not os.access(args.flbench_python, os.X_OK):
    p.error(f"--flbench-python {args.flbench_python!r}: not an executable")
  args.repeats = args.repeats or 2
  from fedjax_pfl import experiment
  ns = argparse.Namespace(
      smoke=False, data_dir=args.data_dir, clients=100, alpha=0.1, data_seed=42, model="cnn",
      conv="auto", rounds=args.rounds, participation=0.1, epochs=5, momentum=0.0,
      parallelism="auto", step_loop="auto", chunk_size=None, lanes=None, protocol="flbench")
  data, source = bench_round.load_workload(ns)
  sim, params0 = experiment.build_simulation(bench_round.make_config(ns, "fedavg"), data)
  parts = []
  for rep in range(args.repeats):
    for side in ("flbench", "ours"):
      load_before = os.getloadavg()
      rows = run_flbench(args, args.rounds) if side == "flbench" else run_ours(
          sim, params0, args.rounds)
      parts.append({"repeat": rep, "side": side, "rows": rows, "load_before": load_before,
                    "load_after": os.getloadavg()})
      common.log(f"{side} {rep}: " + ", ".join(f"{r['s']:.2f}" for r in rows) + " s")
  per_round = []
  for t in range(1, args.rounds):  # round 0 of ours includes compilation
    fl = [p_["rows"][t] for p_ in parts if p_["side"] == "flbench"]
    us = [p_["rows"][t] for p_ in parts if p_["side"] == "ours"]
    if any(f["clients"] != us[0]["clients"] for f in fl):
      raise RuntimeError(f"round {t}: FL-bench trained {fl[0]['clients']}, "
                         f"we trained {us[0]['clients']}")
    f_s = statistics.median(f["s"] for f in fl)
    o_s = statistics.median(u["s"] for u in us)
    per_round.append({"round": t, "client_steps": us[0]["client_steps"], "flbench_s": f_s,
                      "ours_s": o_s, "ratio": f_s / o_s,
                      "ours_ms_per_step": 1e3 * o_s / us[0]["client_steps"],
                      "flbench_ms_per_step": 1e3 * f_s / us[0]["client_steps"]})
  record = {"benchmark": "flbench_side_by_side", **common.env_info(),
            "settings": {"data": source, "rounds": args.rounds, "repeats": args.repeats,
                         "flbench_threads": args.threads, "flbench": os.path.abspath(args.flbench),
                         "execution": dataclasses.asdict(sim.backend.execution)},
            "parts": parts, "per_round": per_round,
            "median_ratio": statistics.median(r["ratio"] for r in per_round),
            "total_ratio": (sum(r["flbench_s"] for r in per_round)
                            / sum(r["ours_s"] for r in per_round))}
  return common.emit(record, args.out)


if __name__ == "__main__":
  common.main_guard(main)
