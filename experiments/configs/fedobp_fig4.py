"""FedOBP Fig. 4: importance scores compared across quantiles.

Command: fedjax-pfl sweep experiments/configs/fedobp_fig4.py --out runs/fedobp_fig4
Fashion-MNIST, alpha 0.1, 200 rounds (the score-comparison logs), seed 0. Scores:
FedOBP's (θ_last − θ̄)² (`sq_diff`), the gradient-based |Δ| (`abs_diff`), the
Jan-2025 |Δ⊙θ_local| (`abs_diff_local`) and the Fisher information (`fisher`, FedDPA's
estimator), each with the same quantile rule. q over the paper's grid
(subsampled here to 10 points; extend QUANTILES for the full grid).
"""

from _common import fedobp_setup

from fedjax_pfl.plots import new_figure, save_figure
from fedjax_pfl.sweep import Cell, Sweep

QUANTILES = (0.0, 0.5, 0.9, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0)
SCORES = ("sq_diff", "abs_diff", "abs_diff_local", "fisher")


def plot(results, sweep_out, out_png):
  fig, ax = new_figure("quantile q", "best pooled accuracy (%)",
                            "FedOBP: importance scores vs quantile", size=(6.5, 4.2))
  for score in dict.fromkeys(r["row"] for r in results):
    pts = sorted((float(r["column"][2:]), 100 * r["best_accuracy"])
                 for r in results if r["row"] == score)
    ax.plot(range(len(pts)), [p[1] for p in pts], marker="o", label=score)
    ax.set_xticks(range(len(pts)), [str(p[0]) for p in pts], rotation=45, fontsize=7)
  ax.legend()
  save_figure(fig, out_png, legend=False)


def get_sweep(smoke: bool = False) -> Sweep:
  qs = (0.9, 1.0) if smoke else QUANTILES
  cells = []
  for score in SCORES:
    for q in qs:
      cfg = fedobp_setup("fedobp", "fashion_mnist", 0.1, 0, smoke=smoke, rounds=200,
                         quantile=q, score=score)
      cells.append(Cell(f"{score}-q{q}", cfg, score, f"q={q}"))
  return Sweep("fedobp_fig4", "FedOBP Fig. 4 (score comparison, Fashion-MNIST)", cells,
               "best_accuracy", {}, plot)
