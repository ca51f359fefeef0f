"""The engine: the algorithm contract, local training, the round, backends, evaluation.

Dependencies point one way inside ``core``: ``local``, ``rng`` -> ``cohort`` ->
``algorithm``, ``execution`` -> ``rounds``, ``evaluation``, ``backend`` ->
``batching``, ``aot`` -> ``simulation``; nothing here imports from the rest of
the package.
"""

from fedjax_pfl.core.algorithm import Algorithm, ClientContext, ServerContext
from fedjax_pfl.core.backend import CompiledBackend, Execution, HostBackend, make_backend
from fedjax_pfl.core.local import LocalSpec
from fedjax_pfl.core.rounds import SimState
from fedjax_pfl.core.simulation import Simulation

__all__ = [
    "Algorithm",
    "ClientContext",
    "CompiledBackend",
    "Execution",
    "HostBackend",
    "LocalSpec",
    "ServerContext",
    "SimState",
    "Simulation",
    "make_backend",
]
