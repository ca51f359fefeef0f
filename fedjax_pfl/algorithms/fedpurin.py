"""FedPURIN: Programmed Update and Reduced INformation.

Xie, He, Shi. "FedPURIN: Programmed Update and Reduced INformation for
Sparse Personalized Federated Learning." Reference code: HikariX/FedPURIN
(Fling fork; ``purin_client.py``, ``purin_group.py``). Built on FedCAC.

Equations (spec §3.1-3.3; skeleton in :mod:`fedjax_pfl.algorithms._critical`):

* score (Eq. 7): ``c = |g ⊙ θ|``, or ``|−g θ + ½ (g θ)²|`` with ``hessian``;
  ``θ`` = the model after local training and ``g`` = the exact gradient of the
  last mini-batch of the last local epoch (at the parameters that step
  started from, as PyTorch's ``.grad``; rounded to fp16 like the reference
  unless ``grad_fp16=False``), or ``Δθ = θ_after − θ_before`` (``grad="delta"``);
* per-tensor top-τ masks on non-BN tensors (modules ``bn*``/``downsample_bn``
  and running statistics excluded) with the ``<= 1e-10`` cutoff;
* the client sparsifies ``θ_i ← θ_i ⊙ m_i`` (non-BN) and uploads it with
  ``m_i``; sets ``C_i`` as in FedCAC; ``δ_i`` = plain mean of the sparsified
  models over ``C_i ∪ {i}`` (zeros count); ``θ̄ = Σ_j (n_j / Σ n) θ_j ⊙ m_j``
  (Eq. 10, not a masked mean); merge ``θ_i^new = m_i ⊙ δ_i + (1 − m_i) ⊙ θ̄``
  (Eq. 11) on non-BN tensors; BN parameters and statistics stay the client's
  own post-training values (``--exc BN``).

Evaluation "before aggregation" (spec §1.2): ``personalize`` returns the
client's stored post-training model AFTER sparsification (Fling tests the
model returned by ``PurinClient.train``); ``eval_model="next"`` evaluates
``θ_i^new`` instead; ``eval_model="dense"`` the trained model before
sparsification (not in Fling: shows what the sparsification costs). Communication: uplink = ``n_i`` values + 1 bit per
non-BN entry; downlink = the non-zeros of the merged model that the client
does not already hold (see ``_critical``); BN is never sent after round 0.

Deviations: the reference's ``isLocal`` and ``HeadEnd`` options are not
implemented (the paper's method uses neither); see also
:mod:`fedjax_pfl.ops.critical`.

Default ``grad="exact"``: Table 1 equals Table 2's "g" row; §4.1's sentence
calling Δθ the default is treated as an error (spec §3.1).

Degenerate equivalences: ``tau = 0`` empties every mask, so only the masks are
uploaded and every non-BN entry is merged (and evaluated) as 0. With ``tau = 1`` and no score
``<= 1e-10`` every mask is full: nothing is sparsified, all overlaps are 1,
every client collaborates with all others, and ``θ_i^new`` is the plain mean
of the cohort's models (FedCAC with ``tau = 1``).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms import _critical
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import (
  Batch,
  LocalProgram,
  LocalSpec,
  SGDCarry,
  batch_active,
  gather_batch,
)
from fedjax_pfl.ops import critical as ops

GRADS = ("exact", "delta")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedPURINConfig:
  """FedPURIN hyperparameters.

  Attributes:
    tau: fraction of each non-BN tensor selected as critical, in [0, 1].
    beta: collaboration horizon ``β >= 1`` (100; 170 for CIFAR-100).
    grad: ``"exact"`` (last-batch gradient, Table 1) or ``"delta"`` (Δθ).
    hessian: add the diagonal-Fisher term ``½ (g θ)²`` (Table 2).
    grad_fp16: round the exact gradient to fp16 (the reference stores it so).
    eval_model: ``"trained"`` (sparsified, before aggregation; Fling),
      ``"next"`` or ``"dense"`` (trained, before sparsification).
    downlink_mask_bits: count 1 bit per non-BN entry on the downlink too.
  """
  tau: float = 0.5
  beta: float = 100.0
  grad: str = "exact"
  hessian: bool = False
  grad_fp16: bool = True
  eval_model: str = "trained"
  downlink_mask_bits: bool = False

  def validate(self) -> None:
    if not 0.0 <= self.tau <= 1.0:
      raise ValueError(f"fedpurin.tau={self.tau}; allowed: [0, 1]")
    if not self.beta >= 1.0:
      raise ValueError(f"fedpurin.beta={self.beta}; allowed: >= 1")
    if self.grad not in GRADS:
      raise ValueError(f"fedpurin.grad={self.grad!r}; allowed: {list(GRADS)}")
    if self.eval_model not in _critical.EVAL_MODELS:
      raise ValueError(f"fedpurin.eval_model={self.eval_model!r}; "
                       f"allowed: {list(_critical.EVAL_MODELS)}")


class LastGradCarry(NamedTuple):
  inner: SGDCarry
  start: object         # params the last active step started from
  batch: Batch          # the last active batch
  last_t: jax.Array     # [] int32 step index of that batch, -1 if none


def last_batch_grad_program(spec: LocalSpec) -> LocalProgram:
  """``spec.program()`` whose output is ``(params, g)``: ``g`` is the gradient
  of the cross-entropy of the last active mini-batch of the last epoch at the
  params that step started from (zeros when the client trained on nothing).

  The last batch is known at ``init`` (example order is drawn there); the
  gradient is recomputed once in ``finish`` from the saved start params.
  """
  prog = spec.program()
  bsz, per_epoch = prog.batch_size, prog.steps_per_epoch
  epochs = prog.num_steps // per_epoch

  def loss(params, batch, key, context):
    out = spec.ce_loss(params, batch, key, context)
    return out if spec.state_mask is None else out[0]

  def init(inputs, data, key):
    inner = prog.init(inputs, data, key)
    # Active batches per epoch have >= 2 examples (core.local.num_batches).
    nb = data.count // bsz + batch_active(data.count % bsz) if bsz >= 2 else jnp.zeros((), jnp.int32)
    s = jnp.maximum(nb - 1, 0)
    last_t = jnp.where(nb > 0, (epochs - 1) * per_epoch + s, -1).astype(jnp.int32)
    batch = gather_batch(data, inner.perms[epochs - 1], s, bsz)
    return LastGradCarry(inner, inner.params, batch, last_t)

  def step(carry, t, data):
    inner = prog.step(carry.inner, t, data)
    here = t == carry.last_t
    start = jax.tree.map(lambda a, b: jnp.where(here, a, b), carry.inner.params, carry.start)
    return carry._replace(inner=inner, start=start)

  def finish(carry):
    params, metrics = prog.finish(carry.inner)
    key = jax.random.fold_in(carry.inner.key, carry.last_t)
    grads = jax.grad(loss)(carry.start, carry.batch, key, carry.inner.context)
    grads = jax.tree.map(lambda g: jnp.where(carry.last_t >= 0, g, 0.0), grads)
    return (params, grads), metrics

  return LocalProgram(init, step, finish, prog.num_steps, per_epoch, bsz)


def fedpurin(config: FedPURINConfig, *, spec, params) -> Algorithm:
  """Builds FedPURIN from a :class:`~fedjax_pfl.core.local.LocalSpec` and the
  initial params (for the leaf partitions)."""
  config.validate()
  masked = _critical.leaf_partition(params, spec.state_mask, exclude_bn=True)
  trainable = _critical.leaf_partition(params, spec.state_mask, exclude_bn=False)
  exact = config.grad == "exact"

  def score(before, output):
    if exact:
      trained, grads = output
      gs = masked.select(grads)
      if config.grad_fp16:
        gs = tuple(g.astype(jnp.float16).astype(g.dtype) for g in gs)
    else:
      trained = output
      gs = tuple(a - b for a, b in zip(masked.select(trained), masked.select(before)))
    return trained, tuple(ops.purin_score(g, v, config.hessian)
                          for g, v in zip(gs, masked.select(trained)))

  local = last_batch_grad_program(spec) if exact else spec.program()
  return _critical.critical_algorithm(
      name="fedpurin", local=local, masked=masked,
      num_trainable=_critical.num_entries(trainable, params), score=score, tau=config.tau,
      beta=config.beta, floor=ops.PURIN_FLOOR, sparse=True,
      downlink_mask_bits=config.downlink_mask_bits, eval_model=config.eval_model)


SPECS = {"fedpurin": AlgorithmSpec(FedPURINConfig, fedpurin,
                                   "FedPURIN (Xie et al.): sparse critical-parameter collaboration")}
