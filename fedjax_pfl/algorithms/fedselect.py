"""FedSelect: personal subnetworks grown by the lottery-ticket rule.

Tamirisa, Xie, Bao, Zhou, Arel, Shamsian. "FedSelect: Personalized Federated
Learning with Customized Selection of Parameters for Fine-Tuning." CVPR 2024,
arXiv:2404.02478 (code: ``lapisrocks/fedselect``: ``fedselect.py``,
``lottery_ticket.py``, ``pflopt/optimizers.py``, ``masked_fedavg.py``).

Client i keeps a full model theta_i and a binary mask m_i (1 = personal,
initially all 0). Local "LocalAlt": ``la_epochs`` iterations, each one pass
updating only the personal entries then one pass updating only the shared
ones (frozen entries keep their value and optimizer state). Server: per entry,
the mean over the cohort's clients for which it is shared,
``theta_bar_j = sum_i w_i (1 - m_ij) theta_ij / sum_i w_i (1 - m_ij)`` (kept
where no client shares it). A client starts from and is evaluated with
``where(m_i, theta_i, theta_bar)``. In rounds ``t`` with ``t % lth_epoch_iters
== 0`` and ``t > 0``, after training, every WEIGHT tensor (``kernel``; biases
are never personal) whose personal fraction is ``<= prune_target`` grows its
mask: with ``|Delta| = |theta_i - theta_i^snapshot|`` over the currently shared
entries sorted ascending, ``cutoff = sorted[round((1 - p) k)]`` (k shared
entries, round half to even as ``np.round``; no growth when the index is k)
and ``m = 1`` where ``|Delta| >= cutoff``; the snapshot becomes theta_i.

Deviations (FL-bench conventions, documented): the reference fixes one client
subset that trains every round; here the cohort is sampled and the server
average is applied lazily when a client is next used. The masked mean uses
train-size weights ``w_i`` (``weighted=False``: the reference's plain count).
``la_epochs=None`` uses the run's local epochs (the paper: 15) and the run's
optimizer (the reference: plain SGD, lr 0.05; ``clip_grad_norm`` > 0 adds its
optional global-norm clipping). Both passes of one LocalAlt iteration visit
the examples in the same shuffled order. As in the reference, the personal
entries newly grown in a round are still overwritten by the average once
(the merge uses the mask the client trained with).

Degenerate equivalence: with ``prune_percent = 0`` the mask never grows, the
personal passes are no-ops, and FedSelect equals FedAvg (when ``la_epochs`` is
the run's epochs).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_pfl import ops
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalInput, LocalProgram, LocalSpec
from fedjax_pfl.models.base import label_params

WEIGHT_RULES = {r"(^|/)kernel$": "weight"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedSelectConfig:
  """FedSelect hyperparameters.

  Attributes:
    la_epochs: LocalAlt iterations (each = 2 passes); None = the run's epochs.
    lth_epoch_iters: grow masks in rounds ``t % lth_epoch_iters == 0, t > 0``.
    prune_percent: percent p of the shared entries of a weight tensor made
      personal per growth, in [0, 100).
    prune_target: percent bound; a tensor grows only while its personal
      fraction is ``<= prune_target`` percent, in [0, 100].
    weighted: train-size-weighted masked mean (False: the reference's count).
    clip_grad_norm: global-norm gradient clipping (0 = off).
  """
  la_epochs: int | None = None
  lth_epoch_iters: int = 3
  prune_percent: float = 25.0
  prune_target: float = 80.0
  weighted: bool = True
  clip_grad_norm: float = 0.0

  def validate(self) -> None:
    if self.la_epochs is not None and self.la_epochs < 1:
      raise ValueError(f"fedselect.la_epochs={self.la_epochs}; allowed: None or >= 1")
    if self.lth_epoch_iters < 1:
      raise ValueError(f"fedselect.lth_epoch_iters={self.lth_epoch_iters}; allowed: >= 1")
    if not 0.0 <= self.prune_percent < 100.0:
      raise ValueError(f"fedselect.prune_percent={self.prune_percent}; allowed: [0, 100)")
    if not 0.0 <= self.prune_target <= 100.0:
      raise ValueError(f"fedselect.prune_target={self.prune_target}; allowed: [0, 100]")
    if self.clip_grad_norm < 0:
      raise ValueError(f"fedselect.clip_grad_norm={self.clip_grad_norm}; allowed: >= 0")


class FedSelectClient(NamedTuple):
  """Per-client state (stacked ``[N, ...]``).

  Attributes:
    params: theta_i, the client's last trained model (initially theta^0).
    mask: m_i for the next training (bool, 1 = personal).
    merge_mask: the mask theta_i was trained with (its entries merged in).
    snapshot: theta_i at the last mask growth (initially theta^0).
  """
  params: Any
  mask: Any
  merge_mask: Any
  snapshot: Any


class FedSelectServer(NamedTuple):
  params: Any


def select_params(mask, new, old):
  """``where(mask, new, old)`` leafwise, also over params-shaped subtrees of an
  optimizer state (other leaves take ``new``)."""
  structure = jax.tree.structure(mask)
  is_params = lambda x: jax.tree.structure(x) == structure
  pick = lambda n, o: jax.tree.map(jnp.where, mask, n, o) if is_params(n) else n
  return jax.tree.map(pick, new, old, is_leaf=is_params)


def local_alt_program(inner: LocalProgram) -> LocalProgram:
  """LocalAlt from an E'-epoch SGD program whose context is the mask m:
  pass ``2k`` trains where m, pass ``2k+1`` where not m, both with epoch k's
  example order."""
  spe = inner.steps_per_epoch

  def step(carry, t, data):
    p, s = t // spe, t % spe
    new = inner.step(carry, (p // 2) * spe + s, data)
    trainable = jax.tree.map(lambda m: m == (p % 2 == 0), carry.context)
    return new._replace(params=select_params(trainable, new.params, carry.params),
                        opt_state=select_params(trainable, new.opt_state, carry.opt_state))

  return inner._replace(step=step, num_steps=2 * inner.num_steps)


def grow_mask(now, snapshot, mask, is_weight, prune_rate: float, target: float):
  """The lottery-ticket growth of every weight tensor (module docstring)."""
  def leaf(p, s, m, w):
    if not w:
      return m
    delta = jnp.abs(p - s).ravel()
    shared = ~m.ravel()
    k = jnp.sum(shared)
    ordered = jnp.sort(jnp.where(shared, delta, jnp.inf))
    idx = jnp.round((1.0 - prune_rate) * k.astype(jnp.float32)).astype(jnp.int32)
    cutoff = jnp.where(idx < k, ordered[jnp.minimum(idx, delta.size - 1)], jnp.inf)
    grown = (m.ravel() | (delta >= cutoff)).reshape(m.shape)
    return jnp.where(1.0 - k / delta.size <= target, grown, m)
  return jax.tree.map(leaf, now, snapshot, mask, is_weight)


def masked_mean(params, shared, weights, fallback):
  """``sum_i w_i s_i theta_i / sum_i w_i s_i`` over the leading axis, per
  entry; ``fallback`` where the denominator is 0."""
  w = jnp.asarray(weights, jnp.float32)

  def leaf(p, s, f):
    ws = jnp.tensordot(w, s.astype(jnp.float32), axes=(0, 0))
    num = jnp.tensordot(w, jnp.where(s, p, 0.0), axes=(0, 0))
    return jnp.where(ws > 0, num / jnp.where(ws > 0, ws, 1.0), f)
  return jax.tree.map(leaf, params, shared, fallback)


def fedselect(*, spec: LocalSpec, params, config: FedSelectConfig) -> Algorithm:
  """Builds FedSelect. Server state: :class:`FedSelectServer`; client state:
  :class:`FedSelectClient`. Metric: ``personalized_fraction`` (of the masks
  trained with, over all entries)."""
  config.validate()
  optimizer = spec.optimizer
  if config.clip_grad_norm > 0:
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), optimizer)
  local = local_alt_program(spec.program(epochs=config.la_epochs, optimizer=optimizer))
  is_weight = jax.tree.map(lambda lab: lab == "weight", label_params(params, WEIGHT_RULES))
  rate, target = config.prune_percent / 100.0, config.prune_target / 100.0

  def init(params, num_clients, *, key=None):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.bool_), params)
    client = FedSelectClient(params, zeros, zeros, params)
    return FedSelectServer(params), cohort.stack_clients(
        client, num_clients)

  def merged(server, client):
    return ops.masked_merge(client.merge_mask, client.params, server.params)

  def broadcast(server, client, *, ctx=None):
    frac = ops.personalized_fraction(client.mask)["overall"]
    return LocalInput(merged(server, client), client.mask), {"personalized_fraction": frac}

  def finalize(server, client, trained, extra, *, ctx):
    t = ctx.round
    grow = (t % config.lth_epoch_iters == 0) & (t > 0)
    mask = grow_mask(trained, client.snapshot, client.mask, is_weight, rate, target)
    new_client = FedSelectClient(
        trained, jax.tree.map(lambda a, b: jnp.where(grow, a, b), mask, client.mask),
        client.mask, jax.tree.map(lambda a, b: jnp.where(grow, a, b), trained, client.snapshot))
    shared = jax.tree.map(jnp.logical_not, client.mask)
    return (trained, shared), new_client, extra

  def aggregate(server, uploads, weights, *, ctx=None):
    trained, shared = uploads
    w = weights if config.weighted else (weights > 0).astype(jnp.float32)
    mean = masked_mean(trained, shared, w, server.params)
    return FedSelectServer(mean), {}

  return Algorithm("fedselect", init, broadcast, local, finalize, aggregate, merged)


def _build(cfg: FedSelectConfig, *, spec, params) -> Algorithm:
  return fedselect(spec=spec, params=params, config=cfg)


SPECS = {"fedselect": AlgorithmSpec(FedSelectConfig, _build,
                                    "FedSelect (Tamirisa et al., CVPR 2024)")}
