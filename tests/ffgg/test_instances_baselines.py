"""The notebooks' instances, the CG / GD fine-tuners, Local FFGG's reading and
the SCAFFOLD / L2GD baselines (fedjax_pfl.ffgg.{instances, baselines}).

Small sizes in float64 so every check is tight and the file runs in seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.ffgg import baselines as bl
from fedjax_pfl.ffgg import instances as inst
from fedjax_pfl.ffgg import quadratic as q

KEY = jax.random.key(0)
SMALL = dict(num_clients=4, dim_x=6, dim_y=3, rows=30)


@pytest.fixture(autouse=True, scope="module")
def _x64():
  with jax.enable_x64(True):
    yield


def test_comparison_instance_structure_and_gram_agree():
  p = inst.notebook_problem(0, zeta=0.0, dtype=jnp.float64, **SMALL)
  # zeta = 0: one set of matrices for every client; heterogeneity only in the targets.
  for field in (p.H, p.A, p.B):
    np.testing.assert_array_equal(field, jnp.broadcast_to(field[0], field.shape))
  assert float(jnp.min(jnp.abs(p.b[0] - p.b[1]))) > 0
  np.testing.assert_allclose(q.grad_F(p, p.x_star), 0.0, atol=1e-10)  # x* = argmin F
  pz = inst.notebook_problem(0, zeta=1.0, dtype=jnp.float64, **SMALL)
  assert float(jnp.max(jnp.abs(pz.H[0] - pz.H[1]))) > 0.01
  g = inst.gram_of(pz)
  g2 = inst.notebook_gram(0, zeta=1.0, dtype=jnp.float64, **SMALL)  # same draws
  for a, b in zip(g, g2):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  x = jax.random.normal(jax.random.key(1), (6,), jnp.float64)
  np.testing.assert_allclose(jnp.mean(jnp.einsum("mij,j->mi", g.Q, x) - g.r, 0), q.grad_F(pz, x),
                             rtol=1e-9, atol=1e-12)
  y = jax.random.normal(jax.random.key(2), (3,), jnp.float64)
  gx, gy = q.grads(pz, x, jnp.broadcast_to(y, (4, 3)))
  joint = jnp.einsum("mij,j->mi", g.K, jnp.concatenate([x, y])) - g.k
  np.testing.assert_allclose(joint, jnp.concatenate([gx, gy], 1), rtol=1e-9, atol=1e-12)


def test_byzantine_instance_is_overpersonalized_and_options_are_checked():
  p = inst.notebook_problem(3, targets="shared", shared_base=False, zeta=1.0, noise=0.0,
                            dtype=jnp.float64, **SMALL)
  r1, r2 = q.residuals(p, p.x_star, q.best_y(p, p.x_star))
  assert float(jnp.max(jnp.abs(r1))) < 1e-10 and float(jnp.max(jnp.abs(r2))) < 1e-10
  # No shared base: the clients' matrices are independent U(0, 1) / d draws.
  assert float(jnp.min(p.H)) >= 0 and float(jnp.max(p.H)) <= 1 / 6
  with pytest.raises(ValueError, match="perturbation='gauss'"):
    inst.notebook_problem(0, perturbation="gauss", **SMALL)
  with pytest.raises(ValueError, match="targets='mine'"):
    inst.notebook_gram(0, targets="mine", **SMALL)


def test_notebook_lipschitz_by_hand():
  hh = np.diag([4.0, 1.0])
  schur = np.asarray([[3.0, 0.0], [0.0, 4.0]])  # Frobenius 5 > 4
  assert inst.notebook_lipschitz(hh, schur) == 5.0
  assert inst.notebook_lipschitz(np.diag([9.0, 1.0]), schur) == 9.0


@pytest.fixture(scope="module")
def hetero():
  p = q.make_problem(0, num_clients=4, dim_x=8, dim_y=4, rows=40, condition=2.0,
                     overpersonalized=False, dtype=jnp.float64)
  return p, q.constants(p)


def test_cg_is_exact_after_dy_steps_and_gd_fine_tuner_approaches_exact(hetero):
  p, c = hetero
  x = jax.random.normal(jax.random.key(3), (8,), jnp.float64)
  y0 = jax.random.normal(jax.random.key(4), (4, 4), jnp.float64)
  np.testing.assert_allclose(q.cg_solve(p, x, y0, 4), q.best_y(p, x), rtol=1e-8, atol=1e-10)
  assert float(jnp.max(jnp.abs(q.cg_solve(p, x, y0, 2) - q.best_y(p, x)))) > 1e-4
  run = lambda **kw: np.asarray(q.ffgg(p, KEY, rounds=30, lr_out=1 / c["L_F"], **kw)[0])
  exact = run(inner_solver="exact")
  np.testing.assert_allclose(exact, run(exact_inner=True), rtol=0, atol=0)
  np.testing.assert_allclose(run(inner_solver="cg", inner_steps=4), exact, rtol=1e-8, atol=1e-10)
  errs = [np.abs(run(lr_in=1 / c["L_y"], inner_steps=t) - exact).max() for t in (5, 50, 2000)]
  assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8
  with pytest.raises(ValueError, match="inner_solver='newton'"):
    q.ffgg(p, KEY, rounds=1, lr_out=0.1, inner_solver="newton")


def test_local_ffgg_fine_tunes_once_then_k_steps_on_x(hetero):
  p, c = hetero
  k, eta, lr = 3, 0.5 / c["L_F"], 0.7 / c["L_F"]
  x1, _ = q.ffgg(p, KEY, rounds=1, lr_out=lr, exact_inner=True, local_steps=k, local_lr=eta)
  H, b, A, B, cc = (np.asarray(a) for a in (p.H, p.b, p.A, p.B, p.c))
  pseudo = []
  for m in range(4):
    x = np.zeros(8)
    y = np.linalg.lstsq(B[m], cc[m] - A[m] @ x, rcond=None)[0]  # y*_m(x^0), then fixed
    total = np.zeros(8)
    for _ in range(k):
      gx = H[m].T @ (H[m] @ x - b[m]) + A[m].T @ (A[m] @ x + B[m] @ y - cc[m])
      x, total = x - eta * gx, total + gx
    pseudo.append(total)
  np.testing.assert_allclose(x1, -lr * np.mean(pseudo, 0), rtol=1e-9, atol=1e-12)


def test_scaffold_with_one_local_step_is_joint_gd_and_removes_client_drift(hetero):
  p, c = hetero
  lr = 1 / c["L_joint"]
  x_s, n_s = bl.scaffold(p, rounds=20, lr_in=lr, local_steps=1)
  x_a, n_a = q.fedavg_local_steps(p, rounds=20, lr=lr, local_steps=1)
  np.testing.assert_allclose(x_s, x_a, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(n_s, n_a, rtol=1e-10, atol=1e-12)
  g = inst.gram_of(p)
  joint_opt = np.linalg.solve(np.asarray(g.K).mean(0), np.asarray(g.k).mean(0))[:8]
  x_s5, _ = bl.scaffold(p, rounds=1500, lr_in=lr, local_steps=5)
  x_a5, _ = q.fedavg_local_steps(p, rounds=1500, lr=lr, local_steps=5)
  np.testing.assert_allclose(x_s5, joint_opt, rtol=1e-6, atol=1e-8)
  assert np.abs(np.asarray(x_a5) - joint_opt).max() > 1e-4  # Local GD's drift


def test_l2gd_without_penalty_never_mixes(hetero):
  p, c = hetero
  lr, tau, its = 2 / c["L_joint"], 4.0, 40
  x, norms, comms = bl.l2gd(p, KEY, iterations=its, lr=lr, tau=tau, lam=0.0)
  steps = its - int(comms)
  assert 0 < int(comms) < its and norms.shape == (its + 1,)
  H, b, A, B, cc = (np.asarray(a) for a in (p.H, p.b, p.A, p.B, p.c))
  s = lr / (4 * (1 - 1 / tau))
  xs = []
  for m in range(4):
    xm, ym = np.zeros(8), np.zeros(4)
    for _ in range(steps):
      r2 = A[m] @ xm + B[m] @ ym - cc[m]
      gx = H[m].T @ (H[m] @ xm - b[m]) + A[m].T @ r2
      xm, ym = xm - s * gx, ym - s * B[m].T @ r2
    xs.append(xm)
  np.testing.assert_allclose(x, np.mean(xs, 0), rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="tau=1"):
    bl.l2gd(p, KEY, iterations=1, lr=lr, tau=1, lam=1.0)


def test_notebook_noise_is_one_shift_per_target():
  """The notebooks' ``noise * rng.normal(n)`` adds one scalar to every row: the
  targets are then exactly affine in the features; proper noise is not."""
  def misfit(notebook_noise):
    p = inst.notebook_problem(0, zeta=1.0, noise=0.1, notebook_noise=notebook_noise,
                              dtype=jnp.float64, **SMALL)
    H, b = np.asarray(p.H[0]), np.asarray(p.b[0])
    design = np.concatenate([H, np.ones((H.shape[0], 1))], axis=1)
    return np.linalg.norm(design @ np.linalg.lstsq(design, b, rcond=None)[0] - b)
  assert misfit(True) < 1e-10 and misfit(False) > 1e-2


def test_cold_start_draws_y_every_round_by_hand(hetero):
  p, c = hetero
  lr = 1 / c["L_F"]
  x1, _ = q.ffgg(p, KEY, rounds=1, lr_out=lr, lr_in=0.0, inner_steps=0)  # y = the cold draw
  y = jax.random.normal(jax.random.fold_in(KEY, 0), (4, 4), jnp.float64)
  ref = -lr * jnp.mean(q.grads(p, jnp.zeros(8), y)[0], axis=0)
  np.testing.assert_allclose(x1, ref, rtol=1e-10, atol=1e-12)
  warm, _ = q.ffgg(p, KEY, rounds=1, lr_out=lr, inner_steps=0, warm_start=True)  # y = 0
  np.testing.assert_allclose(warm, -lr * jnp.mean(q.grads(p, jnp.zeros(8), jnp.zeros((4, 4)))[0],
                                                  axis=0), rtol=1e-10, atol=1e-12)
  assert inst.notebook_lr(inst.gram_of(p)) == pytest.approx(
      1 / float(inst.gram_of(p).L_clients[-1]))
