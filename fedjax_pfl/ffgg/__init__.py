"""FFGG (Mishchenko et al., arXiv:2305.18285) outside the engine: the synthetic
quadratic problems (:mod:`.quadratic`, the authors' notebook instances in
:mod:`.instances`), the Fig. 1 baselines (:mod:`.baselines`), event-driven
asynchronous training (:mod:`.async_`) and the notebook's Byzantine setup
(:mod:`.byzantine`).

The neural-network algorithm (FFGG, Local / asynchronous / Byzantine-robust
variants, FedAlt, FedSim) lives in :mod:`fedjax_pfl.algorithms.ffgg`.
"""

from fedjax_pfl.ffgg.quadratic import (
    AGGREGATORS,
    INNER_SOLVERS,
    Quadratic,
    aggregate,
    assemble,
    best_y,
    bucketed_median,
    cg_solve,
    constants,
    fedavg_local_steps,
    ffgg,
    grad_F,
    grad_norm,
    grads,
    make_problem,
    residuals,
)

__all__ = ["AGGREGATORS", "INNER_SOLVERS", "Quadratic", "aggregate", "assemble", "best_y",
           "bucketed_median", "cg_solve", "constants", "fedavg_local_steps", "ffgg", "grad_F",
           "grad_norm", "grads", "make_problem", "residuals"]
