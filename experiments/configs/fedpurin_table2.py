"""FedPURIN Table 2, Fashion-MNIST columns: the score variants (g = exact last-batch
gradient vs the Δθ approximation; H = the Hessian term).

Command: fedjax-pfl sweep experiments/configs/fedpurin_table2.py --out runs/fedpurin_table2
Full size: 4 variants x 3 alphas x 3 seeds x 200 rounds, ResNet-8, 20 clients (GPU).
"""

from _common import fling_setup

from fedjax_pfl.sweep import Cell, Sweep

VARIANTS = [("g✗ H✗", dict(grad="delta", hessian=False), (96.50, 92.08, 89.27)),
            ("g✓ H✗", dict(grad="exact", hessian=False), (96.55, 92.15, 89.50)),
            ("g✗ H✓", dict(grad="delta", hessian=True), (96.48, 92.30, 89.60)),
            ("g✓ H✓", dict(grad="exact", hessian=True), (96.57, 92.27, 89.62))]
ALPHAS = (0.1, 0.5, 1.0)
PAPER = {(row, f"α={a}"): v for row, _, vals in VARIANTS for a, v in zip(ALPHAS, vals)}


def get_sweep(smoke: bool = False) -> Sweep:
  alphas = (0.1,) if smoke else ALPHAS
  seeds = (1,) if smoke else (1, 2, 3)
  cells = [Cell(f"{kw['grad']}-h{int(kw['hessian'])}-a{a}-s{s}",
                fling_setup("fedpurin", "fashion_mnist", a, s, smoke=smoke, **kw), row, f"α={a}")
           for row, kw, _ in VARIANTS for a in alphas for s in seeds]
  return Sweep("fedpurin_table2", "FedPURIN Table 2 (score variants, Fashion-MNIST)", cells,
               "best_client_mean_accuracy", PAPER)
