"""pFedFDA: a generative (LDA) head over a federated body.

McLaughlin, Su. "Personalized Federated Learning via Feature Distribution
Adaptation." NeurIPS 2024, arXiv:2411.00329 (code:
``cj-mclaughlin/pFedFDA`` ``clients/client_fedfda.py``; FL-bench
``src/client/pfedfda.py``).

The body is FedAvg-shared; the head is the LDA classifier of Gaussian class
means ``mu [K, D]``, a shared covariance ``Sigma [D, D]`` and label priors
``pi``: with ``Sigma~ = (1 - eps) Sigma + eps tr(Sigma)/D I``,
``W = (Sigma~^-1 mu^T)^T`` and ``b = -1/2 diag(mu Sigma~^-1 mu^T) + log pi``.
Per sampled client:

1. head := LDA(mu_g, Sigma_g, pi_i) with ``pi_i`` = train label frequencies
   + eps, renormalised; frozen; the body trains with CE for E epochs;
2. features h(x) of the trained body over the train set; local MLE
   ``mu_y`` (the class mean where the class has more than ``num_cv_folds``
   examples, else ``mu_g,y``) and ``Sigma = scatter/(n-1) + 1e-4 + I``;
3. ``beta = (beta_mu, beta_Sigma)`` minimising the summed CE of the LDA head
   of ``(beta_mu mu_f + (1-beta_mu) mu_g, beta_S Sigma_f + (1-beta_S) Sigma_g)``
   over ``num_cv_folds`` stratified folds (stats ``_f`` from the other folds;
   classes with fewer than ``num_cv_folds`` examples left out; no example
   left: beta = (0, 0), as in the reference);
4. adaptive ``mu_i = beta_mu mu + (1-beta_mu) mu_g`` (same for Sigma),
   uploaded with the body; the server sample-averages ``mu_i``, ``Sigma_i``.

Evaluation (``personalize_with_data``, the official code's): the CURRENT global
body with an LDA head whose statistics are recomputed from that body's
features of the client's train set: ``mu_i = beta_mu mu + (1-beta_mu) mu_g``
(same for Sigma) with the local MLE ``mu, Sigma`` of those features, the
client's stored beta (from its last training) and its train label priors; a
client that never trained uses the current global statistics and its train
label priors. (Before: the statistics stored at the client's last training,
computed with a body that has since moved, were reused: a defect.)

``mode="flbench"`` (FL-bench ``src/client/pfedfda.py`` + ``src/server/
pfedfda.py`` as the FedOBP Table IV logs ran it): the FL-bench client has no
custom training, so training is plain FedAvg of the whole model (the model's
linear classifier trained and averaged); statistics are never uploaded, so the
global means stay ``mu_g ~ U[0, 1)`` and ``Sigma_g = I`` forever; at every
evaluation each client builds an LDA head from the current global body's
features of its train set, with beta searched (as in training, folds keyed by
the evaluation context) against those random global statistics. The default
``mode="paper"`` is the published algorithm.

Deviations: beta is the best point of a ``beta_grid x beta_grid`` grid on
[0, 1]^2 (near-ties within 1e-5 relative go to the first grid point; the
reference: 10 L-BFGS iterations from (0.5, 0.5)); folds are a
stratified round-robin over a shuffle keyed by (seed, round, client) from the
run's ``algorithm`` stream (the official code: StratifiedKFold,
random_state=0); the features are one pass of the
trained body over the train set (the official code reuses the features seen
during the E training epochs; a lone last example of an odd epoch is left
out, as in training); ``cov_nearest`` is omitted since the covariance is
positive definite by construction (``+ I``). Server statistics start as
``mu_g ~ U[0, 1)`` (from the run's ``algorithm_init`` key) and ``Sigma_g = I``.

Degenerate property: ``local_beta=True`` (beta = (1, 1)) gives the purely
local statistics.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_pfl.algorithms import _features
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort, execution
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalInput, LocalSpec
from fedjax_pfl.models.base import CLASSIFIER_RULES, HEAD, label_params
from fedjax_pfl.ops.aggregation import weighted_mean

MODES = ("paper", "flbench")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PFedFDAConfig:
  """pFedFDA hyperparameters (FL-bench defaults).

  Attributes:
    eps: covariance shrinkage and prior smoothing, in (0, 1).
    num_cv_folds: folds of the beta search, >= 2.
    beta_grid: grid points per beta axis, >= 2.
    single_beta: one beta for means and covariance.
    local_beta: beta = (1, 1) (no search).
    mode: ``"paper"`` (published) or ``"flbench"`` (FL-bench's FedAvg training
      and evaluation-time LDA heads; module docstring).
  """
  eps: float = 1e-4
  num_cv_folds: int = 2
  beta_grid: int = 11
  single_beta: bool = False
  local_beta: bool = False
  mode: str = "paper"

  def validate(self) -> None:
    if self.mode not in MODES:
      raise ValueError(f"pfedfda.mode={self.mode!r}; allowed: {list(MODES)}")
    if not 0.0 < self.eps < 1.0:
      raise ValueError(f"pfedfda.eps={self.eps}; allowed: (0, 1)")
    if self.num_cv_folds < 2:
      raise ValueError(f"pfedfda.num_cv_folds={self.num_cv_folds}; allowed: >= 2")
    if self.beta_grid < 2:
      raise ValueError(f"pfedfda.beta_grid={self.beta_grid}; allowed: >= 2")


class FDAServer(NamedTuple):
  params: Any
  means: jax.Array      # [K, D]
  cov: jax.Array        # [D, D]


class FDAClient(NamedTuple):
  means: jax.Array      # [K, D] adaptive means
  cov: jax.Array        # [D, D] adaptive covariance
  priors: jax.Array     # [K]
  beta: jax.Array       # [2] (beta_mu, beta_Sigma)
  trained: jax.Array    # [] bool


def lda_head(means, cov, priors, eps: float):
  """LDA classifier as a flax Dense head ``{'kernel' [D, K], 'bias' [K]}``.

  ``means`` may carry leading batch axes ``[..., K, D]`` (one head per set of
  means, same covariance): the covariance is then factorized once and the
  kernel gets shape ``[..., D, K]``, the bias ``[..., K]``."""
  d = cov.shape[-1]
  shrunk = (1.0 - eps) * cov + eps * jnp.trace(cov) / d * jnp.eye(d)
  lead, k = means.shape[:-2], means.shape[-2]
  rhs = jnp.moveaxis(means.reshape(-1, d), -1, 0)              # [D, G*K]
  factor = jax.scipy.linalg.cho_factor(shrunk)                  # SPD: + eps I
  kernel = jax.scipy.linalg.cho_solve(factor, rhs)              # [D, G*K]
  kernel = jnp.moveaxis(kernel.reshape(d, -1, k), 0, -2).reshape(*lead, d, k)
  log_priors = jnp.log(priors).reshape((1,) * len(lead) + (k,))
  bias = -0.5 * jnp.sum(means * jnp.swapaxes(kernel, -1, -2), axis=-1) + log_priors
  return {"kernel": kernel, "bias": bias}


def label_priors(labels, valid, num_classes: int, eps: float):
  counts = jnp.sum(jax.nn.one_hot(labels, num_classes) * valid[:, None], axis=0)
  p = counts / jnp.maximum(jnp.sum(counts), 1.0) + eps
  return p / jnp.sum(p)


def mle_stats(feats, labels, valid, global_means, min_count: int):
  """Local class means (global where a class has ``<= min_count`` examples)
  and ``scatter/(n-1) + 1e-4 + I`` over the ``valid`` rows."""
  k, d = global_means.shape
  onehot = jax.nn.one_hot(labels, k) * valid[:, None]
  counts = jnp.sum(onehot, axis=0)
  local = (onehot.T @ feats) / jnp.maximum(counts, 1.0)[:, None]
  means = jnp.where((counts > min_count)[:, None], local, global_means)
  centered = jnp.where(valid[:, None], feats - means[labels], 0.0)
  n = jnp.sum(counts)
  cov = centered.T @ centered / jnp.maximum(n - 1.0, 1.0) + 1e-4 + jnp.eye(d)
  return means, cov


def cv_folds(labels, valid, num_classes: int, folds: int, key: jax.Array):
  """Stratified fold ids ``[M]`` (round-robin per class over a shuffle drawn
  from ``key``) and the mask of examples taking part (class count >= folds)."""
  counts = jnp.sum(jax.nn.one_hot(labels, num_classes) * valid[:, None], axis=0)
  use = valid & (counts[labels] >= folds)
  u = jax.random.uniform(key, labels.shape)
  key = jnp.where(use, labels, num_classes).astype(jnp.float32) + u
  order = jnp.argsort(key)
  sorted_cls = jnp.where(use, labels, num_classes)[order]
  rank = jnp.arange(labels.shape[0]) - jnp.searchsorted(sorted_cls, sorted_cls, side="left")
  fold = jnp.zeros_like(labels).at[order].set(rank % folds)
  return fold, use


def search_beta(feats, labels, valid, global_means, global_cov, priors, config, key):
  """The (beta_mu, beta_Sigma) grid point of least summed CV cross-entropy."""
  k = global_means.shape[0]
  fold, use = cv_folds(labels, valid, k, config.num_cv_folds, key)
  grid = jnp.linspace(0.0, 1.0, config.beta_grid)

  def fold_loss(f):
    test = use & (fold == f)
    means_f, cov_f = mle_stats(feats, labels, use & (fold != f), global_means,
                               config.num_cv_folds)
    means_b = grid[:, None, None] * means_f[None] + (1 - grid[:, None, None]) * global_means[None]

    def for_cov(bc):
      cov = bc * cov_f + (1.0 - bc) * global_cov
      head = lda_head(means_b, cov, priors, config.eps)  # one factorization per beta_Sigma
      logits = jnp.einsum("md,gdk->gmk", feats, head["kernel"]) + head["bias"][:, None, :]
      ce = optax.softmax_cross_entropy_with_integer_labels(
          logits, jnp.broadcast_to(labels, logits.shape[:2]))
      return jnp.sum(jnp.where(test[None], ce, 0.0), axis=1) / jnp.maximum(jnp.sum(test), 1)
    return jax.lax.map(for_cov, grid)          # [beta_Sigma, beta_mu]

  loss = sum(fold_loss(f) for f in range(config.num_cv_folds))
  if config.single_beta:
    loss = jnp.where(jnp.eye(config.beta_grid, dtype=bool), loss, jnp.inf)
  # Near-ties (the CV losses of several grid points agree to ~1e-7 on small
  # clients) go to the first grid point within 1e-5 (relative) of the minimum,
  # so float noise between execution strategies cannot flip the choice.
  flat = loss.ravel()
  low = jnp.min(flat)
  best = jnp.argmax(flat <= low + 1e-5 * jnp.maximum(jnp.abs(low), 1.0))
  beta = jnp.stack([grid[best % config.beta_grid], grid[best // config.beta_grid]])
  return jnp.where(jnp.any(use), beta, 0.0)


def pfedfda(*, spec: LocalSpec, params, config: PFedFDAConfig) -> Algorithm:
  """Builds pFedFDA. Server state: :class:`FDAServer`; client state:
  :class:`FDAClient`. Metrics: cohort means of ``beta_mu``, ``beta_cov``."""
  config.validate()
  dim, num_classes = params[HEAD]["kernel"].shape
  labels = label_params(params, CLASSIFIER_RULES)
  inner = spec.program(trainable=lambda epoch: jax.tree.map(lambda lab: lab != HEAD, labels))
  slots = inner.steps_per_epoch * inner.batch_size

  def prog_init(inputs: LocalInput, data, key):
    means_g, cov_g, fold_key = inputs.context
    valid = jnp.arange(data.idx.shape[0]) < data.count
    priors = label_priors(data.y[data.idx], valid, num_classes, config.eps)
    p = {**inputs.params, HEAD: lda_head(means_g, cov_g, priors, config.eps)}
    return inner.init(LocalInput(p, (means_g, cov_g, priors, fold_key)), data, key)

  def batch_fn(acc, trained, batch, s):
    feats, ys, valid = acc
    h = _features.features(spec.apply, trained[0], batch.x)
    at = s * inner.batch_size
    return (jax.lax.dynamic_update_slice(feats, h, (at, 0)),
            jax.lax.dynamic_update_slice(ys, batch.y, (at,)),
            jax.lax.dynamic_update_slice(valid, batch.mask, (at,)))

  def finish_fn(trained, acc, metrics):
    p, (means_g, cov_g, priors, fold_key) = trained
    feats, ys, valid = acc
    means, cov = mle_stats(feats, ys, valid, means_g, config.num_cv_folds)
    if config.local_beta:
      beta = jnp.ones((2,), jnp.float32)
    else:
      beta = search_beta(feats, ys, valid, means_g, cov_g, priors, config, fold_key)
    client = FDAClient(beta[0] * means + (1 - beta[0]) * means_g,
                       beta[1] * cov + (1 - beta[1]) * cov_g, priors, beta, jnp.asarray(True))
    return (p, client), {**metrics, "beta_mu": beta[0], "beta_cov": beta[1]}

  acc0 = (jnp.zeros((slots, dim), jnp.float32), jnp.zeros((slots,), jnp.int32),
          jnp.zeros((slots,), jnp.bool_))
  program = inner._replace(init=prog_init,
                           finish=lambda c: ((c.params, c.context), inner.finish(c)[1]))
  local = _features.append_pass(program, acc0, batch_fn, finish_fn)

  def init(params, num_clients, *, key=None):
    if key is None:
      raise ValueError("pfedfda: init needs key= (the run's algorithm_init stream)")
    means = jax.random.uniform(key, (num_classes, dim))
    cov = jnp.eye(dim)
    client = FDAClient(means, cov, jnp.full((num_classes,), 1.0 / num_classes),
                       jnp.array([1.0, 0.5]), jnp.asarray(False))
    return FDAServer(params, means, cov), cohort.stack_clients(client, num_clients)

  def broadcast(server, client, *, ctx):
    return LocalInput(server.params, (server.means, server.cov, ctx.key)), ()

  def finalize(server, client, trained, extra, *, ctx=None):
    p, new_client = trained
    return (p, new_client.means, new_client.cov), new_client, {}

  def aggregate(server, uploads, weights, *, ctx=None):
    return FDAServer(*weighted_mean(uploads, weights)), {}

  def personalize(server, client):
    means = jnp.where(client.trained, client.means, server.means)
    cov = jnp.where(client.trained, client.cov, server.cov)
    return {**server.params, HEAD: lda_head(means, cov, client.priors, config.eps)}

  def personalize_with_data(server, client, train_data, *, ctx):
    return lda_from_train(spec.apply, server, train_data, num_classes, config,
                          lambda *_: client.beta, mixed=client.trained)

  return Algorithm("pfedfda", init, broadcast, local, finalize, aggregate, personalize,
                   personalize_with_data=personalize_with_data)


def train_features(apply_fn, params, data, chunk: int | None = None):
  """``(features [M, D], labels [M], valid [M] bool)`` of the body of
  ``params`` over the client's ``M`` train slots (``valid``: slot < count;
  the features of the other slots are 0).

  Forward passes of ``chunk`` slots (``None``: the backend's evaluation batch,
  :func:`fedjax_pfl.core.execution.default_eval_batch_size`) for the
  ``ceil(count / chunk)`` chunks that hold real slots only (a client padded to
  the widest train set pays for its own examples, not the widest's).
  """
  m = data.idx.shape[0]
  chunk = min(chunk or execution.default_eval_batch_size(), m)
  valid = jnp.arange(m) < data.count
  slots = jnp.pad(data.idx, (0, -m % chunk))
  out = jax.eval_shape(lambda: _features.features(apply_fn, params, data.x[:1]))

  def one_chunk(c, feats):
    rows = jax.lax.dynamic_slice(slots, (c * chunk,), (chunk,))
    return jax.lax.dynamic_update_slice(
        feats, _features.features(apply_fn, params, data.x[rows]), (c * chunk, 0))
  feats = jax.lax.fori_loop(0, (data.count + chunk - 1) // chunk, one_chunk,
                            jnp.zeros((slots.shape[0], out.shape[-1]), out.dtype))
  return jnp.where(valid[:, None], feats[:m], 0), data.y[data.idx], valid


def lda_from_train(apply_fn, server, train_data, num_classes: int, config, beta_for,
                   mixed=True):
  """The evaluated model: the server's body with an LDA head from that body's
  features of the client's train data: ``mu = b0 mu_local + (1 - b0) mu_g``
  (Sigma with ``b1``; ``(b0, b1) = beta_for(feats, labels, valid, priors)``)
  where ``mixed`` (``[]`` bool), else the global ``mu_g, Sigma_g``; priors
  from the client's train labels."""
  feats, ys, valid = train_features(apply_fn, server.params, train_data)
  priors = label_priors(ys, valid, num_classes, config.eps)
  means, cov = mle_stats(feats, ys, valid, server.means, config.num_cv_folds)
  beta = beta_for(feats, ys, valid, priors)
  means = jnp.where(mixed, beta[0] * means + (1 - beta[0]) * server.means, server.means)
  cov = jnp.where(mixed, beta[1] * cov + (1 - beta[1]) * server.cov, server.cov)
  return {**server.params, HEAD: lda_head(means, cov, priors, config.eps)}


def pfedfda_flbench(*, spec: LocalSpec, params, config: PFedFDAConfig) -> Algorithm:
  """FL-bench's pFedFDA (``mode="flbench"``, module docstring). Server state:
  :class:`FDAServer` (statistics never change); no client state."""
  num_classes = params[HEAD]["kernel"].shape[1]
  dim = params[HEAD]["kernel"].shape[0]

  def init(params, num_clients, *, key=None):
    if key is None:
      raise ValueError("pfedfda: init needs key= (the run's algorithm_init stream)")
    return FDAServer(params, jax.random.uniform(key, (num_classes, dim)), jnp.eye(dim)), ()

  def broadcast(server, client, *, ctx=None):
    return server.params, ()

  def finalize(server, client, trained, extra, *, ctx=None):
    return trained, client, {}

  def aggregate(server, uploads, weights, *, ctx=None):
    return server._replace(params=weighted_mean(uploads, weights)), {}

  def personalize(server, client):
    return server.params

  def personalize_with_data(server, client, train_data, *, ctx):
    def beta_for(feats, ys, valid, priors):
      if config.local_beta:
        return jnp.ones((2,), jnp.float32)
      return search_beta(feats, ys, valid, server.means, server.cov, priors, config, ctx.key)
    return lda_from_train(spec.apply, server, train_data, num_classes, config, beta_for)

  return Algorithm("pfedfda", init, broadcast, spec.program(), finalize, aggregate, personalize,
                   personalize_with_data=personalize_with_data)


def _build(cfg: PFedFDAConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  build = pfedfda_flbench if cfg.mode == "flbench" else pfedfda
  return build(spec=spec, params=params, config=cfg)


SPECS = {"pfedfda": AlgorithmSpec(PFedFDAConfig, _build,
                                  "pFedFDA (McLaughlin et al., NeurIPS 2024)")}
