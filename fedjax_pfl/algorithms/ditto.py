"""Ditto: fair and robust FL through personalization.

Li, Hu, Beirami, Smith. "Ditto: Fair and Robust Federated Learning Through
Personalization." ICML 2021, arXiv:2012.04221. Reference: FL-bench
``src/{server,client}/ditto.py``.

Round t, sampled client i, received global model ``theta^t``:

* global: ``w_i`` = E epochs of SGD on CE from ``theta^t`` (exactly FedAvg's
  local training, same key); upload ``w_i``; ``theta^{t+1}`` = weighted mean;
* personal: ``v_i`` = ``pers_epochs`` epochs of SGD from the client's stored
  ``v_i`` (initially ``theta^0``) on ``CE(v) + lam/2 ||v - theta^t||^2``
  (gradient ``grad f_i(v) + lam (v - theta^t)``, the prox anchor being the
  RECEIVED global model); store ``v_i``.

Both run in one local program (:func:`chain_programs`: global steps, then
personal steps; the personal phase uses the key ``fold_in(key, 1)``), each
with a fresh optimizer state (FL-bench uses one optimizer whose two parameter
groups have separate momentum buffers, reset every round: the same thing).
Evaluation: ``v_i``.

Deviation: the personal phase skips batches with fewer than 2 examples like
every local loop here (FL-bench's personal loop does not skip them).

Degenerate equivalences: the server model equals FedAvg's round for round
(for any ``lam``); ``lam = 0`` makes ``v_i`` pure local training from
``v_i``; ``lam -> inf`` pins ``v_i`` to the received global model.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms._compose import chain_programs
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalInput, LocalProgram
from fedjax_pfl.ops.aggregation import weighted_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class DittoConfig:
  """Ditto hyperparameters.

  Attributes:
    lam: prox strength ``lam >= 0`` (FL-bench ``lamda``).
    pers_epochs: epochs of personal training per round, ``>= 1``.
  """
  lam: float = 1.0
  pers_epochs: int = 1

  def validate(self) -> None:
    if not self.lam >= 0.0:
      raise ValueError(f"ditto.lam={self.lam}; allowed: >= 0")
    if self.pers_epochs < 1:
      raise ValueError(f"ditto.pers_epochs={self.pers_epochs}; allowed: >= 1")


def prox_loss(ce_loss, lam: float):
  """``(v, batch, key, anchor) -> CE(v) + lam/2 ||v - anchor||^2``."""
  def loss(params, batch, key, anchor):
    value = ce_loss(params, batch, key)
    if lam:
      sq = sum(jnp.sum(jnp.square(p - a)) for p, a in zip(jax.tree.leaves(params),
                                                          jax.tree.leaves(anchor)))
      value = value + 0.5 * lam * sq
    return value
  return loss


def ditto(*, global_program: LocalProgram, personal_program: LocalProgram) -> Algorithm:
  """Builds Ditto.

  Args:
    global_program: local training of the global model (plain SGD).
    personal_program: training of ``v``; its loss context is the received
      global model.

  Returns:
    The :class:`Algorithm`. Server: global params. Client state: ``v_i``
    (params ``[N, ...]``). Metrics: ``train_loss`` (global phase) and
    ``pers/train_loss``.
  """
  local = chain_programs([global_program, personal_program], ["", "pers/"])

  def init(params, num_clients, *, key=None):
    return params, cohort.stack_clients(params, num_clients)

  def broadcast(server, client, *, ctx=None):
    return (server, LocalInput(client, server)), ()

  def finalize(server, client, trained, extra, *, ctx=None):
    w, v = trained
    return w, v, {}

  def aggregate(server, uploads, weights, *, ctx=None):
    return weighted_mean(uploads, weights), {}

  def personalize(server, client):
    return client

  return Algorithm("ditto", init, broadcast, local, finalize, aggregate, personalize)


def _build(cfg: DittoConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  return ditto(global_program=spec.program(),
               personal_program=spec.program(prox_loss(spec.ce_loss, cfg.lam),
                                             epochs=cfg.pers_epochs))


SPECS = {"ditto": AlgorithmSpec(DittoConfig, _build,
                                "Ditto (Li et al. 2021): prox-regularized personal models")}
