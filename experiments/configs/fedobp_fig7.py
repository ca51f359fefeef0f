"""FedOBP Fig. 7: accuracy vs downlink overhead ratio |G|/|θ| (quantile sweep).

Command: fedjax-pfl sweep experiments/configs/fedobp_fig7.py --out runs/fedobp_fig7
Fashion-MNIST, alpha 0.1, 400 rounds, seed 0, q in {0.9, 0.99, 0.999, 0.9999, 0.99993,
0.99999, 1.0} (q = 1.0 sends the full global model: FedAvg). The ratio is the mean
`downlink_ratio` FedOBP reports per client and round (global entries sent / all
entries; the 1-bit mask is counted in downlink_bytes, not in the ratio).
"""

from _common import cell_metrics, fedobp_setup

from fedjax_pfl.plots import new_figure, save_figure
from fedjax_pfl.sweep import Cell, Sweep

QUANTILES = (0.9, 0.99, 0.999, 0.9999, 0.99993, 0.99999, 1.0)


def plot(results, sweep_out, out_png):
  points = []
  for r in results:
    ratios = [m["downlink_ratio"] for m in cell_metrics(sweep_out, r["cell"])]
    points.append((sum(ratios) / len(ratios), 100 * r["best_accuracy"], r["row"]))
  points.sort()
  fig, ax = new_figure("downlink overhead ratio |G|/|θ|", "best pooled accuracy (%)",
                            "FedOBP: accuracy vs downlink ratio", size=(6.5, 4.2))
  ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
  for x, y, label in points:
    ax.annotate(label, (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
  save_figure(fig, out_png, legend=False)


def get_sweep(smoke: bool = False) -> Sweep:
  qs = (0.9, 1.0) if smoke else QUANTILES
  cells = [Cell(f"q{q}", fedobp_setup("fedobp", "fashion_mnist", 0.1, 0, smoke=smoke,
                                      quantile=q), f"q={q}", "FMNIST α=0.1") for q in qs]
  return Sweep("fedobp_fig7", "FedOBP Fig. 7 (accuracy vs downlink ratio, Fashion-MNIST)",
               cells, "best_accuracy", {}, plot)
