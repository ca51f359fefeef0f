"""fedjax-pfl: a vectorized JAX simulator for personalized federated learning.

Public entry points::

  from fedjax_pfl import ops                 # pure FedOBP ops over any pytree
  from fedjax_pfl import config, experiment  # configs and the run loop
  from fedjax_pfl.algorithms import REGISTRY # every algorithm by name
  from fedjax_pfl.core import Simulation     # the engine (backends, the pure round)
"""

from fedjax_pfl import ops
from fedjax_pfl.config import DataConfig, ExperimentConfig, ModelConfig, SystemConfig, TrainConfig
from fedjax_pfl.errors import ConfigError

__version__ = "0.1.0"

__all__ = ["ops", "ConfigError", "DataConfig", "ExperimentConfig", "ModelConfig",
           "SystemConfig", "TrainConfig", "__version__"]
