"""FlexP-SFL (working definition) vs its baselines on digits, through the engine.

Usage::

  python experiments/flexp_sfl.py --out /tmp/flexp_sfl [--rounds 30]

Runs FlexP-SFL (alignment on and off; and v2's aggregation-free choices: no client-side
aggregation, without alignment, with feature alignment, U-shaped), SplitFed (the weakest client's cut for
all), SplitFed with personal heads, FedAvg and Local-Only with the same data,
model (the MLP), seed and training settings, each in ``<out>/<name>/`` (the
usual run outputs), then writes ``flexp_sfl.md`` (accuracy and accounting
table), ``flexp_sfl.png`` (accuracy over rounds; per-client-round client FLOPs
and communication) and ``flexp_sfl.json`` into ``--out``.

Accounting columns are means per client and round over the evaluated rounds:
client / server training FLOPs, activation bytes at the cut (up = forward
activations, down = their gradients) and model bytes at aggregation; ``MiB
up/down`` are the engine's totals over the whole run. FedAvg and Local-Only
train the whole model on the client (client FLOPs = 3 x forward FLOPs per
trained example, from :mod:`fedjax_pfl.models.flops`); their model bytes are
the engine's default accounting (FedAvg: the model up and down; Local-Only:
nothing).
"""

import argparse
import dataclasses
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _figures import save_figure  # noqa: E402

from fedjax_pfl import config as config_lib  # noqa: E402
from fedjax_pfl import experiment  # noqa: E402
from fedjax_pfl.algorithms.flexp_sfl import FlexPSFLConfig  # noqa: E402
from fedjax_pfl.algorithms.splitfed import SplitFedConfig  # noqa: E402

ACCOUNTING = ("client_flops", "server_flops", "act_uplink_bytes", "act_downlink_bytes",
              "model_up_bytes", "model_down_bytes", "cut")


def runs(budgets: str, align: float) -> dict:
  v2 = dict(budgets=budgets, aggregate_client_side=False)
  return {
      f"FlexP-SFL (lambda={align})": ("flexp_sfl", FlexPSFLConfig(budgets=budgets,
                                                                 align_lambda=align)),
      "FlexP-SFL (lambda=0)": ("flexp_sfl", FlexPSFLConfig(budgets=budgets, align_lambda=0.0)),
      "FlexP-SFL, no client aggregation": ("flexp_sfl", FlexPSFLConfig(alignment="none", **v2)),
      f"FlexP-SFL, no client aggr., feature align ({align})": (
          "flexp_sfl", FlexPSFLConfig(alignment="feature", align_lambda=align, **v2)),
      "FlexP-SFL, no client aggr., U-shaped": (
          "flexp_sfl", FlexPSFLConfig(alignment="none", u_shaped=True, **v2)),
      "SplitFed (weakest cut)": ("splitfed", SplitFedConfig(budgets=budgets)),
      "SplitFed + personal heads": ("splitfed_ph", SplitFedConfig(budgets=budgets)),
      "FedAvg": ("fedavg", None),
      "Local-Only": ("local", None),
  }


def full_model_flops(data_cfg, model_name: str) -> float:
  """Forward FLOPs per sample of the whole model (for FedAvg / Local-Only)."""
  import jax

  from fedjax_pfl.models import flops, get_model
  data = experiment.load_data(data_cfg)
  model = get_model(model_name, data.x.shape[1:], data.num_classes)
  params = model.init(jax.random.key(0))
  return float(sum(flops.block_costs(model.apply, params, data.x.shape[1:]).forward))


def summarize(name: str, algorithm: str, workdir: str, fwd: float) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  row = {"method": name, "algorithm": algorithm,
         "final_accuracy": records[-1]["accuracy"],
         "final_client_mean_accuracy": records[-1]["client_mean_accuracy"],
         "best_accuracy": max(r["accuracy"] for r in records),
         "MiB_up": records[-1]["comm_totals"]["uplink_MiB"],
         "MiB_down": records[-1]["comm_totals"]["downlink_MiB"],
         "curve": [(r["round"], r["accuracy"]) for r in records]}
  for key in ACCOUNTING:
    values = [r[key] for r in records if key in r]
    row[key] = float(np.mean(values)) if values else None
  if row["client_flops"] is None:  # the whole model trains on the client
    model = (lambda key: 0.0 if algorithm == "local"
             else float(np.mean([r[key] for r in records])))
    row.update(client_flops=float(np.mean([3 * fwd * r["train_examples"] for r in records])),
               server_flops=0.0, act_uplink_bytes=0.0, act_downlink_bytes=0.0,
               model_up_bytes=model("uplink_bytes"), model_down_bytes=model("downlink_bytes"))
  return row


