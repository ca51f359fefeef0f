"""FedDPA: Fisher-information parameter decoupling.

Yang, Huang, Ye. "Dynamic Personalized Federated Learning with Adaptive
Differential Privacy." NeurIPS 2023 (no arXiv version; code:
``xiyuanyang45/DynamicPFL``).

Empirical Fisher of client i's model over its train set (per-example squared
gradients of ``log p(y|x)``, summed; the scale is irrelevant after the
per-tensor min-max normalisation ``F_norm = (F - min F) / (max F - min F)``).
Personal entries ``u = {F_norm > tau}``, shared ``v`` = the rest; the model
trained from is ``where(u, theta_i^last, theta_bar)``.

* ``variant="fisher_port"`` (default; the FedOBP authors' port in
  ``uglyghost/FedOBP`` ``src/client/feddpa.py``, used for FedOBP's Tables
  III/IV): ``tau`` = per-tensor ``quantile(F_norm, fisher_quantile)`` (linear
  interpolation, as ``torch.quantile``), so about 60% of every tensor is
  personal at 0.4; E epochs of the run's SGD; full upload; FedAvg.
* ``variant="original"`` (``ours.py``): ``tau = fisher_threshold`` (absolute);
  E epochs of Adam(``adam_lr``) on ``u`` only with loss
  ``CE + lambda1/2 sum_l ||theta_l - w_l||``, then E epochs of a fresh Adam on
  ``v`` only with ``CE + lambda2/2 |sum_l ||theta_l - w_l|| - C|``; the update
  ``theta - w`` is clipped to norm ``C`` (``clip_update``) and averaged with
  train-size weights into ``w``.

Deviations: the port computes the Fisher on whatever model the shared
(serial) client object holds (a quirk); here, as in the original, it is the
client's own last trained model ``theta_i^last`` over its own train set. It is
computed in one extra pass right after training (``_features.append_pass``)
and stored with the client, so training and evaluation use the same mask;
a lone last example of an odd-sized epoch (a batch of 1) is left out of the
Fisher, as it is out of training. A client that never trained has no Fisher
and uses the global model (the reference would merge in 60% of theta^0).
Evaluation uses the merged model ``where(u_i, theta_i^last, theta_bar)`` for
both variants (the original tests the local model right after training). The
original's DP noise is omitted; the port's Fisher divides by
``min(#batches, 10)``, irrelevant after normalisation.

Degenerate equivalence: ``fisher_quantile = 1.0`` personalizes nothing, so
the port equals FedAvg round for round.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_pfl import ops
from fedjax_pfl.algorithms import _features
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import (
  LocalInput,
  LocalProgram,
  LocalSpec,
  batch_active,
  epoch_permutations,
  gather_batch,
)
from fedjax_pfl.core.local import (
  steps_per_epoch as local_steps_per_epoch,
)
from fedjax_pfl.ops.aggregation import weighted_mean

VARIANTS = ("fisher_port", "original")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedDPAConfig:
  """FedDPA hyperparameters.

  Attributes:
    variant: ``"fisher_port"`` (FedOBP's port) or ``"original"``.
    fisher_quantile: per-tensor quantile level of the port, in [0, 1].
    fisher_threshold: the original's absolute threshold on ``F_norm``, [0, 1].
    adam_lr: the original's Adam learning rate.
    lambda1: the original's stage-1 proximity weight.
    lambda2: the original's stage-2 norm-matching weight.
    clip_bound: the original's ``C`` (regulariser target and update clip).
    clip_update: clip the original's update to norm ``C`` before upload.
  """
  variant: str = "fisher_port"
  fisher_quantile: float = 0.4
  fisher_threshold: float = 0.4
  adam_lr: float = 1e-3
  lambda1: float = 0.1
  lambda2: float = 0.05
  clip_bound: float = 0.5
  clip_update: bool = True

  def validate(self) -> None:
    if self.variant not in VARIANTS:
      raise ValueError(f"feddpa.variant={self.variant!r}; allowed: {list(VARIANTS)}")
    for name in ("fisher_quantile", "fisher_threshold"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"feddpa.{name}={getattr(self, name)}; allowed: [0, 1]")
    for name in ("adam_lr", "clip_bound"):
      if not getattr(self, name) > 0:
        raise ValueError(f"feddpa.{name}={getattr(self, name)}; allowed: > 0")
    for name in ("lambda1", "lambda2"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"feddpa.{name}={getattr(self, name)}; allowed: >= 0")


class FedDPAClient(NamedTuple):
  """Per-client state (stacked ``[N, ...]``): last trained model, personal mask."""
  last: Any
  mask: Any


# -- Fisher information --------------------------------------------------------
def fisher_batch_fn(apply_fn):
  """``(acc, params, batch, s) -> acc + sum_x (d log p(y|x) / d theta)^2``
  over the batch's real examples (per-example grads by vmap over examples)."""
  def log_prob(params, x, y):
    return jax.nn.log_softmax(apply_fn(params, x[None]))[0, y]
  per_example = jax.vmap(jax.grad(log_prob), in_axes=(None, 0, 0))  # vmap over examples, not clients

  def batch_fn(acc, params, batch, s):
    del s
    grads = per_example(params, batch.x, batch.y)
    m = batch.mask.astype(jnp.float32)
    return jax.tree.map(lambda a, g: a + jnp.tensordot(m, jnp.square(g), axes=(0, 0)),
                        acc, grads)
  return batch_fn


def with_fisher(program: LocalProgram, apply_fn, params, to_trained) -> LocalProgram:
  """``program`` plus a Fisher pass at the trained model; ``finish`` returns
  ``(to_trained(params, fisher), metrics)``."""
  zeros = jax.tree.map(jnp.zeros_like, params)
  return _features.append_pass(program, zeros, fisher_batch_fn(apply_fn),
                               lambda p, fisher, m: (to_trained(p, fisher), m))


def quantile_mask(fisher, q):
  """Per tensor: ``F_norm > quantile(F_norm, q)`` (min-max per tensor; an
  all-equal tensor has ``F_norm = 0`` and no personal entry)."""
  return jax.tree.map(lambda f: ops.keep_local_mask(f, q, norm="layer"), fisher)


def threshold_mask(fisher, threshold):
  """Per tensor: ``F_norm > threshold``."""
  return jax.tree.map(lambda f: ops.normalize_scores(f, norm="layer") > threshold, fisher)


# -- the original's two-stage local training ----------------------------------
class _TwoStageCarry(NamedTuple):
  params: Any
  context: Any          # (global params, personal mask u)
  opt: Any              # (Adam state of stage 1, of stage 2)
  perms: jax.Array
  loss_sum: jax.Array
  seen: jax.Array


def _safe_norm(d):
  s = jnp.sum(jnp.square(d))
  return jnp.where(s > 0, jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)


def two_stage_program(spec: LocalSpec, cfg: FedDPAConfig) -> LocalProgram:
  """E epochs on ``u`` (stage 1) then E epochs on ``v`` (stage 2), each with a
  fresh Adam; frozen entries get zero gradient (Adam then leaves them)."""
  epochs, bsz = spec.epochs, spec.batch_size
  spe = local_steps_per_epoch(spec.num_slots, bsz)
  adam = optax.adam(cfg.adam_lr)

  def loss_fn(params, batch, stage, glob):
    dist = sum(_safe_norm(p - g) for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(glob)))
    reg = jnp.where(stage, 0.5 * cfg.lambda2 * jnp.abs(dist - cfg.clip_bound),
                    0.5 * cfg.lambda1 * dist)
    return spec.ce_loss(params, batch) + reg
  grad_fn = jax.value_and_grad(loss_fn)

  def init(inputs: LocalInput, data, key):
    perms = epoch_permutations(jax.random.split(key)[0], data.count, 2 * epochs,
                               spec.num_slots, spe * bsz)
    opt = (adam.init(inputs.params), adam.init(inputs.params))
    zero = jnp.zeros((), jnp.float32)
    return _TwoStageCarry(inputs.params, inputs.context, opt, perms, zero, zero)

  def step(c: _TwoStageCarry, t, data):
    epoch, s = t // spe, t % spe
    stage = epoch >= epochs
    batch = gather_batch(data, c.perms[epoch], s, bsz)
    size = jnp.sum(batch.mask)
    active = batch_active(size)
    glob, u = c.context
    loss, grads = grad_fn(c.params, batch, stage, glob)
    grads = jax.tree.map(lambda g, m: jnp.where(m != stage, g, 0.0), grads, u)
    (up1, o1), (up2, o2) = adam.update(grads, c.opt[0]), adam.update(grads, c.opt[1])
    upd = jax.tree.map(lambda a, b: jnp.where(stage, b, a), up1, up2)
    sel = lambda cond: (lambda n, o: jnp.where(cond, n, o))
    params = jax.tree.map(sel(active), optax.apply_updates(c.params, upd), c.params)
    opt = (jax.tree.map(sel(active & ~stage), o1, c.opt[0]),
           jax.tree.map(sel(active & stage), o2, c.opt[1]))
    return c._replace(params=params, opt=opt,
                      loss_sum=c.loss_sum + jnp.where(active, loss * size, 0.0),
                      seen=c.seen + jnp.where(active, size, 0).astype(jnp.float32))

  def finish(c: _TwoStageCarry):
    return c.params, {"train_loss": c.loss_sum / jnp.maximum(c.seen, 1.0),
                      "train_examples": c.seen}

  return LocalProgram(init, step, finish, 2 * epochs * spe, spe, bsz)


