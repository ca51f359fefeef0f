"""FFGG on the overpersonalized quadratic (Mishchenko et al., spec §4).

Smaller than the paper's instance so the file runs in seconds: M = 8 clients,
d_x = 20, d_y = 10, n = 200 rows, condition 2, float64, 60 rounds (the default
instance, M=8 / 100 / 50 / 1000, is run by ``experiments/ffgg_quadratic.py``).
Numbers observed on this instance (seed 0, 60 rounds): FFGG ~1e-15, FedAvg with
10 local steps and shared y stalls at 1.48e-2, the plain mean under one
Byzantine client stays above 10.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.ffgg import quadratic as q

ROUNDS = 60
KEY = jax.random.key(0)


@pytest.fixture(autouse=True, scope="module")
def _x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def problem():
  p = q.make_problem(0, num_clients=8, dim_x=20, dim_y=10, rows=200, condition=2.0,
                     dtype=jnp.float64)
  return p, q.constants(p)


def _ffgg(problem, **kw):
  p, c = problem
  kw = {"rounds": ROUNDS, "lr_out": 1.0 / c["L_F"], "lr_in": 1.0 / c["L_y"],
        "inner_steps": 20, "max_staleness": 2, **kw}  # one compiled program for all
  x, norms = q.ffgg(p, KEY, **kw)
  return np.asarray(x), np.asarray(norms)


def test_problem_is_overpersonalized_and_danskin_gradient_matches(problem):
  p, _ = problem
  r1, r2 = q.residuals(p, p.x_star, q.best_y(p, p.x_star))
  assert float(jnp.max(jnp.abs(r1))) < 1e-12 and float(jnp.max(jnp.abs(r2))) < 1e-12
  assert float(q.grad_norm(p, p.x_star)) < 1e-12
  x = jax.random.normal(jax.random.key(1), p.x_star.shape, jnp.float64)
  danskin = jnp.mean(q.grads(p, x, q.best_y(p, x))[0], axis=0)
  np.testing.assert_allclose(q.grad_F(p, x), danskin, rtol=1e-10, atol=1e-12)
  # y*_m(x) is stationary in y.
  assert float(jnp.max(jnp.abs(q.grads(p, x, q.best_y(p, x))[1]))) < 1e-12


def test_ffgg_converges_while_fedavg_with_local_steps_stalls(problem):
  p, c = problem
  _, exact = _ffgg(problem, exact_inner=True)
  _, gd = _ffgg(problem, warm_start=True)  # tau = 20 warm-started inner GD steps
  _, avg = q.fedavg_local_steps(p, rounds=ROUNDS, lr=1.0 / c["L_joint"], local_steps=10)
  avg = np.asarray(avg)
  assert exact[-1] < 1e-6 and gd[-1] < 1e-6
  assert exact[0] > 1.0
  assert avg[-1] > 1e-4 and avg[-1] > 100 * max(exact[-1], gd[-1])
  # A floor, not slow convergence: the last 20 rounds change it by < 0.1%.
  assert abs(avg[-1] - avg[-21]) < 1e-3 * avg[-1]
  # With personal y the overpersonalized problem has x* as a fixed point of
  # FedAvg's local steps too, so it converges (documented, not a floor).
  _, avg_py = q.fedavg_local_steps(p, rounds=ROUNDS, lr=1.0 / c["L_joint"], local_steps=10,
                                   personal_y=True)
  assert float(avg_py[-1]) < 1e-6


def test_zero_staleness_equals_synchronous_gradient_descent_on_F(problem):
  p, c = problem
  lr = 1.0 / c["L_F"]
  x_ffgg, norms = _ffgg(problem, exact_inner=True, staleness=0)
  step = jax.jit(lambda x: x - lr * q.grad_F(p, x))
  x, ref = jnp.zeros_like(p.x_star), []
  for _ in range(ROUNDS):  # exact inner => FFGG is GD on F (Danskin)
    x = step(x)
    ref.append(float(q.grad_norm(p, x)))
  np.testing.assert_allclose(x_ffgg, x, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(norms[1:], ref, rtol=1e-6, atol=1e-14)
  x_stale, stale = _ffgg(problem, exact_inner=True, staleness=2, lr_out=lr / 3)
  assert not np.allclose(x_stale, x_ffgg)
  assert stale[-1] < 1e-4 * stale[0]  # slower (lr / 3) but linear: 9.7e-6 here
  # Rounds 1 and 2 both apply the gradient taken at x^0: x^2 = -2 lr' g0.
  x2 = -2 * lr / 3 * q.grad_F(p, jnp.zeros_like(p.x_star))
  np.testing.assert_allclose(stale[2], float(q.grad_norm(p, x2)), rtol=1e-10)


def test_bucketed_median_survives_a_byzantine_client_where_the_mean_fails(problem):
  _, mean = _ffgg(problem, num_byzantine=1, byzantine_scale=100.0, warm_start=True)
  _, med = _ffgg(problem, num_byzantine=1, byzantine_scale=100.0, warm_start=True,
                 aggregator="bucketed_median")
  assert mean[-1] > 10.0 and np.min(mean[1:]) > 1.0
  assert med[-1] < 1e-6


def test_local_ffgg_converges(problem):
  _, c = problem
  _, local = _ffgg(problem, exact_inner=True, local_steps=3, local_lr=0.5 / c["L_F"],
                   lr_out=0.5 / c["L_F"])
  assert local[-1] < 1e-6


def test_bucketed_median_by_hand():
  v = jnp.asarray([[1.0], [3.0], [10.0], [20.0], [100.0]])
  w = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])  # the 100 is padding
  # bucket_size 1: plain median of {1, 3, 10, 20} = 6.5.
  np.testing.assert_allclose(q.bucketed_median(v, w, KEY, 1), [6.5])
  # bucket_size 4: one bucket, its weighted mean.
  np.testing.assert_allclose(q.bucketed_median(v, w * jnp.asarray([1, 1, 1, 2, 0.]), KEY, 4),
                             [(1 + 3 + 10 + 40) / 5])
  # bucket_size 2: the median of two bucket means = their mean = the plain mean.
  np.testing.assert_allclose(q.bucketed_median(v, w, KEY, 2), [8.5])
  out = q.bucketed_median({"a": v}, jnp.zeros(5), KEY, 2)
  np.testing.assert_allclose(out["a"], [0.0])
  with pytest.raises(ValueError, match="aggregator='max'"):
    q.ffgg(q.make_problem(0, num_clients=2, dim_x=2, dim_y=1, rows=4), KEY, rounds=1,
           lr_out=0.1, aggregator="max")
