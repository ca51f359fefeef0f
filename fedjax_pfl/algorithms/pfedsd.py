"""pFedSD: personalized federated learning with self-distillation.

Jin, Bai, Chen, Guo, Lin, Gong. "Personalized Edge Intelligence via Federated
Self-Knowledge Distillation." IEEE TPDS 2022 (original code
``CGCL-codes/pFedSD``). Protocol and reference: Fling ``pfedsd_client.py``
(the FedPURIN baseline, spec §3.5).

Local loss of client i (per mini-batch ``x, y``):

  ``CE(f_θ(x), y) + λ τ² KL( softmax(f_prev(x)/τ) ‖ softmax(f_θ(x)/τ) )``

(``F.kl_div(log_softmax(f_θ/τ), softmax(f_prev/τ), 'batchmean')``), with
``λ = 0.5`` and temperature ``τ = 3``. The teacher ``f_prev`` is the client's
own model at the end of its previous local training (stored per client,
frozen); the term is skipped in the client's first round. Aggregation is
FedAvg of all trainable leaves; BN running statistics stay local.

Evaluation "before aggregation": the client's model after local training.
Deviation/choice: in Fling the teacher is a deep copy of the model taken in
train mode, so it normalizes with the current batch's statistics
(``teacher_batch_stats=True``, default); ``False`` uses its running
statistics (eval mode).

Degenerate equivalence: ``lam = 0`` is ``fedavg_bn`` round for round; so is
every client's first round for any ``lam``.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms import _critical
from fedjax_pfl.algorithms.fling_fedavg import (
  check_eval_model,
  complement,
  fling_fedavg,
  state_partition,
)
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import softmax_cross_entropy


@dataclasses.dataclass(frozen=True, kw_only=True)
class PFedSDConfig:
  """pFedSD hyperparameters.

  Attributes:
    lam: weight ``λ >= 0`` of the distillation term.
    temperature: softmax temperature ``τ > 0``.
    teacher_batch_stats: teacher normalizes with batch statistics (Fling).
    eval_model: ``"trained"`` (before aggregation) or ``"next"``.
  """
  lam: float = 0.5
  temperature: float = 3.0
  teacher_batch_stats: bool = True
  eval_model: str = "trained"

  def validate(self) -> None:
    if not self.lam >= 0.0:
      raise ValueError(f"pfedsd.lam={self.lam}; allowed: >= 0")
    if not self.temperature > 0.0:
      raise ValueError(f"pfedsd.temperature={self.temperature}; allowed: > 0")
    check_eval_model("pfedsd", self.eval_model)


def distillation_loss(spec, lam: float, temperature: float, teacher_batch_stats: bool):
  """The pFedSD loss ``(params, batch, key, (teacher, has_teacher))``."""
  t = float(temperature)

  def loss_fn(params, batch, key, context):
    del key
    teacher, has_teacher = context
    logits, new = spec.forward(params, batch)
    ce = softmax_cross_entropy(logits, batch.y, batch.mask)
    t_logits = (spec.forward(teacher, batch)[0] if teacher_batch_stats
                else spec.apply(teacher, batch.x))
    t_logits = jax.lax.stop_gradient(t_logits)
    p_t = jax.nn.softmax(t_logits / t, axis=-1)
    kl = jnp.sum(p_t * (jax.nn.log_softmax(t_logits / t, axis=-1)
                        - jax.nn.log_softmax(logits / t, axis=-1)), axis=-1)
    kl = jnp.sum(jnp.where(batch.mask, kl, 0.0)) / jnp.maximum(jnp.sum(batch.mask), 1)
    loss = ce + jnp.where(has_teacher, lam * t * t * kl, 0.0)
    return loss if spec.state_mask is None else (loss, new)
  return loss_fn


def pfedsd(config: PFedSDConfig, *, spec, params) -> Algorithm:
  """Builds pFedSD from a LocalSpec and the initial params."""
  config.validate()
  keep = state_partition(params, spec.state_mask)
  loss = distillation_loss(spec, config.lam, config.temperature, config.teacher_batch_stats)
  return fling_fedavg(name="pfedsd", local=spec.program(loss), keep=keep,
                      num_shared=_critical.num_entries(complement(keep), params),
                      eval_model=config.eval_model, teacher=True)


SPECS = {"pfedsd": AlgorithmSpec(PFedSDConfig, pfedsd,
                                 "pFedSD (Jin et al., TPDS 2022): self-distillation + FedAvg")}
