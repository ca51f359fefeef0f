"""Separate: every client trains alone; nothing is communicated.

The "Separate" baseline of FedCAC/FedPURIN (Fling ``separate_group``, spec
§3.5): each client trains E epochs per round on its own data, starting from
its own previous model (``θ^0`` at first), and is evaluated with its model
after local training. Uplink and downlink are 0.

Degenerate equivalence: Separate is Local-Only (``local``) with the same
clients and keys; with full participation (Fling's setting) the two are
identical round for round.
"""

import dataclasses

import jax

from fedjax_pfl.algorithms._compose import Partition
from fedjax_pfl.algorithms.fling_fedavg import fling_fedavg
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeparateConfig:
  """Separate has no hyperparameters beyond the shared training config."""

  def validate(self) -> None:
    pass


def separate(config: SeparateConfig, *, spec, params) -> Algorithm:
  """Builds Separate: every leaf is local; the upload is empty."""
  config.validate()
  treedef = jax.tree.structure(params)
  everything = Partition(treedef, (True,) * treedef.num_leaves)
  return fling_fedavg(name="separate", local=spec.program(), keep=everything, num_shared=0)


SPECS = {"separate": AlgorithmSpec(SeparateConfig, separate,
                                   "Separate: local training only, no communication (Fling)")}