def markdown(rows: list[dict], args) -> str:
  head = ("| method | final acc | client-mean acc | best acc | mean cut | client FLOPs | "
          "server FLOPs | act up (B) | act down (B) | model up (B) | model down (B) | "
          "MiB up | MiB down |\n|" + "---|" * 13 + "\n")
  fmt = lambda v, f: "-" if v is None else format(v, f)
  lines = [f"| {r['method']} | {100 * r['final_accuracy']:.2f} | "
           f"{100 * r['final_client_mean_accuracy']:.2f} | {100 * r['best_accuracy']:.2f} | "
           f"{fmt(r['cut'], '.2f')} | {r['client_flops']:.3g} | {r['server_flops']:.3g} | "
           f"{r['act_uplink_bytes']:.3g} | {r['act_downlink_bytes']:.3g} | "
           f"{fmt(r['model_up_bytes'], '.3g')} | {fmt(r['model_down_bytes'], '.3g')} | "
           f"{r['MiB_up']:.3f} | {r['MiB_down']:.3f} |" for r in rows]
  return (f"# FlexP-SFL on digits ({args.rounds} rounds, {args.clients} clients, "
          f"participation {args.participation}, budgets {args.budgets})\n\n"
          "FlexP-SFL is the project's working definition (only the v1 abstract is available; "
          "arXiv now holds a v2, aggregation-free, whose body is not available either): this "
          "table compares that definition with its baselines, it is not a reproduction of the "
          "paper. The 'no client aggregation' rows are the options that follow v2's abstract. "
          "Accounting: means per client and round.\n\n" + head + "\n".join(lines)
          + "\n")


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  for r in rows:
    rounds, acc = zip(*r["curve"])
    axes[0].plot(rounds, 100 * np.asarray(acc), marker="o", label=r["method"])
  axes[0].set_xlabel("round")
  axes[0].set_ylabel("pooled test accuracy (%)")
  axes[0].legend(fontsize=8)
  names = [r["method"] for r in rows]
  y = np.arange(len(rows))
  axes[1].barh(y, [r["client_flops"] for r in rows], label="client")
  axes[1].barh(y, [r["server_flops"] for r in rows], left=[r["client_flops"] for r in rows],
               label="server")
  axes[1].set_yticks(y, names, fontsize=8)
  axes[1].set_xlabel("training FLOPs per client-round")
  axes[1].legend(fontsize=8)
  up = [r["act_uplink_bytes"] + (r["model_up_bytes"] or 0) for r in rows]
  down = [r["act_downlink_bytes"] + (r["model_down_bytes"] or 0) for r in rows]
  axes[2].barh(y - 0.2, up, height=0.4, label="uplink (activations + model)")
  axes[2].barh(y + 0.2, down, height=0.4, label="downlink (gradients + model)")
  axes[2].set_yticks(y, names, fontsize=8)
  axes[2].set_xlabel("bytes per client-round (split accounting)")
  axes[2].legend(fontsize=8)
  save_figure(fig, path)


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--rounds", type=int, default=30)
  ap.add_argument("--clients", type=int, default=20)
  ap.add_argument("--participation", type=float, default=0.25)
  ap.add_argument("--alpha", type=float, default=0.1)
  ap.add_argument("--budgets", default="0.35,0.96,1.0",
                  help="digits MLP cuts: 0.35 -> fc1, 0.96 -> fc1+fc2, 1.0 -> all")
  ap.add_argument("--align", type=float, default=0.5)
  ap.add_argument("--lr", type=float, default=0.05)
  ap.add_argument("--local-epochs", type=int, default=2)
  ap.add_argument("--eval-every", type=int, default=5)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  base = config_lib.ExperimentConfig(algorithm="fedavg")
  data_cfg = dataclasses.replace(base.data, dataset="digits", num_clients=args.clients,
                                 alpha=args.alpha)
  train = dataclasses.replace(base.train, rounds=args.rounds, participation=args.participation,
                              lr=args.lr, local_epochs=args.local_epochs,
                              eval_every=args.eval_every, seed=args.seed)
  model_cfg = dataclasses.replace(base.model, name="mlp")
  fwd = full_model_flops(data_cfg, "mlp")
  rows = []
  for name, (algorithm, algo) in runs(args.budgets, args.align).items():
    cfg = config_lib.ExperimentConfig(algorithm=algorithm, data=data_cfg, model=model_cfg,
                                      train=train, algo=algo)
    workdir = os.path.join(args.out, re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_"))
    experiment.run(cfg, workdir, progress=False, overwrite=True)
    rows.append(summarize(name, algorithm, workdir, fwd))
    print(f"{name:28s} final acc {100 * rows[-1]['final_accuracy']:.2f}")
  with open(os.path.join(args.out, "flexp_sfl.json"), "w") as f:
    json.dump({"config": vars(args), "rows": rows}, f, indent=1)
  with open(os.path.join(args.out, "flexp_sfl.md"), "w") as f:
    f.write(markdown(rows, args))
  plot(rows, os.path.join(args.out, "flexp_sfl.png"))
  return rows


if __name__ == "__main__":
  main()
