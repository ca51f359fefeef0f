"""The FFGG authors' synthetic instances (spec reference-protocols §3).

Mishchenko, Islamov, Gorbunov, Horvath, arXiv:2305.18285; generators of the
notebooks ``Synthetic data/FL representations {Comparison, Asyncrhonous,
Byzantine}.ipynb`` of ``Rustem-Islamov/FL_representations``, re-implemented.

Client m holds ``f_m(x, y) = 1/2 ||H_m x - b_m||^2 + 1/2 ||A_m x + B_m y - c_m||^2``
(notation of :mod:`.quadratic`). Shared base matrices ``H, A [n, dx]``, ``B [n,
dy]`` are drawn ``U(0, 1) / d`` (d the column count) and perturbed per client
with heterogeneity scale ``zeta``:

* ``perturbation="uniform"`` (Comparison): ``X_m = X + zeta U(0, 1) / d``;
* ``perturbation="normalized"`` (Asynchronous): ``A_m = A + zeta N / ||N||_F``
  (same for B, ``N`` i.i.d. ``N(0, 1) / d``) and ``H_m = H + N / ||N||_F`` (the
  notebook leaves ``zeta`` out of the H term; kept);
* ``shared_base=False`` (Byzantine): no shared part, ``X_m = zeta U(0, 1) / d``.

Targets: ``"per_client"`` (Comparison, Asynchronous; not overpersonalized):
``b_m = H_m u_m + e``, ``c_m = A_m v_m + B_m w_m + e`` with ``u_m, v_m, w_m ~
N(0, I)`` drawn per client and noise ``e ~ noise * N(0, I_n)``;
``"shared"`` (Byzantine; overpersonalized): ``b_m = H_m x*``, ``c_m = A_m x* +
B_m w_m``, no noise. Deviation kept optional: the notebooks write the noise as
``noise * rng.normal(n)``, i.e. ONE draw of ``N(n, 1)`` added to every row (a
shift of about ``noise * n``); ``notebook_noise=True`` reproduces that.

The Comparison notebook runs ``zeta = 0`` (heterogeneity only in the targets),
``M = 8, dx = 100, dy = 50, n = 1000``; the Asynchronous one ``M = 40, dx = 400,
dy = 50, n = 10000, zeta = 10``; the Byzantine one ``M = 32, dx = 100, dy = 50,
n = 10000``. Sizes with large ``n`` are kept as Gram matrices (:class:`Gram`),
which hold everything the exact-inner and joint methods need.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from fedjax_pfl.ffgg.quadratic import Quadratic, assemble

PERTURBATIONS = ("uniform", "normalized")
TARGETS = ("per_client", "shared")


class Gram(NamedTuple):
  """Per-client second moments of an instance (``D = dx + dy``).

  ``Q [M, dx, dx]``, ``r [M, dx]``: ``grad F_m(x) = Q_m x - r_m`` (exact inner
  solve, Danskin); ``K [M, D, D]``, ``k [M, D]``: the joint gradient
  ``grad f_m(x, y) = K_m (x, y) - k_m``; ``x_star [dx]``: the minimiser of F;
  ``L_clients [M]``: the notebooks' per-client constant (:func:`notebook_lipschitz`).
  """
  Q: jnp.ndarray
  r: jnp.ndarray
  K: jnp.ndarray
  k: jnp.ndarray
  x_star: jnp.ndarray
  L_clients: jnp.ndarray


def _clients(seed, m, dx, dy, n, zeta, noise, targets, shared_base, perturbation,
             notebook_noise):
  """Yields host float64 ``(H, b, A, B, c)`` per client, then ``x*`` or None."""
  if perturbation not in PERTURBATIONS:
    raise ValueError(f"perturbation={perturbation!r}; allowed: {PERTURBATIONS}")
  if targets not in TARGETS:
    raise ValueError(f"targets={targets!r}; allowed: {TARGETS}")
  rng = np.random.default_rng(seed)
  unif = lambda d: rng.uniform(size=(n, d)) / d
  base = [unif(dx), unif(dx), unif(dy)] if shared_base else [0.0, 0.0, 0.0]
  x_star = rng.normal(size=dx) if targets == "shared" else None

  def perturb(x, d, scale):
    if perturbation == "uniform":
      return x + scale * unif(d)
    e = rng.normal(size=(n, d)) / d
    return x + scale * e / np.linalg.norm(e)

  def eps():
    if targets == "shared":
      return 0.0
    return noise * (rng.normal(n) if notebook_noise else rng.normal(size=n))

  for _ in range(m):
    H = perturb(base[0], dx, 1.0 if perturbation == "normalized" else zeta)
    b = H @ (x_star if x_star is not None else rng.normal(size=dx)) + eps()
    A, B = perturb(base[1], dx, zeta), perturb(base[2], dy, zeta)
    x1 = x_star if x_star is not None else rng.normal(size=dx)
    c = A @ x1 + B @ rng.normal(size=dy) + eps()
    yield H, b, A, B, c
  yield x_star


def notebook_problem(seed: int = 0, *, num_clients: int = 8, dim_x: int = 100, dim_y: int = 50,
                     rows: int = 1000, zeta: float = 0.0, noise: float = 1e-3,
                     targets: str = "per_client", shared_base: bool = True,
                     perturbation: str = "uniform", notebook_noise: bool = False,
                     dtype=jnp.float32) -> Quadratic:
  """The notebooks' instance as a :class:`~.quadratic.Quadratic` (module docstring).

  Defaults: the Comparison notebook (Fig. 1). Holds ``3 M n (dx + dy)`` values:
  use :func:`notebook_gram` for ``n = 10000``.

  Raises:
    ValueError: unknown ``perturbation`` or ``targets``.
  """
  gen = _clients(seed, num_clients, dim_x, dim_y, rows, zeta, noise, targets, shared_base,
                 perturbation, notebook_noise)
  mats = [next(gen) for _ in range(num_clients)]
  x_star = next(gen)
  H, b, A, B, c = (np.stack(v) for v in zip(*mats))
  return assemble(H, b, A, B, c, x_star, dtype)


def _gram_one(H, b, A, B, c):
  hh, aa, ab, bb = H.T @ H, A.T @ A, A.T @ B, B.T @ B
  sol = np.linalg.solve(bb, np.concatenate([ab.T, (B.T @ c)[:, None]], axis=1))
  q = hh + aa - ab @ sol[:, :-1]
  r = H.T @ b + A.T @ c - ab @ sol[:, -1]
  K = np.block([[hh + aa, ab], [ab.T, bb]])
  k = np.concatenate([H.T @ b + A.T @ c, B.T @ c])
  return q, r, K, k, notebook_lipschitz(hh, aa - ab @ sol[:, :-1])


def notebook_gram(seed: int = 0, *, num_clients: int = 8, dim_x: int = 100, dim_y: int = 50,
                  rows: int = 1000, zeta: float = 0.0, noise: float = 1e-3,
                  targets: str = "per_client", shared_base: bool = True,
                  perturbation: str = "uniform", notebook_noise: bool = False,
                  dtype=jnp.float32) -> Gram:
  """The same instance as :func:`notebook_problem` (same seed, same draws) as a
  :class:`Gram`; memory ``O(M (dx + dy)^2)``, one client's rows at a time."""
  gen = _clients(seed, num_clients, dim_x, dim_y, rows, zeta, noise, targets, shared_base,
                 perturbation, notebook_noise)
  parts = [_gram_one(*next(gen)) for _ in range(num_clients)]
  x_star = next(gen)
  q, r, K, k, lip = (np.stack(v) for v in zip(*parts))
  if x_star is None:
    x_star = np.linalg.solve(q.mean(0), r.mean(0))
  return Gram(*(jnp.asarray(a, dtype) for a in (q, r, K, k, x_star, lip)))


