"""FedPURIN Table 1, Fashion-MNIST columns: seven methods, alpha 0.1 / 0.5 / 1.0.

Command (resumable): fedjax-pfl sweep experiments/configs/fedpurin_table1.py --out runs/fedpurin_table1
Full size: 7 methods x 3 alphas x 3 seeds (1, 2, 3) x 200 rounds of 20 clients with
ResNet-8 (63 runs). Expected runtime: not measured at full size; ResNet-8 on the
2-core CPU is far too slow for it (a GPU is needed). Metric: best over rounds of the
client-mean accuracy before aggregation (Fling's protocol, spec §1.2).
"""

from _common import FEDPURIN_METHODS, fling_setup

from fedjax_pfl.sweep import Cell, Sweep

PAPER_ROWS = {"Separate": (95.65, 88.52, 85.30), "FedAvg": (97.05, 92.25, 89.55),
              "FedPer": (96.78, 92.02, 89.85), "FedBN": (96.83, 92.23, 89.77),
              "pFedSD": (97.17, 92.80, 90.23), "FedCAC": (96.80, 92.12, 89.42),
              "FedPURIN": (96.55, 92.15, 89.50)}
ALPHAS = (0.1, 0.5, 1.0)
PAPER = {(row, f"α={a}"): v for row, vals in PAPER_ROWS.items() for a, v in zip(ALPHAS, vals)}


def get_sweep(smoke: bool = False) -> Sweep:
  alphas = (0.1,) if smoke else ALPHAS
  seeds = (1,) if smoke else (1, 2, 3)
  cells = [Cell(f"{m}-a{a}-s{s}", fling_setup(m, "fashion_mnist", a, s, smoke=smoke), row,
                f"α={a}") for row, m in FEDPURIN_METHODS for a in alphas for s in seeds]
  return Sweep("fedpurin_table1", "FedPURIN Table 1 (Fashion-MNIST)", cells,
               "best_client_mean_accuracy", PAPER)