# -- the algorithm -------------------------------------------------------------
def _metrics(mask):
  stats = ops.personalized_fraction(mask)
  return {"personalized_fraction": stats["overall"],
          **{f"personalized_fraction/{k}": v for k, v in stats["per_layer"].items()}}


def feddpa(*, spec: LocalSpec, params, config: FedDPAConfig) -> Algorithm:
  """Builds FedDPA (see the module docstring).

  Returns:
    The :class:`Algorithm`. Server state: global params. Client state:
    :class:`FedDPAClient`. Metrics: ``personalized_fraction[/<layer>]`` of the
    masks trained from.
  """
  config.validate()
  original = config.variant == "original"
  if original:
    program = two_stage_program(spec, config)
    make_mask = lambda fisher: threshold_mask(fisher, config.fisher_threshold)
  else:
    program = spec.program()
    make_mask = lambda fisher: quantile_mask(fisher, config.fisher_quantile)
  local = with_fisher(program, spec.apply, params, lambda p, f: (p, make_mask(f)))

  def merged(server, client):
    return ops.masked_merge(client.mask, client.last, server)

  def init(params, num_clients, *, key=None):
    mask = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.bool_), params)
    return params, cohort.stack_clients(FedDPAClient(params, mask), num_clients)

  def broadcast(server, client, *, ctx=None):
    start = merged(server, client)
    inputs = LocalInput(start, (server, client.mask)) if original else start
    return inputs, _metrics(client.mask)

  def finalize(server, client, trained, extra, *, ctx=None):
    params, mask = trained
    upload = params
    if original:
      upload = jax.tree.map(jnp.subtract, params, server)
      if config.clip_update:
        norm = optax.global_norm(upload)
        upload = jax.tree.map(lambda u: u / jnp.maximum(1.0, norm / config.clip_bound), upload)
    return upload, FedDPAClient(params, mask), extra

  def aggregate(server, uploads, weights, *, ctx=None):
    mean = weighted_mean(uploads, weights)
    return (jax.tree.map(jnp.add, server, mean) if original else mean), {}

  return Algorithm("feddpa", init, broadcast, local, finalize, aggregate, merged)


def _build(cfg: FedDPAConfig, *, spec, params) -> Algorithm:
  return feddpa(spec=spec, params=params, config=cfg)


SPECS = {"feddpa": AlgorithmSpec(FedDPAConfig, _build,
                                 "FedDPA (Yang et al., NeurIPS 2023; FedOBP's Fisher port)")}
