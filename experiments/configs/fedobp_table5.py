"""FedOBP Table V (Fashion-MNIST row): normalization ablation.

Command: fedjax-pfl sweep experiments/configs/fedobp_table5.py --out runs/fedobp_table5
Settings (spec §2.5): alpha 0.1, 400 rounds, one run (seed 0); q = 0.999705 for the
all-parameter runs and 0.9908 for the classifier-only (CLS) run. Expected runtime: 4
runs of the FedOBP workload (CPU: hours; GPU: not yet measured). The score that
produced Table V is UNVERIFIED (spec §2.2): Eq. 19's (θ−θ̄)² is used here.
"""

from _common import fedobp_setup

from fedjax_pfl.sweep import Cell, Sweep

PAPER = {("NoNorm", "FMNIST"): 96.82, ("LayerNorm", "FMNIST"): 96.31,
         ("GlobalNorm w/o CLS", "FMNIST"): 96.82, ("GlobalNorm with CLS", "FMNIST"): 96.81}
SETTINGS = [("NoNorm", dict(norm="none", quantile=0.999705)),
            ("LayerNorm", dict(norm="layer", quantile=0.999705)),
            ("GlobalNorm w/o CLS", dict(norm="global", quantile=0.999705)),
            ("GlobalNorm with CLS", dict(norm="global", scope="classifier", quantile=0.9908))]


def get_sweep(smoke: bool = False) -> Sweep:
  cells = [Cell(f"{i}-{row.split()[0].lower()}{'-cls' if 'with' in row else ''}",
                fedobp_setup("fedobp", "fashion_mnist", 0.1, 0, smoke=smoke, **kw), row, "FMNIST")
           for i, (row, kw) in enumerate(SETTINGS)]
  return Sweep("fedobp_table5", "FedOBP Table V (normalization ablation, Fashion-MNIST)",
               cells, "best_accuracy", PAPER)
