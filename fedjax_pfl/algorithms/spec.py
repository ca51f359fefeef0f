"""Registry entry type shared by all algorithm modules."""

from typing import Any, Callable, NamedTuple

import jax

from fedjax_pfl.core.algorithm import Algorithm


class AlgorithmSpec(NamedTuple):
  """``config_cls()`` gives defaults; ``build(cfg, *, spec, params)`` the slots.

  ``batchable``: float fields of ``config_cls`` that the builder uses only in
  array arithmetic (never in Python control flow or shapes), so they may be
  JAX tracers: runs that differ only in them (and in ``train.seed`` /
  ``train.lr``) can share one compiled program
  (:meth:`fedjax_pfl.core.rounds.Simulation.run_rounds_batch`). Their
  ``validate`` skips traced values (the concrete values are checked on the
  host first).
  """
  config_cls: type
  build: Callable[..., Algorithm]
  description: str
  batchable: tuple[str, ...] = ()


def is_traced(value: Any) -> bool:
  """True for a JAX tracer (a hyperparameter batched into one program)."""
  return isinstance(value, jax.core.Tracer)
