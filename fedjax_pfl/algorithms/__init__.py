"""Algorithm registry: name -> (config dataclass, builder).

A builder takes ``(config, *, local, params)`` where ``local`` is the local
training program and ``params`` the initial model (for parameter-group labels,
computed once from paths).
"""

from typing import Any, Callable, NamedTuple

from fedjax_pfl.algorithms.fedavg import FedAvgConfig, fedavg
from fedjax_pfl.algorithms.fedobp import FedOBPClient, FedOBPConfig, fedobp
from fedjax_pfl.algorithms.local_only import LocalOnlyConfig, local_only
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.models.base import scope_mask


class AlgorithmSpec(NamedTuple):
  config_cls: type
  build: Callable[..., Algorithm]
  description: str


REGISTRY: dict[str, AlgorithmSpec] = {
    "fedavg": AlgorithmSpec(FedAvgConfig, lambda cfg, *, local, params: fedavg(local=local),
                            "FedAvg (McMahan et al. 2017)"),
    "local": AlgorithmSpec(LocalOnlyConfig,
                           lambda cfg, *, local, params: local_only(local=local),
                           "Local-Only: private models, no communication"),
    "fedobp": AlgorithmSpec(
        FedOBPConfig,
        lambda cfg, *, local, params: fedobp(local=local, config=cfg,
                                             scope=scope_mask(params, cfg.scope)),
        "FedOBP (Chen et al., arXiv:2604.16574)"),
}

ALIASES = {"local-only": "local", "local_only": "local", "localonly": "local"}


def canonical_name(name: str) -> str:
  """Registry name for ``name`` (case-insensitive, aliases resolved).

  Raises:
    ValueError: naming the allowed algorithms.
  """
  key = ALIASES.get(name.lower(), name.lower())
  if key not in REGISTRY:
    raise ValueError(f"algorithm={name!r}; allowed: {sorted(REGISTRY)}")
  return key


def build(name: str, config: Any, *, local, params) -> Algorithm:
  """Builds the registered algorithm ``name`` with its ``config``."""
  return REGISTRY[canonical_name(name)].build(config, local=local, params=params)


__all__ = ["REGISTRY", "ALIASES", "AlgorithmSpec", "Algorithm", "build", "canonical_name",
           "fedavg", "FedAvgConfig", "fedobp", "FedOBPConfig", "FedOBPClient", "local_only",
           "LocalOnlyConfig"]
