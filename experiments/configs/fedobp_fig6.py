"""FedOBP Fig. 6: which layers hold the personalized parameters, over rounds.

Command: fedjax-pfl sweep experiments/configs/fedobp_fig6.py --out runs/fedobp_fig6
One FedOBP run on Fashion-MNIST, alpha 0.1, q = 0.99993, 450 rounds ("over 450
communication epochs"), evaluated every 10 rounds. The plot shows each layer's share
of all personalized entries (cohort mean of `personalized_count/<layer>`).
"""

from _common import cell_metrics, fedobp_setup

from fedjax_pfl.plots import new_figure, save_figure
from fedjax_pfl.sweep import Cell, Sweep, with_fields


def plot(results, sweep_out, out_png):
  records = cell_metrics(sweep_out, results[0]["cell"])
  layers = [k.split("/", 1)[1] for k in records[0] if k.startswith("personalized_count/")]
  rounds = [r["round"] for r in records]
  totals = [sum(r[f"personalized_count/{l}"] for l in layers) for r in records]
  fig, ax = new_figure("round", "share of personalized entries",
                            "FedOBP: personalized parameters by layer", size=(6.5, 4.2))
  for layer in layers:
    ax.plot(rounds, [r[f"personalized_count/{layer}"] / t if t else 0.0
                     for r, t in zip(records, totals)], marker=".", label=layer)
  ax.legend()
  save_figure(fig, out_png, legend=False)


def get_sweep(smoke: bool = False) -> Sweep:
  cfg = fedobp_setup("fedobp", "fashion_mnist", 0.1, 0, smoke=smoke, rounds=450)
  if not smoke:
    cfg = with_fields(cfg, train={"eval_every": 10})
  return Sweep("fedobp_fig6", "FedOBP Fig. 6 (per-layer share of personalized parameters)",
               [Cell("fedobp", cfg, "FedOBP", "FMNIST α=0.1")], "best_accuracy", {}, plot)
