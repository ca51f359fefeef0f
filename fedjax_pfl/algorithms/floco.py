"""FLOCO: federated learning over connected modes (a simplex classifier).

Grinwald, Wiesner, Nakajima. "Federated Learning over Connected Modes."
NeurIPS 2024, arXiv:2403.03333 (FL-bench ``src/server/floco.py``,
``src/client/floco.py``).

The classifier kernel is replaced by a simplex of ``M = endpoints`` kernels
``W_1..W_M [D, K]`` (Xavier-normal, one seed each) with the model's classifier
bias shared: ``logits = h(x) W(alpha) + b``, ``W(alpha) = sum_k alpha_k W_k``.
All parameters are FedAvg-shared. Before round ``tau`` every training forward
pass draws ``alpha`` uniformly on the simplex (normalised Exp(1) draws) and
evaluation uses the centre ``1/M``. At round ``tau`` the server PCAs the
clients' flattened endpoint updates to M dimensions (``kappa``, signs as
sklearn's ``svd_flip`` on the components), projects every client onto the
simplex scaled by ``z`` (Euclidean projection, rows renormalised to sum 1)
and keeps the ``z`` in ``linspace(1e-4, 1, 1000)`` of least Riesz s-energy
(s = 2; pair distances floored at 1e-4; ``log E = log sum_{i<j} d_ij^-2 -
log #pairs``; first minimum). These are the client centres ``beta_i``.
Afterwards training draws ``alpha = beta_i + r u`` (``u`` uniform on the unit
L1 sphere, ``r ~ U(0, rho)``), renormalised to sum 1, and evaluation uses
``beta_i``.

Layout: the server holds the model's own params plus ``endpoints [M, D, K]``
(Xavier-normal from the run's ``algorithm_init`` key; the model's classifier
kernel stays unused); each client's row of the client state holds its latest
endpoint update ``stats [M*D*K]`` and its centre ``beta [M]`` (``1/M`` until
round ``tau``), sharded over the client axis like every client state. Whether
a round trains after ``tau`` comes from the round context.

Deviations: the reference makes ALL clients train in round ``tau - 1`` and
PCAs their trained endpoint weights (equivalent, after PCA centring, to their
updates from the common global model); the round driver here samples a fixed
cohort, so each client contributes its most recent endpoint update (zeros if
it never trained before ``tau``). With fewer than M clients the missing PCA
components are zero. Floco+ (``pers_epoch > 0``) is not implemented
(FL-bench default ``pers_epoch = 0``).

``mode="flbench"`` (FL-bench ``src/server/floco.py`` as the FedOBP Table IV
logs ran it): round ``tau - 1`` (0-based; the round whose aggregation
projects) is a full-participation round (``Algorithm.full_rounds``): ALL N
clients train once from the current global model; their endpoint updates
feed the PCA and are then discarded: the global model averages only the
normally sampled clients' models (``ctx.sampled``); the evaluation after that
round still uses the simplex centre (client centres are evaluated from the
next round on); the L1-ball sample ``beta_i + r u`` is NOT renormalized to
sum 1. (FL-bench trains the sampled clients of round ``tau`` again after the
projection; here their models of the all-client pass, trained with simplex
sampling, are averaged.) The default ``mode="paper"`` is described above.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.algorithms import _features
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalInput, LocalSpec, softmax_cross_entropy
from fedjax_pfl.models.base import HEAD
from fedjax_pfl.ops.aggregation import weighted_mean

MODES = ("paper", "flbench")
Z_GRID = np.linspace(1e-4, 1.0, 1000, dtype=np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlocoConfig:
  """FLOCO hyperparameters.

  Attributes:
    endpoints: simplex vertices M, >= 2.
    tau: round of the client projection, >= 1.
    rho: L1 radius of the sampling ball after ``tau``, >= 0.
    mode: ``"paper"`` or ``"flbench"`` (all-client round, module docstring).
  """
  endpoints: int = 10
  tau: int = 10
  rho: float = 0.1
  mode: str = "paper"

  def validate(self) -> None:
    if self.mode not in MODES:
      raise ValueError(f"floco.mode={self.mode!r}; allowed: {list(MODES)}")
    if self.endpoints < 2:
      raise ValueError(f"floco.endpoints={self.endpoints}; allowed: >= 2")
    if self.tau < 1:
      raise ValueError(f"floco.tau={self.tau}; allowed: >= 1")
    if self.rho < 0:
      raise ValueError(f"floco.rho={self.rho}; allowed: >= 0")


class FlocoClient(NamedTuple):
  stats: jax.Array      # [M*D*K] the client's latest endpoint update (0 before it trains)
  beta: jax.Array       # [M] the client's centre (1/M before round tau)
  eval_beta: jax.Array | None = None  # [M] flbench: centre evaluated (1/M until round tau)


def simplex_logits(apply_fn, params, alpha, x):
  """Logits of the model with classifier kernel ``sum_k alpha_k W_k``."""
  model = params["model"]
  kernel = jnp.tensordot(alpha, params["endpoints"], axes=(0, 0))

  def head(h):
    out = h @ kernel
    return out + jnp.broadcast_to(model[HEAD]["bias"], out.shape)
  return _features.apply_with_head(apply_fn, model, x, head)[0]


def sample_alpha(key, after, center, rho: float, renormalize: bool = True):
  """Uniform on the simplex (before tau) or in the L1 ball around ``center``
  (renormalized to sum 1 unless ``renormalize`` is False, FL-bench)."""
  k1, k2, k3 = jax.random.split(key, 3)
  e = jax.random.exponential(k1, center.shape)
  u = jax.random.uniform(k2, center.shape, minval=-1.0, maxval=1.0)
  r = jax.random.uniform(k3, (), maxval=rho)
  ball = center + r * u / jnp.sum(jnp.abs(u))
  if renormalize:
    ball = ball / jnp.sum(ball)
  return jnp.where(after, ball, e / jnp.sum(e))


def project_simplex(v, z):
  """Euclidean projection of each row of ``v [N, M]`` onto ``{y >= 0, sum y = z}``."""
  m = v.shape[-1]
  u = -jnp.sort(-v, axis=-1)
  cssv = jnp.cumsum(u, axis=-1) - z
  rho = jnp.sum(u - cssv / jnp.arange(1, m + 1)[None] > 0, axis=-1)
  theta = jnp.take_along_axis(cssv, (rho - 1)[:, None], axis=-1) / rho[:, None]
  return jnp.maximum(v - theta, 0.0)


def riesz_log_energy(points):
  """``log sum_{i<j} d_ij^-2 - log #pairs`` with distances floored at 1e-4."""
  n = points.shape[0]
  diff = points[:, None, :] - points[None, :, :]
  dist = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1)), 1e-4)
  upper = jnp.triu(jnp.ones((n, n), bool), k=1)
  energy = jnp.sum(jnp.where(upper, dist ** -2.0, 0.0))
  return jnp.log(energy) - jnp.log(max(n * (n - 1) // 2, 1))


def best_radius(kappas):
  """``(z, betas [N, M])``: the grid ``z`` of least Riesz energy."""
  def at(z):
    b = project_simplex(kappas, z)
    return b / jnp.sum(b, axis=-1, keepdims=True)
  grid = jnp.asarray(Z_GRID)
  energies = jax.lax.map(lambda z: riesz_log_energy(at(z)), grid, batch_size=50)
  best = jnp.argmin(jnp.where(jnp.isfinite(energies), energies, jnp.inf))
  return grid[best], at(grid[best])


def pca(x, k: int):
  """``[N, k]`` PCA scores of the rows of ``x`` (sklearn sign convention);
  components beyond ``min(N, F)`` are zero."""
  centred = x - jnp.mean(x, axis=0, keepdims=True)
  u, s, vt = jnp.linalg.svd(centred, full_matrices=False)
  pick = jnp.take_along_axis(vt, jnp.argmax(jnp.abs(vt), axis=1)[:, None], axis=1)[:, 0]
  scores = u * (s * jnp.where(pick < 0, -1.0, 1.0))[None]
  r = min(k, scores.shape[1])
  return jnp.pad(scores[:, :r], ((0, 0), (0, k - r)))


def floco(*, spec: LocalSpec, params, config: FlocoConfig) -> Algorithm:
  """Builds FLOCO. Server state: ``{'model', 'endpoints'}`` params; client
  state: :class:`FlocoClient`. ``init`` needs ``key=`` (the endpoints' draw).

  Raises:
    ValueError: an invalid ``config``; ``init`` without a key.
  """
  config.validate()
  flbench = config.mode == "flbench"
  m = config.endpoints
  dim, num_classes = params[HEAD]["kernel"].shape
  center = jnp.full((m,), 1.0 / m)

  def loss_fn(p, batch, key, context):
    after, beta = context
    alpha = sample_alpha(key, after, beta, config.rho, renormalize=not flbench)
    return softmax_cross_entropy(simplex_logits(spec.apply, p, alpha, batch.x), batch.y,
                                 batch.mask)

  local = spec.program(loss_fn)

  def init(params, num_clients, *, key=None):
    if key is None:
      raise ValueError("floco: init needs key= (the run's algorithm_init stream)")
    std = jnp.sqrt(2.0 / (dim + num_classes))
    keys = jax.random.split(key, m)
    ends = jax.vmap(lambda k: std * jax.random.normal(k, (dim, num_classes)))(keys)  # vmap over endpoints, not clients
    client = FlocoClient(jnp.zeros((ends.size,)), center, center if flbench else None)
    return {"model": params, "endpoints": ends}, cohort.stack_clients(client, num_clients)

  def broadcast(server, client, *, ctx):
    return LocalInput(server, (ctx.round >= config.tau, client.beta)), ()

  def finalize(server, client, trained, extra, *, ctx=None):
    update = (trained["endpoints"] - server["endpoints"]).ravel()
    return trained, client._replace(stats=update), {}

  def aggregate(server, uploads, weights, *, ctx):
    beta = jax.lax.cond(ctx.round + 1 == config.tau,
                        lambda s: best_radius(pca(s, m))[1],
                        lambda s: ctx.clients.beta, ctx.clients.stats)
    clients = ctx.clients._replace(beta=beta)
    if flbench:  # the all-client pass only feeds the PCA; centres evaluated from round tau
      weights = weights * ctx.in_sample()
      clients = clients._replace(eval_beta=jnp.where(ctx.round >= config.tau, beta,
                                                     ctx.clients.eval_beta))
    return weighted_mean(uploads, weights), {}, clients

  def personalize(server, client):
    return {"params": server, "alpha": client.eval_beta if flbench else client.beta}

  def eval_apply(p, x):
    return simplex_logits(spec.apply, p["params"], p["alpha"], x)

  return Algorithm("floco", init, broadcast, local, finalize, aggregate, personalize,
                   eval_apply, full_rounds=(config.tau - 1,) if flbench else ())


def _build(cfg: FlocoConfig, *, spec, params) -> Algorithm:
  return floco(spec=spec, params=params, config=cfg)


SPECS = {"floco": AlgorithmSpec(FlocoConfig, _build, "FLOCO (Grinwald et al., NeurIPS 2024)")}
