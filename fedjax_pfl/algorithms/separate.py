"""Separate: every client trains alone; nothing is communicated.

The "Separate" baseline of FedCAC/FedPURIN (Fling ``separate_group``, spec
§3.5): each client trains E epochs per round on its own data, starting from
its own previous model, and is evaluated with its model after local training.
Uplink and downlink are 0.

Initial models (``init``): ``"shared"`` (default) starts every client from the
run's ``θ^0``; ``"per_client"`` follows Fling (spec §2: Separate starts every
client from its own random init, one ``model.init`` per client): client ``i``
starts from ``model_init(fold_in(key, i))`` with ``key`` the run's
``algorithm_init`` key, and is evaluated with that model until it trains.

Degenerate equivalence: with ``init="shared"`` Separate is Local-Only
(``local``) with the same clients and keys; with full participation (Fling's
setting) the two are identical round for round.
"""

import dataclasses

import jax

from fedjax_pfl.algorithms._compose import Partition
from fedjax_pfl.algorithms.fling_fedavg import fling_fedavg
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm

INITS = ("shared", "per_client")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeparateConfig:
  """Separate options.

  Attributes:
    init: ``"shared"`` (every client starts from ``θ^0``) or ``"per_client"``
      (Fling: one random model init per client; module docstring).
  """
  init: str = "shared"

  def validate(self) -> None:
    if self.init not in INITS:
      raise ValueError(f"separate.init={self.init!r}; allowed: {list(INITS)}")


def separate(config: SeparateConfig, *, spec, params) -> Algorithm:
  """Builds Separate: every leaf is local; the upload is empty.

  Raises:
    ValueError: an invalid ``config``; ``init="per_client"`` without
      ``spec.model_init``, or (at ``init``) without a key.
  """
  config.validate()
  treedef = jax.tree.structure(params)
  everything = Partition(treedef, (True,) * treedef.num_leaves)
  alg = fling_fedavg(name="separate", local=spec.program(), keep=everything, num_shared=0)
  if config.init == "shared":
    return alg
  model_init = spec.model_init
  if model_init is None:
    raise ValueError("separate.init='per_client' needs the model's init (LocalSpec.model_init)")

  def init(params, num_clients, *, key=None):
    if key is None:
      raise ValueError("separate: init='per_client' needs key= (the algorithm_init stream)")
    server, clients = alg.init(params, num_clients, key=key)
    models = cohort.per_client(lambda i: model_init(jax.random.fold_in(key, i)), num_clients)
    models = jax.tree.map(lambda m, t: m.astype(t.dtype), models, clients.trained)
    return server, clients._replace(trained=models)

  return alg._replace(init=init)


SPECS = {"separate": AlgorithmSpec(SeparateConfig, separate,
                                   "Separate: local training only, no communication (Fling)")}
