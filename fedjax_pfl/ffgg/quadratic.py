"""The synthetic partially personalized quadratic of Mishchenko et al. and its solvers.

Mishchenko, Islamov, Gorbunov, Horvath. "Partially Personalized Federated
Learning: Breaking the Curse of Data Heterogeneity." TMLR 2025,
arXiv:2305.18285. Reference: the synthetic notebooks of
``Rustem-Islamov/FL_representations`` (spec §4).

Client ``m`` of ``M`` holds ``f_m(x, y) = 1/2 ||H_m x - b_m||^2 + 1/2 ||A_m x +
B_m y - c_m||^2`` with global ``x [d_x]`` and personal ``y [d_y]``; the goal is
``min_x F(x) = 1/M sum_m min_y f_m(x, y)``. By Danskin's theorem ``grad F_m(x) =
grad_x f_m(x, y*_m(x))`` with ``y*_m(x) = (B_m^T B_m)^{-1} B_m^T (c_m - A_m x)``.

:func:`make_problem` builds the project's *overpersonalized* instance: ``b_m =
H_m x*`` and ``c_m = A_m x* + B_m y*_m`` with client-specific ``y*_m``, so
``min_y f_m(x*, y) = 0 = min f_m`` for every m; Gaussian matrices scaled by
``1/sqrt(n)`` (well conditioned). The authors' notebook instances (``U(0, 1)/d``
matrices, heterogeneity scale zeta, per-client targets; the paper's Fig. 1 one
has kappa_F ~ 256) are :func:`fedjax_pfl.ffgg.instances.notebook_problem`.

Solvers (all ``lax.scan`` over rounds, full participation unless
``clients_per_round`` is set; each returns ``(x_final, ||grad F(x^k)||, k = 0..T)``):

* :func:`ffgg`: FFGG. Each client fine-tunes ``y`` with ``inner_solver``:
  ``"gd"`` (``inner_steps`` GD steps with ``lr_in``, the Local GD fine-tuner),
  ``"cg"`` (``inner_steps`` conjugate-gradient steps, :func:`cg_solve`, the
  paper's Fig. 1a fine-tuner) or ``"exact"`` (``y*_m``); GD and CG start from
  ``y ~ N(0, I)`` every round as the notebooks do (``warm_start=True``: from
  the client's previous y). It returns ``g_m = grad_x f_m``; the server steps
  ``x <- x - lr_out agg(g)``. Options: Local FFGG (``local_steps = K > 1``),
  stale gradients (computed at ``x^{k - staleness}``), Byzantine clients (the
  first ``num_byzantine`` send ``byzantine_scale * N(0, I)``) and the aggregator
  (``"mean"`` or ``"bucketed_median"``).
* :func:`fedavg_local_steps`: FedAvg / Local GD: ``local_steps`` joint GD steps on
  ``(x, y)`` per client, then the server averages ``x`` and, unless
  ``personal_y``, ``y`` too (the notebook's ``Local_SGD`` baseline).

Local FFGG (Algorithm 4; its text was not retrieved). Reading followed here
and in :mod:`fedjax_pfl.algorithms.ffgg`: the client fine-tunes y ONCE at
``x^k``, then takes K steps ``x <- x - local_lr grad_x f_m(x, y)`` with y fixed,
and returns the pseudo-gradient ``(x^k - x_K) / local_lr = sum_j g_j``.

The client axis here is a plain leading array axis handled by batched
``einsum``; no engine is involved.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.ffgg.robust import AGGREGATORS, aggregate, bucketed_median

INNER_SOLVERS = ("gd", "cg", "exact")


class Quadratic(NamedTuple):
  """One instance: ``H [M, n, dx]``, ``b [M, n]``, ``A [M, n, dx]``,
  ``B [M, n, dy]``, ``c [M, n]``, the minimiser of F ``x_star [dx]`` and,
  precomputed in float64, ``B_pinv [M, dy, n] = (B^T B)^{-1} B^T`` and the
  affine gradient of F, ``grad F(x) = Q x - r`` (``Q [dx, dx]``, ``r [dx]``)."""
  H: jax.Array
  b: jax.Array
  A: jax.Array
  B: jax.Array
  c: jax.Array
  x_star: jax.Array
  B_pinv: jax.Array
  Q: jax.Array
  r: jax.Array


def make_problem(seed: int = 0, *, num_clients: int = 8, dim_x: int = 100, dim_y: int = 50,
                 rows: int = 1000, overpersonalized: bool = True, y_spread: float = 1.0,
                 condition: float = 10.0, dtype=jnp.float32) -> Quadratic:
  """A seeded instance (see module docstring).

  ``H_m``, ``A_m``, ``B_m`` are i.i.d. ``N(0, 1/n)``; the columns of ``H_m`` and
  ``A_m`` are scaled geometrically from 1 to ``condition ** -0.5`` (so F's
  condition number grows roughly like ``condition``); ``y*_m ~ N(0, y_spread^2 I)``
  is the heterogeneity. ``overpersonalized=False`` gives each client its own
  ``x*_m = x* + N(0, I)`` in the ``H`` term.
  """
  m, n = num_clients, rows
  rng = np.random.default_rng(seed)
  g = lambda *shape: rng.normal(size=shape) / np.sqrt(n)
  cols = np.geomspace(1.0, condition ** -0.5, dim_x)
  H, A, B = g(m, n, dim_x) * cols, g(m, n, dim_x) * cols, g(m, n, dim_y)
  x_star = rng.normal(size=dim_x)
  y_star = y_spread * rng.normal(size=(m, dim_y))
  x_h = x_star + (0.0 if overpersonalized else rng.normal(size=(m, dim_x)))
  b = np.einsum("mnd,md->mn", H, np.broadcast_to(x_h, (m, dim_x)))
  c = A @ x_star + np.einsum("mnd,md->mn", B, y_star)
  return assemble(H, b, A, B, c, x_star if overpersonalized else None, dtype)


def assemble(H, b, A, B, c, x_star=None, dtype=jnp.float32) -> Quadratic:
  """A :class:`Quadratic` from host float64 arrays (the precomputed fields in
  float64, then cast to ``dtype``); ``x_star=None``: the minimiser of F,
  ``Q^{-1} r``."""
  b_pinv = np.linalg.solve(np.swapaxes(B, 1, 2) @ B, np.swapaxes(B, 1, 2))
  proj_a = A - B @ (b_pinv @ A)                     # (I - P_B) A_m
  proj_c = c - np.einsum("mnk,mk->mn", B, np.einsum("mkn,mn->mk", b_pinv, c))
  q = (np.swapaxes(H, 1, 2) @ H + np.swapaxes(A, 1, 2) @ proj_a).mean(0)
  r = (np.einsum("mnd,mn->md", H, b) + np.einsum("mnd,mn->md", A, proj_c)).mean(0)
  x_star = np.linalg.solve(q, r) if x_star is None else x_star
  return Quadratic(*(jnp.asarray(a, dtype) for a in (H, b, A, B, c, x_star, b_pinv, q, r)))


def residuals(p: Quadratic, x, y):
  """``(H x - b [M, n], A x + B y - c [M, n])``; ``x`` is ``[dx]`` or ``[M, dx]``."""
  xs = jnp.broadcast_to(x, (p.H.shape[0], p.H.shape[2]))
  r1 = jnp.einsum("mnd,md->mn", p.H, xs) - p.b
  r2 = jnp.einsum("mnd,md->mn", p.A, xs) + jnp.einsum("mne,me->mn", p.B, y) - p.c
  return r1, r2


def grads(p: Quadratic, x, y):
  """Per-client ``(grad_x f_m [M, dx], grad_y f_m [M, dy])`` at ``(x or x_m, y_m)``."""
  r1, r2 = residuals(p, x, y)
  gx = jnp.einsum("mnd,mn->md", p.H, r1) + jnp.einsum("mnd,mn->md", p.A, r2)
  return gx, jnp.einsum("mne,mn->me", p.B, r2)


def best_y(p: Quadratic, x) -> jax.Array:
  """Exact inner solutions ``y*_m(x) = B_m^+ (c_m - A_m x)`` ``[M, dy]``."""
  xs = jnp.broadcast_to(x, (p.H.shape[0], p.H.shape[2]))
  return jnp.einsum("men,mn->me", p.B_pinv, p.c - jnp.einsum("mnd,md->mn", p.A, xs))


def grad_F(p: Quadratic, x) -> jax.Array:
  """``grad F(x) = 1/M sum_m grad_x f_m(x, y*_m(x)) = Q x - r`` ``[dx]``."""
  return p.Q @ x - p.r


def grad_norm(p: Quadratic, x) -> jax.Array:
  return jnp.linalg.norm(grad_F(p, x))


def constants(p: Quadratic) -> dict:
  """Smoothness constants (host floats): ``L_F`` and ``mu_F`` of F, ``L_y`` =
  max_m ||B_m^T B_m||, ``L_joint`` = max_m ||hess f_m||."""
  def gram(u, v):
    return np.einsum("mni,mnj->mij", np.asarray(u, np.float64), np.asarray(v, np.float64))
  hh, aa, bb, ab = gram(p.H, p.H), gram(p.A, p.A), gram(p.B, p.B), gram(p.A, p.B)
  schur = hh + aa - ab @ np.linalg.solve(bb, np.swapaxes(ab, 1, 2))
  eig_f = np.linalg.eigvalsh(schur.mean(0))
  joint = np.concatenate([np.concatenate([hh + aa, ab], 2),
                          np.concatenate([np.swapaxes(ab, 1, 2), bb], 2)], 1)
  return {"L_F": float(eig_f[-1]), "mu_F": float(eig_f[0]),
          "L_y": float(np.linalg.eigvalsh(bb)[:, -1].max()),
          "L_joint": float(np.linalg.eigvalsh(joint)[:, -1].max())}


def cg_solve(p: Quadratic, x, y0, steps) -> jax.Array:
  """``steps`` conjugate-gradient iterations on ``min_y f_m(x_m, y)``, i.e. on
  ``B_m^T B_m y = B_m^T (c_m - A_m x_m)``, from ``y0 [M, dy]``, per client
  (Hestenes-Stiefel; exact after ``dy`` steps in exact arithmetic; the paper's
  Fig. 1a fine-tuner). ``x`` is ``[dx]`` or ``[M, dx]``; ``steps`` may be traced.

  Returns:
    ``y [M, dy]``.
  """
  res = -grads(p, x, y0)[1]                         # B^T (c - A x - B y0)

  def body(_, state):
    y, r, d = state
    bd = jnp.einsum("mne,me->mn", p.B, d)
    dad = jnp.sum(bd * bd, axis=1)
    rr = jnp.sum(r * r, axis=1)
    alpha = jnp.where(dad > 0, rr / jnp.where(dad > 0, dad, 1.0), 0.0)[:, None]
    r_new = r - alpha * jnp.einsum("mne,mn->me", p.B, bd)
    beta = jnp.where(rr > 0, jnp.sum(r_new * r_new, axis=1) / jnp.where(rr > 0, rr, 1.0), 0.0)
    return y + alpha * d, r_new, r_new + beta[:, None] * d
  return jax.lax.fori_loop(0, steps, body, (y0, res, res))[0]


class _FFGGCarry(NamedTuple):
  x: jax.Array        # [dx] current server x
  past: jax.Array     # [staleness + 1, dx] x^k, x^{k-1}, ...
  y: jax.Array        # [M, dy] warm-started personal variables


def ffgg(p: Quadratic, key: jax.Array, *, rounds: int, lr_out: float, lr_in: float = 0.0,
         inner_steps: int = 0, exact_inner: bool = False, inner_solver: str = "gd",
         warm_start: bool = False,
         clients_per_round: int | None = None, local_steps: int = 1,
         local_lr: float | None = None, staleness: int = 0, num_byzantine: int = 0,
         byzantine_scale: float = 100.0, aggregator: str = "mean", bucket_size: int = 2,
         max_staleness: int = 0, x0=None):
  """Runs FFGG and its variants (see module docstring).

  Shapes (``rounds``, ``clients_per_round``, ``bucket_size`` and the buffer
  of past iterates, ``max(staleness, max_staleness) + 1``) are static; every
  other option is a traced value, so variants share one compiled program.

  Returns:
    ``(x_T [dx], norms [rounds + 1])`` with ``norms[k] = ||grad F(x^k)||``.
  """
  if aggregator not in AGGREGATORS:
    raise ValueError(f"aggregator={aggregator!r}; allowed: {AGGREGATORS}")
  if inner_solver not in INNER_SOLVERS:
    raise ValueError(f"inner_solver={inner_solver!r}; allowed: {INNER_SOLVERS}")
  solver = INNER_SOLVERS.index("exact" if exact_inner else inner_solver)
  m, dx = p.H.shape[0], p.H.shape[2]
  hp = {"lr_out": lr_out, "lr_in": lr_in, "local_lr": lr_out if local_lr is None else local_lr,
        "warm": warm_start, "num_byzantine": num_byzantine,
        "scale": byzantine_scale, "median": aggregator == "bucketed_median"}
  hp = {k: jnp.asarray(v, p.H.dtype) for k, v in hp.items()}
  hp["inner_steps"], hp["local_steps"] = jnp.int32(inner_steps), jnp.int32(local_steps)
  hp["staleness"], hp["solver"] = jnp.int32(staleness), jnp.int32(solver)
  x0 = jnp.zeros(dx, p.H.dtype) if x0 is None else jnp.asarray(x0, p.H.dtype)
  return _ffgg(p, key, x0, hp, rounds=rounds, history=max(staleness, max_staleness) + 1,
               cohort=m if clients_per_round is None else clients_per_round,
               bucket_size=bucket_size)


@functools.partial(jax.jit, static_argnames=("rounds", "history", "cohort", "bucket_size"))
def _ffgg(p, key, x0, hp, *, rounds, history, cohort, bucket_size):
  m, dx = p.H.shape[0], p.H.shape[2]
  byz = jnp.arange(m) < hp["num_byzantine"]

  def fine_tune(x_m, y, k):
    cold = jax.random.normal(k, y.shape, y.dtype)
    y = jnp.where(hp["warm"] > 0, y, cold)
    gd = lambda y: jax.lax.fori_loop(
        0, hp["inner_steps"], lambda _, v: v - hp["lr_in"] * grads(p, x_m, v)[1], y)
    return jax.lax.switch(hp["solver"], (gd, lambda y: cg_solve(p, x_m, y, hp["inner_steps"]),
                                         lambda y: best_y(p, x_m)), y)

  def client_work(x, y, k):
    xs = jnp.broadcast_to(x, (m, dx))
    y_new = fine_tune(xs, y, k)  # once, at x^k (Local FFGG: then K steps on x, y fixed)

    def local(_, state):
      x_m, g_sum = state
      g = grads(p, x_m, y_new)[0]
      return x_m - hp["local_lr"] * g, g_sum + g
    _, g_sum = jax.lax.fori_loop(0, hp["local_steps"], local, (xs, jnp.zeros_like(xs)))
    return g_sum, y_new

  def round_fn(carry: _FFGGCarry, k):
    rk = jax.random.fold_in(key, k)
    g, y_new = client_work(carry.past[hp["staleness"]], carry.y, rk)
    noise = hp["scale"] * jax.random.normal(jax.random.fold_in(rk, 1), g.shape, g.dtype)
    g = jnp.where(byz[:, None], noise, g)
    chosen = jax.random.permutation(jax.random.fold_in(rk, 2), m)[:cohort]
    w = jnp.zeros(m, jnp.float32).at[chosen].set(1.0)
    shuffle = jax.random.fold_in(rk, 3)
    update = jax.lax.cond(hp["median"] > 0,
                          lambda g: bucketed_median(g, w, shuffle, bucket_size),
                          lambda g: aggregate(g, w, shuffle, "mean", bucket_size), g)
    x = carry.x - hp["lr_out"] * update
    past = jnp.concatenate([x[None], carry.past[:-1]], axis=0)
    y = jnp.where(w[:, None] > 0, y_new, carry.y)
    return _FFGGCarry(x, past, y), grad_norm(p, x)

  init = _FFGGCarry(x0, jnp.broadcast_to(x0, (history, dx)),
                    jnp.zeros((m, p.B.shape[2]), x0.dtype))
  final, norms = jax.lax.scan(round_fn, init, jnp.arange(rounds))
  return final.x, jnp.concatenate([grad_norm(p, x0)[None], norms])


def fedavg_local_steps(p: Quadratic, *, rounds: int, lr: float, local_steps: int,
                       personal_y: bool = False, x0=None):
  """FedAvg with ``local_steps`` joint GD steps on ``(x, y)`` (Local GD).

  Returns:
    ``(x_T [dx], norms [rounds + 1])``.
  """
  dx = p.H.shape[2]
  x0 = jnp.zeros(dx, p.H.dtype) if x0 is None else jnp.asarray(x0, p.H.dtype)
  return _fedavg(p, x0, jnp.asarray(lr, p.H.dtype), jnp.asarray(personal_y),
                 jnp.int32(local_steps), rounds=rounds)


@functools.partial(jax.jit, static_argnames=("rounds",))
def _fedavg(p, x0, lr, personal_y, local_steps, *, rounds):
  m, dx = p.H.shape[0], p.H.shape[2]

  def round_fn(carry, _):
    x, y = carry

    def local(_, state):
      gx, gy = grads(p, state[0], state[1])
      return state[0] - lr * gx, state[1] - lr * gy
    xs, ys = jax.lax.fori_loop(0, local_steps, local, (jnp.broadcast_to(x, (m, dx)), y))
    x = jnp.mean(xs, axis=0)
    y = jnp.where(personal_y, ys, jnp.broadcast_to(jnp.mean(ys, axis=0), ys.shape))
    return (x, y), grad_norm(p, x)

  y0 = jnp.zeros((m, p.B.shape[2]), x0.dtype)
  (x, _), norms = jax.lax.scan(round_fn, (x0, y0), None, length=rounds)
  return x, jnp.concatenate([grad_norm(p, x0)[None], norms])


__all__ = ["Quadratic", "make_problem", "assemble", "residuals", "grads", "best_y", "grad_F",
           "grad_norm", "constants", "bucketed_median", "aggregate", "cg_solve", "ffgg",
           "fedavg_local_steps", "AGGREGATORS", "INNER_SOLVERS"]
