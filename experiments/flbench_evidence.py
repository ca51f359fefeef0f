"""FL-bench protocol at real size on the CPU: FedOBP and the Table IV baselines
whose FL-bench computation differs, as curves (issue 17's evidence runs).

Full Fashion-MNIST (70,000 images, the Debian IDX files), FL-bench protocol
(``--protocol flbench``: its bit-exact Dir(0.1) split of N = 100 clients with
seed 42, its client stream, its input constants), 10 clients per round, E = 5,
batch 32, SGD lr 0.01, train seed 42 (FL-bench's), evaluation of all clients
every 10 rounds. Methods run with FL-bench's baseline options
(``experiments/configs/_common.py`` ``FLBENCH_OPTIONS``); FedOBP with
q = 0.99993. Momentum 0 (FL-bench's default) for every method, and 0.7 (the
FedOBP authors' logs) for FedOBP and FedAvg.

Run (resumable: finished runs are skipped)::

  .venv/bin/python experiments/flbench_evidence.py --rounds 20 \\
      --out experiments/results/flbench_evidence

Writes per run ``<out>/<name>/{config.json,metrics.jsonl,summary.json}`` (the
checkpoints and event files stay in ``--work``), ``<out>/curves.jsonl`` (one line
per evaluation of every run), ``<out>/report.md`` and ``<out>/report.png``.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))

from _common import fedobp_setup  # noqa: E402

from fedjax_pfl import experiment, io, plots  # noqa: E402

RUNS = [("fedobp", 0.0), ("fedavg", 0.0), ("fedper", 0.0), ("flute", 0.0), ("fedala", 0.0),
        ("floco", 0.0), ("pfedfda", 0.0), ("fedobp", 0.7), ("fedavg", 0.7)]


def config_for(method: str, momentum: float, rounds: int):
  cfg = fedobp_setup(method, "fashion_mnist", 0.1, 42, rounds=rounds)
  return dataclasses.replace(cfg, train=dataclasses.replace(
      cfg.train, momentum=momentum, eval_every=10, checkpoint_every=10))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=20)
  p.add_argument("--out", default="experiments/results/flbench_evidence")
  p.add_argument("--work", default="runs/flbench_evidence")
  p.add_argument("--only", default=None, help="comma-separated run names")
  args = p.parse_args(argv)
  names = []
  for method, momentum in RUNS:
    name = f"{method}-m{momentum:g}"
    names.append(name)
    if args.only and name not in args.only.split(","):
      continue
    workdir = os.path.join(args.work, name)
    cfg = config_for(method, momentum, args.rounds)
    if os.path.exists(os.path.join(workdir, "summary.json")):
      print(f"{name}: done")
    else:
      resume = os.path.exists(os.path.join(workdir, "config.json"))
      experiment.run(cfg, workdir, progress=False, resume=resume)
    dest = os.path.join(args.out, name)
    os.makedirs(dest, exist_ok=True)
    for f in ("config.json", "metrics.jsonl", "summary.json"):
      shutil.copy(os.path.join(workdir, f), os.path.join(dest, f))
  done = [n for n in names if os.path.exists(os.path.join(args.out, n, "summary.json"))]
  with open(os.path.join(args.out, "curves.jsonl"), "w") as f:
    for n in done:
      for r in io.read_jsonl(os.path.join(args.out, n, "metrics.jsonl")):
        keep = {k: v for k, v in r.items() if not isinstance(v, list)}
        f.write(json.dumps({"run": n, **keep}, sort_keys=True) + "\n")
  print(plots.report([os.path.join(args.out, n) for n in done], args.out,
                     warn=lambda s: None))


if __name__ == "__main__":
  main()
