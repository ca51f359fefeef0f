"""FedAlt and FedSim: partial model personalization (the baselines of FFGG).

Pillutla, Malik, Mohamed, Rabbat, Sanjabi, Xiao. "Federated Learning with
Partial Model Personalization." ICML 2022, arXiv:2204.03809.

Shared body ``u`` (server-averaged) and personal head ``v_i`` (kept by client
i; default: the classifier). Round t, sampled client i, from ``(u^t, v_i)``:

* FedAlt (alternating): ``head_epochs`` epochs of SGD on ``v_i`` with ``u``
  frozen, then E (``train.local_epochs``) epochs on ``u`` with ``v_i`` frozen;
* FedSim (simultaneous): E epochs of joint SGD on ``(u, v_i)``;
* upload ``u``; ``u^{t+1}`` = sample-weighted mean; keep ``v_i``.

Evaluation: global body + own head. Freezing keeps the frozen tensors and their
optimizer state (``sgd_program(trainable=...)``). Deviation: one client
learning rate and optimizer for both parts (the paper tunes them separately).

Degenerate equivalences: FedSim is FedPer (same slots, same program); FedAlt
with ``head_epochs = h`` is FedRep with ``train_body_epochs = E`` and ``h + E``
local epochs.
"""

import dataclasses

from fedjax_pfl.algorithms._compose import partition
from fedjax_pfl.algorithms.fedper import CLASSIFIER, PERSONAL, check_regex, fedper
from fedjax_pfl.algorithms.fedrep import head_then_body
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedSimConfig:
  """Attributes: personal_layers: regex over parameter paths of the head."""
  personal_layers: str = CLASSIFIER

  def validate(self) -> None:
    check_regex("fedsim", "personal_layers", self.personal_layers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAltConfig:
  """FedAlt hyperparameters.

  Attributes:
    personal_layers: regex over parameter paths of the head.
    head_epochs: epochs on the head (body frozen) before the E body epochs.
  """
  personal_layers: str = CLASSIFIER
  head_epochs: int = 1

  def validate(self) -> None:
    check_regex("fedalt", "personal_layers", self.personal_layers)
    if self.head_epochs < 0:
      raise ValueError(f"fedalt.head_epochs={self.head_epochs}; allowed: >= 0")


def _split(cfg, params):
  return partition(params, {cfg.personal_layers: PERSONAL}, PERSONAL)


def _build_fedsim(cfg: FedSimConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  return fedper(local=spec.program(), personal=_split(cfg, params), name="fedsim")


def _build_fedalt(cfg: FedAltConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  split = _split(cfg, params)
  epochs = cfg.head_epochs + spec.epochs
  program = spec.program(epochs=epochs,
                         trainable=head_then_body(split.mask(), epochs, spec.epochs))
  return fedper(local=program, personal=split, name="fedalt")


SPECS = {
    "fedalt": AlgorithmSpec(FedAltConfig, _build_fedalt,
                            "FedAlt (Pillutla et al. 2022): head epochs, then body epochs"),
    "fedsim": AlgorithmSpec(FedSimConfig, _build_fedsim,
                            "FedSim (Pillutla et al. 2022): joint body + head SGD"),
}
