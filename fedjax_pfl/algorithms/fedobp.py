"""FedOBP: Federated Optimal Brain Personalization.

Chen, Du, Xu, Zhuang, Zhong, Muntean, Diao. "FedOBP: Federated Optimal Brain
Personalization with Few Personalized Parameters." arXiv:2604.16574.

Per sampled client i in round t (spec §2.4, computed server-side):

* score ``I = (theta_i^last - theta_bar^t)^2`` (Eq. 19; ``score="abs_diff_local"``
  gives the Jan-2025 reference code's ``|Delta * theta_local|``, ``"abs_diff"``
  the gradient-based ``|Delta|`` of Fig. 4, ``"fisher"`` the empirical Fisher
  of the client's last model over its own train set, computed in one extra
  pass right after local training and kept with the client (FedDPA's
  estimator; a client that never trained has an all-zero Fisher, hence no
  personal entry));
* optional normalization (``none`` / ``global`` / ``layer``) and ONE quantile
  threshold ``tau = Quantile_q(s)`` over the scored entries (Eq. 7-8);
* merge ``theta~_i = where(s > tau, theta_i^last, theta_bar)`` (Eq. 9);
* E epochs of SGD from ``theta~_i``; the client uploads the FULL model, the
  server stores it as ``theta_i^last`` and averages all entries (Eq. 11).
* communication (§V-G): uplink is the full model; downlink is the global
  entries ``G_i`` (4 bytes each) plus the mask (1 bit per entry); the
  ``downlink_ratio`` |G_i| / |theta| is the x-axis of the paper's Fig. 7.

The server keeps ``theta^last`` for all N clients, initialized to theta^0 (so a
never-selected client's "personal" entries come from the initial weights, as
in the reference code). Evaluation uses the merged model of every client.
``scope="classifier"`` is the CLS variant (only classifier entries scored; all
others always global). ``ema=True`` enables the reference code's option
(off by default, not in the paper): ``I_ema = (1 - a) I + a I_ema_prev`` per
client, updated when the client is selected.

Degenerate equivalence: ``quantile = 1.0`` personalizes nothing, so FedOBP
equals FedAvg round for round.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl import ops
from fedjax_pfl.algorithms.spec import AlgorithmSpec, is_traced
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram
from fedjax_pfl.models.base import scope_mask
from fedjax_pfl.ops.aggregation import weighted_mean

SCORES = (*ops.SCORE_FNS, "fisher")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedOBPConfig:
  """FedOBP hyperparameters.

  Attributes:
    quantile: q in [0, 1]; about (1 - q) of the scored entries are
      personalized (Table II of the paper gives q per dataset). Batchable:
      may be a traced scalar, so a quantile sweep runs as one program.
    norm: ``"none"``, ``"global"`` (reference default; ranks like ``none``) or
      ``"layer"`` (per-tensor min-max).
    scope: ``"all"`` or ``"classifier"`` (the CLS variant).
    score: ``"sq_diff"`` (Eq. 19), ``"abs_diff_local"``, ``"abs_diff"`` or
      ``"fisher"`` (the scores compared in the paper's Fig. 4).
    ema: smooth scores over a client's participations (reference-code option).
    ema_alpha: weight ``a`` of the previous EMA, in [0, 1).
  """
  quantile: float = 0.9999
  norm: str = "global"
  scope: str = "all"
  score: str = "sq_diff"
  ema: bool = False
  ema_alpha: float = 0.5

  def validate(self) -> None:
    if not is_traced(self.quantile) and not 0.0 <= self.quantile <= 1.0:
      raise ValueError(f"fedobp.quantile={self.quantile} is invalid; allowed: [0, 1]")
    if self.norm not in ops.NORMS:
      raise ValueError(f"fedobp.norm={self.norm!r} is invalid; allowed: {list(ops.NORMS)}")
    if self.scope not in ("all", "classifier"):
      raise ValueError(f"fedobp.scope={self.scope!r} is invalid; allowed: ['all', 'classifier']")
    if self.score not in SCORES:
      raise ValueError(f"fedobp.score={self.score!r} is invalid; allowed: {sorted(SCORES)}")
    if not 0.0 <= self.ema_alpha < 1.0:
      raise ValueError(f"fedobp.ema_alpha={self.ema_alpha} is invalid; allowed: [0, 1)")


class FedOBPClient(NamedTuple):
  """Per-client state (stacked ``[N, ...]``): last uploaded model, EMA scores,
  and the Fisher of ``last`` (``score="fisher"`` only)."""
  last: Any
  ema: Any
  fisher: Any = ()


def fedobp(*, local: LocalProgram, config: FedOBPConfig, scope: Any = None) -> Algorithm:
  """Builds FedOBP.

  Args:
    local: the local training program (E epochs of SGD); with
      ``score="fisher"`` it must finish with ``(params, fisher)`` (see
      ``feddpa.with_fisher``).
    config: :class:`FedOBPConfig`.
    scope: optional bool pytree of scored entries (``models.scope_mask``);
      must agree with ``config.scope``.

  Returns:
    The :class:`Algorithm`. Server state: global params. Client state:
    :class:`FedOBPClient`. Per-round metrics (cohort means):
    ``personalized_fraction``, ``personalized_fraction/<layer>``,
    ``personalized_count/<layer>`` (entries; without a scope), and the
    communication keys ``downlink_values``, ``downlink_bytes``,
    ``downlink_ratio``.
  """
  config.validate()
  q = config.quantile
  fisher = config.score == "fisher"

  def scores_of(server, client):
    if fisher:
      scores = client.fisher
    else:
      scores = ops.fedobp_scores(client.last, server, score=config.score)
    if config.ema:
      scores = ops.ema_scores(scores, client.ema, config.ema_alpha)
    return scores

  def decouple(server, client):
    scores = scores_of(server, client)
    keep = ops.keep_local_mask(scores, q, norm=config.norm, scope=scope)
    return ops.masked_merge(keep, client.last, server), keep, scores

  def init(params, num_clients, *, key=None):
    zeros = jax.tree.map(jnp.zeros_like, params)
    client = FedOBPClient(params, zeros if config.ema else (), zeros if fisher else ())
    return params, cohort.stack_clients(client, num_clients)

  def broadcast(server, client, *, ctx=None):
    merged, keep, scores = decouple(server, client)
    stats = ops.personalized_fraction(keep, scope)
    total = sum(k.size for k in jax.tree.leaves(keep))
    personal = sum(jnp.sum(k, dtype=jnp.float32) for k in jax.tree.leaves(keep))
    sent = total - personal  # the global entries G_i; plus the mask, 1 bit per entry (§V-G)
    per_layer_total = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in keep.items()}
    metrics = {"personalized_fraction": stats["overall"],
               **{f"personalized_fraction/{k}": v for k, v in stats["per_layer"].items()},
               **{f"personalized_count/{k}": v * per_layer_total[k]
                  for k, v in stats["per_layer"].items() if scope is None},
               "downlink_values": sent, "downlink_bytes": 4.0 * sent + total / 8.0,
               "downlink_ratio": sent / total}
    return merged, (scores if config.ema else (), metrics)

  def finalize(server, client, trained, extra, *, ctx=None):
    ema, metrics = extra
    params, new_fisher = trained if fisher else (trained, ())
    return params, FedOBPClient(params, ema, new_fisher), metrics

  def aggregate(server, uploads, weights, *, ctx=None):
    return weighted_mean(uploads, weights), {}

  def personalize(server, client):
    return decouple(server, client)[0]

  return Algorithm("fedobp", init, broadcast, local, finalize, aggregate, personalize)


def _build(cfg: FedOBPConfig, *, spec, params) -> Algorithm:
  local = spec.program()
  if cfg.score == "fisher":
    from fedjax_pfl.algorithms.feddpa import with_fisher
    local = with_fisher(local, spec.apply, params, lambda p, f: (p, f))
  return fedobp(local=local, config=cfg, scope=scope_mask(params, cfg.scope))


SPECS = {"fedobp": AlgorithmSpec(FedOBPConfig, _build, "FedOBP (Chen et al., arXiv:2604.16574)",
                                 batchable=("quantile",))}
