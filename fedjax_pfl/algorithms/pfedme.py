"""pFedMe: personalized FL with Moreau envelopes.

Dinh, Tran, Nguyen. "Personalized Federated Learning with Moreau Envelopes."
NeurIPS 2020, arXiv:2006.08848. Reference: FL-bench
``src/{server,client}/pfedme.py``.

Round t, sampled client i: ``theta = w_i = theta_bar^t``. Per minibatch of E
epochs (batches of < 2 examples skipped):

* K inner steps on the same batch (approximate prox solution ``theta_hat``):
  ``theta <- theta - lr_p (grad f_i(theta) + lam (theta - w_i) + mu theta)``;
* ``w_i <- w_i - eta lam (w_i - theta_hat)``.

``theta`` carries over between batches (as in the reference code). Upload
``w_i``; server ``theta_bar <- (1 - beta) theta_bar + beta sum_i n_i w_i /
sum_i n_i`` (FL-bench weights by train-set size). The client stores its last
``theta_hat_i`` and is evaluated with it; a client never sampled is evaluated
with the global model (the paper's personalized evaluation).

Not copied from FL-bench: FL-bench's pFedMe never writes the personalized
model back to its stored per-client dict, so every client is evaluated with
``theta^0`` for the whole run (a bug; pFedMe is not in the FedOBP tables).

Deviations: ``eta`` defaults to the client learning rate read off the
client optimizer (FL-bench ``local_lr``); the client optimizer's momentum and
weight decay are unused, as in FL-bench (its pFedMe optimizer is plain).

Degenerate equivalences: ``beta = 1`` is plain weighted averaging of the
``w_i``; with ``lam = mu = 0`` the inner loop is K plain SGD steps of lr_p on
the batch (and ``w_i`` never moves).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms._compose import batch_program, client_lr
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram, softmax_cross_entropy
from fedjax_pfl.ops.aggregation import weighted_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class PFedMeConfig:
  """pFedMe hyperparameters (FL-bench defaults).

  Attributes:
    lam: prox strength ``lambda >= 0`` (FL-bench ``lamda``).
    k: inner steps per batch, ``>= 1``.
    pers_lr: inner step size ``lr_p > 0``.
    mu: L2 term ``>= 0`` of the inner objective.
    beta: server mixing in [0, 1].
    eta: step of the local copy ``w_i``, > 0; None = the client lr.
  """
  lam: float = 15.0
  k: int = 5
  pers_lr: float = 0.01
  mu: float = 1e-3
  beta: float = 1.0
  eta: float | None = None

  def validate(self) -> None:
    if not self.lam >= 0:
      raise ValueError(f"pfedme.lam={self.lam}; allowed: >= 0")
    if self.k < 1:
      raise ValueError(f"pfedme.k={self.k}; allowed: >= 1")
    if not self.pers_lr > 0:
      raise ValueError(f"pfedme.pers_lr={self.pers_lr}; allowed: > 0")
    if not self.mu >= 0:
      raise ValueError(f"pfedme.mu={self.mu}; allowed: >= 0")
    if not 0.0 <= self.beta <= 1.0:
      raise ValueError(f"pfedme.beta={self.beta}; allowed: [0, 1]")
    if self.eta is not None and not self.eta > 0:
      raise ValueError(f"pfedme.eta={self.eta}; allowed: > 0 or None")


class PFedMeClient(NamedTuple):
  """Per-client state (stacked ``[N, ...]``): last ``theta_hat``, and whether
  the client has trained (bool ``[]``)."""
  theta: Any
  trained: jax.Array


def inner_steps(ce, theta, w, batch, *, k: int, lr: float, lam: float, mu: float):
  """K steps of ``theta -= lr (grad ce + lam (theta - w) + mu theta)``;
  returns ``(theta_hat, loss at the first step)``."""
  def one(theta, _):
    loss, g = jax.value_and_grad(ce)(theta, batch)
    theta = jax.tree.map(lambda p, gp, wp: p - lr * (gp + lam * (p - wp) + mu * p), theta, g, w)
    return theta, loss
  theta, losses = jax.lax.scan(one, theta, None, length=k)
  return theta, losses[0]


def pfedme_program(apply, cfg: PFedMeConfig, eta: float, *, epochs: int, batch_size: int,
                   num_slots: int) -> LocalProgram:
  """Local program: input the global params; output ``(w_i, theta_hat_i)``."""

  def ce(params, batch):
    return softmax_cross_entropy(apply(params, batch.x), batch.y, batch.mask)

  def update(state, batch, epoch, key):
    del epoch, key
    theta, w = state
    theta, loss = inner_steps(ce, theta, w, batch, k=cfg.k, lr=cfg.pers_lr, lam=cfg.lam,
                              mu=cfg.mu)
    w = jax.tree.map(lambda wp, tp: wp - eta * cfg.lam * (wp - tp), w, theta)
    return (theta, w), loss

  return batch_program(lambda params: (params, params), update, lambda s: (s[1], s[0]),
                       epochs=epochs, batch_size=batch_size, num_slots=num_slots)


def pfedme(*, local: LocalProgram, beta: float) -> Algorithm:
  """Builds pFedMe. Server: global params; client: :class:`PFedMeClient`."""

  def init(params, num_clients, *, key=None):
    return params, cohort.stack_clients(PFedMeClient(params, jnp.zeros((), bool)), num_clients)

  def broadcast(server, client, *, ctx=None):
    return server, ()

  def finalize(server, client, trained, extra, *, ctx=None):
    w, theta = trained
    return w, PFedMeClient(theta, jnp.ones((), bool)), {}

  def aggregate(server, uploads, weights, *, ctx=None):
    mean = weighted_mean(uploads, weights)
    return jax.tree.map(lambda s, m: (1.0 - beta) * s + beta * m, server, mean), {}

  def personalize(server, client):
    return jax.tree.map(lambda p, s: jnp.where(client.trained, p, s), client.theta, server)

  return Algorithm("pfedme", init, broadcast, local, finalize, aggregate, personalize)


def _build(cfg: PFedMeConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  eta = cfg.eta if cfg.eta is not None else client_lr(spec)
  program = pfedme_program(spec.apply, cfg, eta, epochs=spec.epochs, batch_size=spec.batch_size,
                           num_slots=spec.num_slots)
  return pfedme(local=program, beta=cfg.beta)


SPECS = {"pfedme": AlgorithmSpec(PFedMeConfig, _build,
                                 "pFedMe (Dinh et al. 2020): Moreau-envelope personalization")}
