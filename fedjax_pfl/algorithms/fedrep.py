"""FedRep: shared representation, personal heads, alternating local updates.

Collins, Hassani, Mokhtari, Shakkottai. "Exploiting Shared Representations for
Personalized Federated Learning." ICML 2021, arXiv:2102.07078. Reference:
FL-bench ``src/client/fedrep.py``.

Personal ``phi_i`` = the classifier; shared body ``theta``. Round t, sampled
client i, from ``(theta^t, phi_i)`` with E local epochs and ``b =
train_body_epochs``:

* epochs ``0 .. E-b-1``: SGD on the head only (body frozen);
* epochs ``E-b .. E-1``: SGD on the body only (head frozen);
* upload the body; ``theta^{t+1}`` = sample-weighted mean; keep the head.

Evaluation: global body + own head (as FedPer). ``unseen_personal=
"server_mean"`` is FL-bench's treatment of personal layers (see
:mod:`fedjax_pfl.algorithms.fedper`).

Deviation from FL-bench: freezing keeps the frozen parameters AND their
optimizer state (``sgd_program(trainable=...)``). FL-bench toggles
``requires_grad``; with torch >= 2.0 (``zero_grad`` sets grads to None) SGD
skips frozen tensors and their momentum, so the two agree; FL-bench's fine-tuning branch that
zeroes gradients is not used (``finetune_epoch = 0``).

Degenerate equivalences: ``train_body_epochs = 0`` never changes the body
locally (uploads equal the broadcast body, so the server never moves);
``train_body_epochs >= E`` never changes the head during local training.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms._compose import partition
from fedjax_pfl.algorithms.fedper import (
  CLASSIFIER,
  PERSONAL,
  check_regex,
  check_unseen,
  fedper,
)
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedRepConfig:
  """FedRep hyperparameters.

  Attributes:
    train_body_epochs: the last ``b >= 0`` local epochs train the body only;
      the first ``E - b`` the head only (FL-bench ``train_body_epoch``).
    personal_layers: regex over parameter paths of the head.
    unseen_personal: ``"init"`` (published) or ``"server_mean"`` (FL-bench:
      all leaves averaged, an untrained client uses the average head; see
      :mod:`fedjax_pfl.algorithms.fedper`).
  """
  train_body_epochs: int = 1
  personal_layers: str = CLASSIFIER
  unseen_personal: str = "init"

  def validate(self) -> None:
    if self.train_body_epochs < 0:
      raise ValueError(f"fedrep.train_body_epochs={self.train_body_epochs}; allowed: >= 0")
    check_regex("fedrep", "personal_layers", self.personal_layers)
    check_unseen("fedrep", self.unseen_personal)


def head_then_body(personal_mask, epochs: int, train_body_epochs: int):
  """``epoch -> bool pytree``: the head while ``epoch < E - b``, else the body."""
  head_epochs = epochs - train_body_epochs

  def trainable(epoch):
    head_phase = epoch < head_epochs
    return jax.tree.map(lambda personal: jnp.equal(head_phase, personal), personal_mask)
  return trainable


def _build(cfg: FedRepConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  split = partition(params, {cfg.personal_layers: PERSONAL}, PERSONAL)
  program = spec.program(trainable=head_then_body(split.mask(), spec.epochs,
                                                  cfg.train_body_epochs))
  return fedper(local=program, personal=split, name="fedrep",
                unseen_personal=cfg.unseen_personal)


SPECS = {"fedrep": AlgorithmSpec(FedRepConfig, _build,
                                 "FedRep (Collins et al. 2021): head epochs, then body epochs")}
