"""FedPURIN Table 1, CIFAR columns: seven methods; CIFAR-10 at alpha 0.1 / 0.5 / 1.0,
CIFAR-100 at alpha 0.01 / 0.1 / 0.5.

Command (resumable):
  fedjax-pfl sweep experiments/configs/fedpurin_table1_cifar.py --out runs/fedpurin_table1_cifar
  fedjax-pfl sweep experiments/configs/fedpurin_table1_cifar.py --smoke      # CI size
Data: CIFAR-10/100 through tfds (`data.source="auto"`; prepared ArrayRecord files).
Full size: 7 methods x 6 columns x 3 seeds (1, 2, 3): 20 clients, Fling partition,
ResNet-8 for CIFAR-10 (200 rounds) and ResNet-10 for CIFAR-100 (300 rounds); 126
runs. Expected runtime: not measured (needs a GPU and the prepared datasets).
Deviation: Fling's CIFAR-100 train-time augmentation (flip, rotation, crop) is not
applied; inputs are standardized per channel. Metric: best over rounds of the
client-mean accuracy before aggregation (spec §1.2). The smoke size runs on
Fashion-MNIST (see `fling_setup`).
"""

from _common import FEDPURIN_METHODS, fling_setup

from fedjax_pfl.sweep import Cell, Sweep

COLUMNS = [("cifar10", "CIFAR-10", a) for a in (0.1, 0.5, 1.0)] + [
    ("cifar100", "CIFAR-100", a) for a in (0.01, 0.1, 0.5)]
PAPER_ROWS = {
    "Separate": (81.97, 60.78, 52.42, 81.32, 46.93, 23.43),
    "FedAvg": (84.15, 66.33, 61.93, 83.60, 51.47, 33.67),
    "FedPer": (84.43, 66.75, 59.92, 84.02, 50.34, 25.67),
    "FedBN": (85.52, 69.47, 62.62, 82.63, 54.98, 34.78),
    "pFedSD": (86.48, 71.10, 63.23, 82.07, 52.93, 31.55),
    "FedCAC": (84.75, 67.38, 61.97, 82.87, 52.47, 33.73),
    "FedPURIN": (85.90, 71.53, 65.50, 83.07, 54.23, 34.92),
}
PAPER = {(row, f"{label} α={a}"): v for row, vals in PAPER_ROWS.items()
         for (_, label, a), v in zip(COLUMNS, vals)}


def get_sweep(smoke: bool = False) -> Sweep:
  columns = COLUMNS[:1] if smoke else COLUMNS
  seeds = (1,) if smoke else (1, 2, 3)
  cells = [Cell(f"{m}-{label}-a{a}-s{s}", fling_setup(m, name, a, s, smoke=smoke), row,
                f"{label} α={a}")
           for name, label, a in columns for row, m in FEDPURIN_METHODS for s in seeds]
  return Sweep("fedpurin_table1_cifar", "FedPURIN Table 1 (CIFAR-10, CIFAR-100)", cells,
               "best_client_mean_accuracy", PAPER)