def gram_of(p: Quadratic) -> Gram:
  """The :class:`Gram` of a raw instance (host float64 arithmetic)."""
  arrs = [np.asarray(a, np.float64) for a in (p.H, p.b, p.A, p.B, p.c)]
  q, r, K, k, lip = (np.stack(v) for v in zip(*(_gram_one(*one) for one in zip(*arrs))))
  return Gram(*(jnp.asarray(a, p.H.dtype) for a in (q, r, K, k, p.x_star, lip)))


def notebook_lipschitz(hh, schur_a) -> float:
  """One client's constant as the notebooks' ``compute_L``: ``max(||A^T (I -
  P_B) A||_F, lambda_max(H^T H))`` (``np.linalg.norm`` of a matrix is the
  Frobenius norm, an upper bound of the spectral one). The notebooks take
  ``lr_out = 1 / L`` with the LAST client's value (their loop returns
  ``L_max``, not the running maximum); :func:`notebook_lr` does the same."""
  return max(float(np.linalg.norm(schur_a)), float(np.linalg.eigvalsh(hh)[-1]))


def notebook_lr(g: Gram) -> float:
  """``1 / L`` with ``L`` the last client's :func:`notebook_lipschitz`."""
  return 1.0 / float(g.L_clients[-1])


def gram_constants(g: Gram) -> dict:
  """``L_F``, ``mu_F``, ``kappa_F`` of F and ``L_joint`` = ``lambda_max`` of the
  mean joint Hessian (host floats)."""
  eig = np.linalg.eigvalsh(np.asarray(g.Q, np.float64).mean(0))
  joint = np.linalg.eigvalsh(np.asarray(g.K, np.float64).mean(0))
  return {"L_F": float(eig[-1]), "mu_F": float(eig[0]), "kappa_F": float(eig[-1] / eig[0]),
          "L_joint": float(joint[-1]), "mu_joint": float(joint[0]),
          "L_notebook": float(g.L_clients[-1])}


__all__ = ["Gram", "PERTURBATIONS", "TARGETS", "gram_constants", "gram_of", "notebook_gram",
           "notebook_lipschitz", "notebook_lr", "notebook_problem"]
