"""A short run of every method of the baseline zoo on Fashion-MNIST Dir(0.1).

Command: fedjax-pfl sweep experiments/configs/zoo_fmnist_short.py --out runs/zoo_fmnist_short
Reduced size so that it runs on a 2-core CPU: 10,000 of the 70,000 pooled images,
20 clients, Dir(0.1) (partition seed 42), 25% participation, 10 rounds, E = 2, batch 32,
SGD lr 0.01 momentum 0.7, FedAvgCNN, one seed; evaluation of all clients after round 10.
Expected runtime: about 20-40 min on the 2-core CPU for the 15 methods. Not a
reproduction of the paper's numbers (those need 100 clients and 400 rounds: see
fedobp_table4.py); a check that every method trains and how they compare early on.
The report puts the paper's Table IV numbers beside them for reference only.
"""

import dataclasses

from _common import FEDOBP_METHODS, ROW_NAMES, fedobp_setup
from fedobp_table4 import PAPER as TABLE4

from fedjax_pfl.sweep import Cell, Sweep

METHODS = FEDOBP_METHODS + ["ditto", "pfedme"]
ROWS = {**ROW_NAMES, "ditto": "Ditto", "pfedme": "pFedMe"}


def get_sweep(smoke: bool = False) -> Sweep:
  cells = []
  for m in METHODS:
    cfg = fedobp_setup(m, "fashion_mnist", 0.1, 0, smoke=smoke, rounds=10)
    if not smoke:
      cfg = dataclasses.replace(
          cfg, data=dataclasses.replace(cfg.data, num_clients=20, max_examples=10_000),
          train=dataclasses.replace(cfg.train, participation=0.25, local_epochs=2,
                                    eval_every=10))
    cells.append(Cell(m, cfg, ROWS[m], "FMNIST α=0.1"))
  return Sweep("zoo_fmnist_short", "Baseline zoo, short run (Fashion-MNIST, Dir(0.1))",
               cells, "final_accuracy", PAPER)


# FedOBP Table IV, Fashion-MNIST Dir(0.1), for reference only: the paper's runs
# are 100 clients x 400 rounds x E = 5 (best of 4 evaluations), not this size.
PAPER = {(row, "FMNIST α=0.1"): v for (row, col), v in TABLE4.items() if col == "α=0.1"}
