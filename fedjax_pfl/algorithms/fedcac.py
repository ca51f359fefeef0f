"""FedCAC: cautiously aggressive collaboration on critical parameters.

Wu, Chen, Shi, Wang, Xu, Zhao, Wang. "Bold but Cautious: Unlocking the
Potential of Personalized Federated Learning through Cautiously Aggressive
Collaboration." ICCV 2023, arXiv:2309.11103. Reference: Fling
``fedcac_client.py`` / ``fedcac_group.py`` (copies in HikariX/FedPURIN).

Equations (spec §3.4; skeleton in :mod:`fedjax_pfl.algorithms._critical`):

* score ``c = |Δθ ⊙ θ|`` with ``Δθ = θ_after − θ_before`` local training;
* per-tensor top-τ masks on every trainable tensor (BN affine included; BN
  running statistics excluded) with the ``<= 1e-10`` cutoff whose fallback
  takes the smallest score ``> 1e-20``;
* ``O_ij = 1 − ‖m_i − m_j‖₁ / (2 n_i)``, ``T_r = O_avg + (r/β)(O_max − O_avg)``,
  ``C_i = {j ≠ i : O_ij >= T_r}``;
* ``δ_i`` = mean of the FULL uploaded models over ``C_i ∪ {i}``, ``θ̄`` = their
  sample-weighted mean, ``θ_i ← m_i ⊙ δ_i + (1 − m_i) ⊙ θ̄``; BN running
  statistics stay each client's own post-training values (never aggregated).

Evaluation: the client's model after local training, before aggregation
(``eval_model="trained"``, as in Fling); ``"next"`` evaluates ``θ_i^new``.
Communication: uplink = all trainable values + 1 bit per entry (4.71 -> 4.86
MiB for ResNet-8 on CIFAR-10); downlink = the full model, or only its
non-critical part once ``C_i = ∅`` (after round β).

Deviations: see :mod:`fedjax_pfl.ops.critical` (empty masks, the tie-safe
threshold test); the per-client models live in a server-side ``[N, ...]``
table instead of client objects.

Degenerate equivalences: ``tau = 0`` masks nothing (``k = 0``), so every client
starts from ``θ̄`` and FedCAC is FedAvg (with local BN statistics, i.e.
``fedavg_bn``) round for round; with ``r > β`` every ``C_i`` is empty.
"""

import dataclasses

from fedjax_pfl.algorithms import _critical
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.ops import critical as ops


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedCACConfig:
  """FedCAC hyperparameters.

  Attributes:
    tau: fraction of each tensor selected as critical, in [0, 1].
    beta: collaboration horizon ``β >= 1`` (100; the paper uses 170 for
      CIFAR-100).
    eval_model: ``"trained"`` (before aggregation; Fling), ``"next"`` or
      ``"dense"`` (same as ``"trained"``: FedCAC does not sparsify).
    downlink_mask_bits: count 1 bit per entry on the downlink too.
  """
  tau: float = 0.5
  beta: float = 100.0
  eval_model: str = "trained"
  downlink_mask_bits: bool = False

  def validate(self) -> None:
    if not 0.0 <= self.tau <= 1.0:
      raise ValueError(f"fedcac.tau={self.tau}; allowed: [0, 1]")
    if not self.beta >= 1.0:
      raise ValueError(f"fedcac.beta={self.beta}; allowed: >= 1")
    if self.eval_model not in _critical.EVAL_MODELS:
      raise ValueError(f"fedcac.eval_model={self.eval_model!r}; "
                       f"allowed: {list(_critical.EVAL_MODELS)}")


def fedcac(config: FedCACConfig, *, spec, params) -> Algorithm:
  """Builds FedCAC from a :class:`~fedjax_pfl.core.local.LocalSpec` and the
  initial params (for the leaf partition)."""
  config.validate()
  masked = _critical.leaf_partition(params, spec.state_mask, exclude_bn=False)

  def score(before, trained):
    pairs = zip(masked.select(before), masked.select(trained))
    return trained, tuple(ops.cac_score(b, a) for b, a in pairs)

  return _critical.critical_algorithm(
      name="fedcac", local=spec.program(), masked=masked,
      num_trainable=_critical.num_entries(masked, params), score=score, tau=config.tau,
      beta=config.beta, floor=ops.CAC_FLOOR, sparse=False,
      downlink_mask_bits=config.downlink_mask_bits, eval_model=config.eval_model)


SPECS = {"fedcac": AlgorithmSpec(FedCACConfig, fedcac,
                                 "FedCAC (Wu et al., ICCV 2023): critical-parameter collaboration")}
