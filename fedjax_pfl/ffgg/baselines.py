"""Fig. 1 baselines of Mishchenko et al. on the quadratic: SCAFFOLD and L2GD.

Mishchenko, Islamov, Gorbunov, Horvath, arXiv:2305.18285; the Comparison
notebook of ``Rustem-Islamov/FL_representations`` (spec reference-protocols
§3). Local GD (``tau`` joint GD steps on ``(x, y)``, both averaged) is
:func:`fedjax_pfl.ffgg.quadratic.fedavg_local_steps`. Every baseline here trains
ONE joint model ``(x, y)`` (y shared, as the notebook's baselines), i.e. it
minimises ``1/M sum_m f_m(x, y)``, not F; the plotted quantity is, as in the
notebook, ``||grad F(x)||`` at the averaged x. Full participation.

* :func:`scaffold`: SCAFFOLD (Karimireddy et al. 2020) with option-I control
  variates ``c_m^+ = grad f_m(x, y)`` at the server point: ``tau`` local steps
  ``z <- z - lr_in (grad f_m(z) - C_m + c)``, then ``(x, y) <- (x, y) + lr_out
  mean_m (z_m - (x, y))``, ``C_m <- c_m^+``, ``c <- mean_m C_m``. The notebook
  differs in two places, both treated as slips and NOT reproduced: it overwrites
  (not sums) the model deltas, so only the last client's delta enters, and it
  adds ``sum_m`` (not ``mean_m``) of the control-variate changes to ``c``.
* :func:`l2gd`: L2GD, the notebook's ``Mixture`` (Hanzely & Richtarik 2020): per
  iteration a coin with ``P(1) = p = 1 / tau``; on 0 every client takes a joint
  GD step with ``lr / (M (1 - p))``; on 1 every local model moves to the mean by
  ``a = lr lam / (M p)``: ``z_m <- (1 - a) z_m + a mean(z)``. One communication
  per coin 1, so ``tau`` iterations cost one round in expectation.

Degenerate equivalences (tested): SCAFFOLD with ``tau = 1``, ``lr_out = 1`` is
joint GD (= Local GD with ``tau = 1``); L2GD with ``lam = 0`` never mixes (each
client runs GD on its own ``f_m``).
"""

import functools

import jax
import jax.numpy as jnp

from fedjax_pfl.ffgg.quadratic import Quadratic, grad_norm, grads


def scaffold(p: Quadratic, *, rounds: int, lr_in: float, local_steps: int,
             lr_out: float = 1.0, x0=None):
  """Runs SCAFFOLD (module docstring) from ``x = x0`` (zeros), ``y = 0``.

  Args:
    p: the instance.
    rounds: number of rounds (static).
    lr_in: local step size.
    local_steps: ``tau >= 1`` local steps per round.
    lr_out: server step size (1: the notebook's setting).
    x0: ``[dx]`` start.

  Returns:
    ``(x_T [dx], norms [rounds + 1])``, ``norms[k] = ||grad F(x^k)||``.
  """
  dx = p.H.shape[2]
  x0 = jnp.zeros(dx, p.H.dtype) if x0 is None else jnp.asarray(x0, p.H.dtype)
  hp = jnp.asarray([lr_in, lr_out], p.H.dtype)
  return _scaffold(p, x0, hp, jnp.int32(local_steps), rounds=rounds)


@functools.partial(jax.jit, static_argnames=("rounds",))
def _scaffold(p, x0, hp, local_steps, *, rounds):
  m, dx, dy = p.H.shape[0], p.H.shape[2], p.B.shape[2]
  lr_in, lr_out = hp[0], hp[1]

  def round_fn(carry, _):
    x, y, cx, cy, big_cx, big_cy = carry
    xs, ys = jnp.broadcast_to(x, (m, dx)), jnp.broadcast_to(y, (m, dy))

    def local(_, z):
      gx, gy = grads(p, z[0], z[1])
      return z[0] - lr_in * (gx - big_cx + cx[None]), z[1] - lr_in * (gy - big_cy + cy[None])
    zx, zy = jax.lax.fori_loop(0, local_steps, local, (xs, ys))
    plus_x, plus_y = grads(p, xs, ys)
    x = x + lr_out * jnp.mean(zx - xs, axis=0)
    y = y + lr_out * jnp.mean(zy - ys, axis=0)
    carry = (x, y, plus_x.mean(0), plus_y.mean(0), plus_x, plus_y)
    return carry, grad_norm(p, x)

  zeros = lambda *s: jnp.zeros(s, x0.dtype)
  init = (x0, zeros(dy), zeros(dx), zeros(dy), zeros(m, dx), zeros(m, dy))
  final, norms = jax.lax.scan(round_fn, init, None, length=rounds)
  return final[0], jnp.concatenate([grad_norm(p, x0)[None], norms])


def l2gd(p: Quadratic, key: jax.Array, *, iterations: int, lr: float, tau: float, lam: float,
         x0=None):
  """Runs L2GD (module docstring) from ``x = x0`` (zeros), ``y = 0`` everywhere.

  Args:
    p: the instance.
    key: the coin flips' key.
    iterations: number of coin flips (static); about ``iterations / tau``
      communications.
    lr: step size before the ``1 / (M (1 - p))`` scaling.
    tau: ``1 / p > 1``.
    lam: the penalty ``lambda >= 0``; the mixing weight is ``lr lam tau / M``.
    x0: ``[dx]`` start.

  Returns:
    ``(x_mean_T [dx], norms [iterations + 1], communications [])``, ``norms`` at
    the mean of the local x.

  Raises:
    ValueError: ``tau <= 1``.
  """
  if tau <= 1:
    raise ValueError(f"tau={tau}; allowed: > 1 (p = 1 / tau < 1)")
  dx = p.H.shape[2]
  x0 = jnp.zeros(dx, p.H.dtype) if x0 is None else jnp.asarray(x0, p.H.dtype)
  coins = jax.random.bernoulli(key, 1.0 / tau, (iterations,))
  hp = jnp.asarray([lr, 1.0 / tau, lam], p.H.dtype)
  x, norms = _l2gd(p, x0, hp, coins)
  return x, norms, jnp.sum(coins)


@jax.jit
def _l2gd(p, x0, hp, coins):
  m, dx, dy = p.H.shape[0], p.H.shape[2], p.B.shape[2]
  lr, prob, lam = hp[0], hp[1], hp[2]
  a = lr * lam / (m * prob)

  def step(carry, coin):
    zx, zy = carry
    gx, gy = grads(p, zx, zy)
    s = lr / (m * (1 - prob))
    mixed = ((1 - a) * zx + a * zx.mean(0, keepdims=True),
             (1 - a) * zy + a * zy.mean(0, keepdims=True))
    zx, zy = jnp.where(coin, mixed[0], zx - s * gx), jnp.where(coin, mixed[1], zy - s * gy)
    return (zx, zy), grad_norm(p, zx.mean(0))

  init = (jnp.broadcast_to(x0, (m, dx)), jnp.zeros((m, dy), x0.dtype))
  (zx, _), norms = jax.lax.scan(step, init, coins)
  return zx.mean(0), jnp.concatenate([grad_norm(p, x0)[None], norms])


__all__ = ["l2gd", "scaffold"]
