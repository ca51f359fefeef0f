"""Registry entry type shared by all algorithm modules."""

from typing import Callable, NamedTuple

from fedjax_pfl.core.algorithm import Algorithm


class AlgorithmSpec(NamedTuple):
  """``config_cls()`` gives defaults; ``build(cfg, *, spec, params)`` the slots."""
  config_cls: type
  build: Callable[..., Algorithm]
  description: str
