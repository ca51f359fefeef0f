"""Algorithm registry: name -> (config dataclass, builder, description).

Each algorithm module defines ``SPECS: dict[str, AlgorithmSpec]``; the modules
listed in ``_MODULES`` are collected here. A builder takes
``(config, *, spec, params)``: ``spec`` is the
:class:`~fedjax_pfl.core.local.LocalSpec` (model apply, optimizer, epochs,
batch size; ``spec.program()`` is plain E-epoch SGD on cross-entropy) and
``params`` the initial model (for parameter-group labels, computed once from
paths).
"""

import importlib
from typing import Any

from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.errors import ConfigError

_MODULES = [
    "fedavg",
    "local_only",
    "fedobp",
    "fedper",
    "fedrep",
    "lgfedavg",
    "ditto",
    "apfl",
    "pfedme",
    "fedala",
    "feddpa",
    "fedselect",
    "flute",
    "pfedfda",
    "floco",
    "ffgg",
    "fedalt",
    "flexp_sfl",
    "splitfed",
    "fling_fedavg",
    "fedbn",
    "pfedsd",
    "separate",
    "fedcac",
    "fedpurin",
]

REGISTRY: dict[str, AlgorithmSpec] = {}
ALIASES: dict[str, str] = {}
for _name in _MODULES:
  _module = importlib.import_module(f"fedjax_pfl.algorithms.{_name}")
  REGISTRY.update(_module.SPECS)
  ALIASES.update(getattr(_module, "ALIASES", {}))


def canonical_name(name: str) -> str:
  """Registry name for ``name`` (case-insensitive, aliases resolved).

  Raises:
    ConfigError: naming the allowed algorithms.
  """
  key = name.lower().replace("-", "_")
  key = ALIASES.get(key, key)
  if key not in REGISTRY:
    raise ConfigError(f"algorithm={name!r}; allowed: {sorted(REGISTRY)}")
  return key


def build(name: str, config: Any, *, spec, params) -> Algorithm:
  """Builds the registered algorithm ``name`` with its ``config``."""
  return REGISTRY[canonical_name(name)].build(config, spec=spec, params=params)


__all__ = ["REGISTRY", "ALIASES", "AlgorithmSpec", "Algorithm", "build", "canonical_name"]
