"""APFL: adaptive personalized federated learning (FL-bench's logit variant).

Deng, Kamani, Mahdavi. "Adaptive Personalized Federated Learning."
arXiv:2003.13461, 2020. Reference: FL-bench ``src/{server,client}/apfl.py``
(after FedTorch ``flow_utils.py``).

Client i keeps a personal model ``v_i`` (init ``theta^0``) and a mixing
weight ``alpha_i`` (init ``alpha_init``). Round t, from ``w = theta^t``, per
minibatch ``(x, y)`` of E epochs:

1. ``w <- opt(w, grad_w CE(w(x), y))``;
2. ``v <- opt(v, grad_v CE(alpha v(x) + (1 - alpha) sg[w(x)], y))`` (logits
   mixed with the UPDATED w, ``sg`` = stop_gradient);
3. first local epoch only (``adapt_alpha``):
   ``alpha <- clip(alpha - lr_alpha (g_alpha + 0.02 alpha), 0, 1)`` with
   ``alpha_grad="flbench"``: ``g_alpha = sum <v - w, alpha g_v + (1 - alpha) g_w>``
   (post-step v, w; ``g_v``, ``g_w`` the gradients of steps 2 and 1), or
   ``alpha_grad="logit"``: ``g_alpha = d/d alpha`` of the mixed-logit loss of
   step 2 (exact derivative of the objective actually trained).

Upload ``w``; ``theta^{t+1}`` = weighted mean. Evaluation: the logit mixture
``alpha_i v_i(x) + (1 - alpha_i) theta(x)`` (``eval_apply``).

Deviations: the original APFL mixes parameters (``v_bar = alpha v + (1 -
alpha) w``); FL-bench and this module mix logits. FL-bench never zeroes w's
gradient between steps 1 and 2, so w takes a SECOND optimizer step with the
same gradient; off by default, ``reuse_global_grad=True`` reproduces it.
``lr_alpha`` defaults to the client lr (FL-bench ``local_lr``).

Degenerate equivalence: ``alpha_init=0, adapt_alpha=False`` is FedAvg (same
global model, same evaluation logits).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_pfl.algorithms._compose import batch_program, client_lr
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram, softmax_cross_entropy
from fedjax_pfl.ops.aggregation import weighted_mean

ALPHA_GRADS = ("flbench", "logit")


@dataclasses.dataclass(frozen=True, kw_only=True)
class APFLConfig:
  """APFL hyperparameters.

  Attributes:
    alpha_init: initial mixing weight in [0, 1] (FL-bench ``alpha``).
    adapt_alpha: learn alpha during the first local epoch.
    alpha_grad: ``"flbench"`` (parameter-space formula) or ``"logit"``.
    alpha_lr: step size of alpha, > 0; None = the client learning rate.
    reuse_global_grad: FL-bench reference protocol (FedOBP Table IV; FL-bench
      ``src/client/apfl.py``): w takes a second step with the same gradient
      (module docstring). Default False: the published algorithm.
  """
  alpha_init: float = 0.5
  adapt_alpha: bool = True
  alpha_grad: str = "flbench"
  alpha_lr: float | None = None
  reuse_global_grad: bool = False

  def validate(self) -> None:
    if not 0.0 <= self.alpha_init <= 1.0:
      raise ValueError(f"apfl.alpha_init={self.alpha_init}; allowed: [0, 1]")
    if self.alpha_grad not in ALPHA_GRADS:
      raise ValueError(f"apfl.alpha_grad={self.alpha_grad!r}; allowed: {list(ALPHA_GRADS)}")
    if self.alpha_lr is not None and not self.alpha_lr > 0:
      raise ValueError(f"apfl.alpha_lr={self.alpha_lr}; allowed: > 0 or None")


class APFLClient(NamedTuple):
  """Per-client state (stacked ``[N, ...]``)."""
  v: Any
  alpha: jax.Array  # [] float32


class _State(NamedTuple):
  w: Any
  v: Any
  alpha: jax.Array
  opt_w: Any
  opt_v: Any


def _vdot(a, b) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def apfl_program(apply, optimizer: optax.GradientTransformation, cfg: APFLConfig, lr_alpha: float,
                 *, epochs: int, batch_size: int, num_slots: int) -> LocalProgram:
  """The local program: input ``(w, APFLClient)``, output ``(w, APFLClient)``."""

  def ce(params, batch):
    return softmax_cross_entropy(apply(params, batch.x), batch.y, batch.mask)

  def init_state(inputs):
    w, client = inputs
    return _State(w, client.v, client.alpha, optimizer.init(w), optimizer.init(client.v))

  def update(s: _State, batch, epoch, key):
    del key
    loss, g_w = jax.value_and_grad(ce)(s.w, batch)
    u, opt_w = optimizer.update(g_w, s.opt_w, s.w)
    w = optax.apply_updates(s.w, u)
    logits_w = jax.lax.stop_gradient(apply(w, batch.x))

    def mixed(v, a):
      logits = a * apply(v, batch.x) + (1.0 - a) * logits_w
      return softmax_cross_entropy(logits, batch.y, batch.mask)
    g_v, g_a = jax.grad(mixed, argnums=(0, 1))(s.v, s.alpha)
    u, opt_v = optimizer.update(g_v, s.opt_v, s.v)
    v = optax.apply_updates(s.v, u)
    if cfg.reuse_global_grad:
      u, opt_w = optimizer.update(g_w, opt_w, w)
      w = optax.apply_updates(w, u)
    alpha = s.alpha
    if cfg.adapt_alpha:
      if cfg.alpha_grad == "flbench":
        mix = jax.tree.map(lambda gv, gw: s.alpha * gv + (1.0 - s.alpha) * gw, g_v, g_w)
        g_a = _vdot(jax.tree.map(jnp.subtract, v, w), mix)
      new = jnp.clip(s.alpha - lr_alpha * (g_a + 0.02 * s.alpha), 0.0, 1.0)
      alpha = jnp.where(epoch == 0, new, s.alpha)
    return _State(w, v, alpha, opt_w, opt_v), loss

  def result(s: _State):
    return s.w, APFLClient(s.v, s.alpha)

  return batch_program(init_state, update, result, epochs=epochs, batch_size=batch_size,
                       num_slots=num_slots)


def apfl(*, local: LocalProgram, apply, alpha_init: float) -> Algorithm:
  """Builds APFL. Server: global params; client state: :class:`APFLClient`."""

  def init(params, num_clients, *, key=None):
    client = APFLClient(params, jnp.asarray(alpha_init, jnp.float32))
    return params, cohort.stack_clients(client, num_clients)

  def broadcast(server, client, *, ctx=None):
    return (server, client), ()

  def finalize(server, client, trained, extra, *, ctx=None):
    w, new_client = trained
    return w, new_client, {"alpha": new_client.alpha}

  def aggregate(server, uploads, weights, *, ctx=None):
    return weighted_mean(uploads, weights), {}

  def personalize(server, client):
    return server, client.v, client.alpha

  def eval_apply(personalized, x):
    w, v, alpha = personalized
    return alpha * apply(v, x) + (1.0 - alpha) * apply(w, x)

  return Algorithm("apfl", init, broadcast, local, finalize, aggregate, personalize, eval_apply)


def _build(cfg: APFLConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  lr_alpha = cfg.alpha_lr if cfg.alpha_lr is not None else client_lr(spec)
  program = apfl_program(spec.apply, spec.optimizer, cfg, lr_alpha, epochs=spec.epochs,
                         batch_size=spec.batch_size, num_slots=spec.num_slots)
  return apfl(local=program, apply=spec.apply, alpha_init=cfg.alpha_init)


SPECS = {"apfl": AlgorithmSpec(APFLConfig, _build,
                               "APFL (Deng et al. 2020), FL-bench's logit mixture")}
