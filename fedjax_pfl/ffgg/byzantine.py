"""Byzantine-robust FFGG as the authors' notebook runs it (Mishchenko et al.,
spec reference-protocols §3; the Byzantine notebook of
``Rustem-Islamov/FL_representations``).

``M`` honest clients compute exact FFGG gradients ``g_m = grad F_m(x) = Q_m x
- r_m`` (exact inner solve). ``num_attackers`` EXTRA clients join every round;
each sends ``-attack_scale * g_j`` for an honest ``j`` drawn without
replacement per round (the notebook's gradient-flipping attack, scale 1). The
server aggregates the ``M + num_attackers`` vectors with the mean or with the
coordinate-wise median over shuffled buckets of ``bucket_size`` (the
notebook's ``cm`` with ``bucketing``) and steps ``x <- x - lr agg``.

Note on the mean: the attackers cancel the honest gradients of the clients
they copy, so with ``attack_scale = 1`` the mean is ``1/(M + A) sum`` over the
``M - A`` uncopied honest clients: still a descent direction (slower, and
noisy across rounds), and on an overpersonalized instance it still converges.
It fails (diverges) once ``attack_scale * A > M``; the figure script shows both.
"""

import functools

import jax
import jax.numpy as jnp

from fedjax_pfl.ffgg.instances import Gram
from fedjax_pfl.ffgg.quadratic import AGGREGATORS, bucketed_median


def byzantine_ffgg(g: Gram, key: jax.Array, *, rounds: int, lr: float, num_attackers: int = 10,
                   attack_scale: float = 1.0, aggregator: str = "bucketed_median",
                   bucket_size: int = 2):
  """Runs the attacked FFGG (module docstring) from ``x = 0``.

  Args:
    g: the instance (honest clients ``M = g.Q.shape[0]``).
    key: attackers' choices and bucket shuffles.
    rounds: ``T`` (static).
    lr: server step size.
    num_attackers: ``0 <= A <= M`` extra clients.
    attack_scale: multiplier of the flipped gradients.
    aggregator: ``"mean"`` or ``"bucketed_median"``.
    bucket_size: clients per bucket (static).

  Returns:
    ``(x_T [dx], norms [rounds + 1])``, ``norms[k] = ||grad F(x^k)||``.

  Raises:
    ValueError: unknown aggregator or ``num_attackers`` outside ``[0, M]``.
  """
  if aggregator not in AGGREGATORS:
    raise ValueError(f"aggregator={aggregator!r}; allowed: {AGGREGATORS}")
  m = g.Q.shape[0]
  if not 0 <= num_attackers <= m:
    raise ValueError(f"num_attackers={num_attackers}; allowed: [0, {m}]")
  return _run(g, key, jnp.asarray([lr, attack_scale], g.Q.dtype), rounds=rounds,
              attackers=num_attackers, median=aggregator == "bucketed_median",
              bucket_size=bucket_size)


@functools.partial(jax.jit, static_argnames=("rounds", "attackers", "median", "bucket_size"))
def _run(g, key, hp, *, rounds, attackers, median, bucket_size):
  m = g.Q.shape[0]
  mean_q, mean_r = g.Q.mean(0), g.r.mean(0)
  metric = lambda x: jnp.linalg.norm(mean_q @ x - mean_r)

  def round_fn(x, t):
    k = jax.random.fold_in(key, t)
    honest = jnp.einsum("mij,j->mi", g.Q, x) - g.r
    copied = jax.random.permutation(jax.random.fold_in(k, 0), m)[:attackers]
    sent = jnp.concatenate([honest, -hp[1] * honest[copied]])
    w = jnp.ones(sent.shape[0], jnp.float32)
    if median:
      agg = bucketed_median(sent, w, jax.random.fold_in(k, 1), bucket_size)
    else:
      agg = jnp.mean(sent, axis=0)
    x = x - hp[0] * agg
    return x, metric(x)

  x0 = jnp.zeros(g.Q.shape[1], g.Q.dtype)
  x, norms = jax.lax.scan(round_fn, x0, jnp.arange(rounds))
  return x, jnp.concatenate([metric(x0)[None], norms])


__all__ = ["byzantine_ffgg"]
