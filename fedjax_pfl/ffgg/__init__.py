"""FFGG (Mishchenko et al., arXiv:2305.18285) outside the engine: the synthetic
overpersonalized quadratic problem and its solvers (:mod:`.quadratic`).

The neural-network algorithm (FFGG, Local / asynchronous / Byzantine-robust
variants, FedAlt, FedSim) lives in :mod:`fedjax_pfl.algorithms.ffgg`.
"""

from fedjax_pfl.ffgg.quadratic import (
    AGGREGATORS,
    Quadratic,
    aggregate,
    best_y,
    bucketed_median,
    constants,
    fedavg_local_steps,
    ffgg,
    grad_F,
    grad_norm,
    grads,
    make_problem,
    residuals,
)

__all__ = ["AGGREGATORS", "Quadratic", "aggregate", "best_y", "bucketed_median", "constants",
           "fedavg_local_steps", "ffgg", "grad_F", "grad_norm", "grads", "make_problem",
           "residuals"]
