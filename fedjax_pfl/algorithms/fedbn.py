"""FedBN: federated learning with local batch normalization.

Li, Jiang, Zhang, Kamp, Dou. "FedBN: Federated Learning on Non-IID Features
via Local Batch Normalization." ICLR 2021, arXiv:2102.07623. Protocol of the
FedPURIN baselines (spec §6, §3.5; Fling ``fedbn`` configs).

All BatchNorm parameters (scale, bias) and running statistics -- modules
``bn*`` and the shortcut's ``downsample_bn`` (Fling: names containing ``bn``
or ``downsample.1``) -- stay local; every other leaf is FedAvg-aggregated:
``θ̄ = Σ n_i θ_i / Σ n_i``. A client starts each round from the global
non-BN leaves and its own BN leaves (``θ^0``'s until it first trains).

Evaluation "before aggregation": the client's model right after local
training (``eval_model="trained"``); ``"next"`` evaluates global non-BN +
own BN. Communication: uplink = downlink = the non-BN values (4 bytes each).

Degenerate equivalence: for a model without BatchNorm FedBN is ``fedavg_bn``
round for round.
"""

import dataclasses

from fedjax_pfl.algorithms import _critical
from fedjax_pfl.algorithms.fling_fedavg import check_eval_model, complement, fling_fedavg
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedBNConfig:
  """FedBN options.

  Attributes:
    eval_model: ``"trained"`` (before aggregation) or ``"next"``.
  """
  eval_model: str = "trained"

  def validate(self) -> None:
    check_eval_model("fedbn", self.eval_model)


def fedbn(config: FedBNConfig, *, spec, params) -> Algorithm:
  """Builds FedBN from a LocalSpec and the initial params."""
  config.validate()
  shared = _critical.leaf_partition(params, spec.state_mask, exclude_bn=True)
  return fling_fedavg(name="fedbn", local=spec.program(), keep=complement(shared),
                      num_shared=_critical.num_entries(shared, params),
                      eval_model=config.eval_model)


SPECS = {"fedbn": AlgorithmSpec(FedBNConfig, fedbn,
                                "FedBN (Li et al., ICLR 2021): BatchNorm layers stay local")}
