"""FedOBP with the Fisher-information score (the score comparison of Fig. 4).

Chen, Du, Xu, Zhuang, Zhong, Muntean, Diao. "FedOBP: Federated Optimal Brain
Personalization with Few Personalized Parameters." arXiv:2604.16574.

FedOBP's decoupling (normalisation ``norm``, ONE quantile threshold
``tau = Quantile_q(s)`` over the scored entries, merge
``where(s > tau, theta_i^last, theta_bar)``, full upload, FedAvg; see
:mod:`fedjax_pfl.algorithms.fedobp`) with the importance score replaced by the
empirical Fisher of the client's last model over its own train set,
``I = sum_x (d log p(y|x) / d theta)^2`` (FedDPA's estimator,
:func:`fedjax_pfl.algorithms.feddpa.with_fisher`). The Fisher is computed in
one extra pass right after local training and kept with the client; it does
not depend on the global model, so it is not recomputed at broadcast.

Deviations: a client that has not trained yet has an all-zero Fisher, hence
no personal entry (the global model), whereas FedOBP's drift score merges in
theta^0 entries; the Fisher leaves out a lone last example of an odd-sized
epoch, as training does. ``ema`` smooths the Fisher over participations as
FedOBP's option smooths its scores.

Degenerate equivalence: ``quantile = 1.0`` personalizes nothing, so it equals
FedAvg round for round.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl import ops
from fedjax_pfl.algorithms.feddpa import with_fisher
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalSpec
from fedjax_pfl.models.base import scope_mask
from fedjax_pfl.ops.aggregation import weighted_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedOBPFisherConfig:
  """Hyperparameters: those of ``FedOBPConfig`` without ``score``.

  Attributes:
    quantile: q in [0, 1]; about (1 - q) of the scored entries are personal.
    norm: ``"none"``, ``"global"`` or ``"layer"``.
    scope: ``"all"`` or ``"classifier"``.
    ema: smooth the Fisher over a client's participations.
    ema_alpha: weight of the previous EMA, in [0, 1).
  """
  quantile: float = 0.9999
  norm: str = "global"
  scope: str = "all"
  ema: bool = False
  ema_alpha: float = 0.5

  def validate(self) -> None:
    if not 0.0 <= self.quantile <= 1.0:
      raise ValueError(f"fedobp_fisher.quantile={self.quantile}; allowed: [0, 1]")
    if self.norm not in ops.NORMS:
      raise ValueError(f"fedobp_fisher.norm={self.norm!r}; allowed: {list(ops.NORMS)}")
    if self.scope not in ("all", "classifier"):
      raise ValueError(f"fedobp_fisher.scope={self.scope!r}; allowed: ['all', 'classifier']")
    if not 0.0 <= self.ema_alpha < 1.0:
      raise ValueError(f"fedobp_fisher.ema_alpha={self.ema_alpha}; allowed: [0, 1)")


class FedOBPFisherClient(NamedTuple):
  """Per-client state (stacked ``[N, ...]``): last model, its Fisher, EMA."""
  last: Any
  fisher: Any
  ema: Any


def fedobp_fisher(*, spec: LocalSpec, params, config: FedOBPFisherConfig) -> Algorithm:
  """Builds FedOBP with the Fisher score. Server state: global params; client
  state: :class:`FedOBPFisherClient`. Metrics: ``personalized_fraction[/<layer>]``."""
  config.validate()
  scope = scope_mask(params, config.scope)
  local = with_fisher(spec.program(), spec.apply, params, lambda p, fisher: (p, fisher))

  def scores_of(client):
    if config.ema:
      return ops.ema_scores(client.fisher, client.ema, config.ema_alpha)
    return client.fisher

  def decouple(server, client):
    scores = scores_of(client)
    keep = ops.keep_local_mask(scores, config.quantile, norm=config.norm, scope=scope)
    return ops.masked_merge(keep, client.last, server), keep, scores

  def init(params, num_clients):
    zeros = jax.tree.map(jnp.zeros_like, params)
    ema = zeros if config.ema else ()
    return params, cohort.stack_clients(FedOBPFisherClient(params, zeros, ema), num_clients)

  def broadcast(server, client):
    merged, keep, scores = decouple(server, client)
    stats = ops.personalized_fraction(keep, scope)
    metrics = {"personalized_fraction": stats["overall"],
               **{f"personalized_fraction/{k}": v for k, v in stats["per_layer"].items()}}
    return merged, (scores if config.ema else (), metrics)

  def finalize(server, client, trained, extra):
    (params, fisher), (ema, metrics) = trained, extra
    return params, FedOBPFisherClient(params, fisher, ema), metrics

  def aggregate(server, uploads, weights):
    return weighted_mean(uploads, weights), {}

  def personalize(server, client):
    return decouple(server, client)[0]

  return Algorithm("fedobp_fisher", init, broadcast, local, finalize, aggregate, personalize)


def _build(cfg: FedOBPFisherConfig, *, spec, params) -> Algorithm:
  return fedobp_fisher(spec=spec, params=params, config=cfg)


SPECS = {"fedobp_fisher": AlgorithmSpec(
    FedOBPFisherConfig, _build, "FedOBP with the Fisher-information score (Fig. 4)")}
