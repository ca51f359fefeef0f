"""FLOCO: the simplex centre before tau, the client projection from tau on."""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.algorithms import floco
from fedjax_pfl.algorithms.floco import FlocoConfig
from tests.helpers import make_sim, run_rounds, tiny_data, tiny_model


def _reference_projection(kappas):
  """NumPy port of FL-bench's loop (projection_simplex + compute_riesz_s_energy)."""
  best, best_e, best_b = None, np.inf, None
  for z in np.linspace(1e-4, 1, 1000):
    u = np.sort(kappas, axis=1)[:, ::-1]
    cssv = np.cumsum(u, axis=1) - z
    rho = np.count_nonzero(u - cssv / (np.arange(kappas.shape[1]) + 1) > 0, axis=1)
    theta = cssv[np.arange(len(kappas)), rho - 1] / rho
    b = np.maximum(kappas - theta[:, None], 0)
    b /= b.sum(1, keepdims=True)
    dist = np.sqrt(((b[:, None] - b[None]) ** 2).sum(2))
    dist = np.maximum(dist, 1e-4)[np.triu_indices(len(b), 1)]
    e = np.log((1 / dist ** 2).sum()) - np.log(len(dist))
    if np.isfinite(e) and e < best_e:
      best, best_e, best_b = z, e, b
  return best, best_b


def test_radius_search_is_on_the_grid_and_matches_the_reference():
  kappas = np.asarray(jax.random.normal(jax.random.key(0), (12, 4)), np.float64)
  z, betas = floco.best_radius(jnp.asarray(kappas, jnp.float32))
  assert float(z) in set(floco.Z_GRID.tolist())
  np.testing.assert_allclose(np.sum(betas, axis=1), 1.0, rtol=1e-5)
  assert float(jnp.min(betas)) >= 0.0
  z_ref, b_ref = _reference_projection(kappas)
  assert abs(float(z) - z_ref) <= 2e-3                         # at most two grid steps
  np.testing.assert_allclose(betas, b_ref, atol=5e-3)


def test_centre_before_tau_then_client_centres():
  sim, p0 = make_sim("floco", FlocoConfig(tau=2, endpoints=4))
  alg, data = sim.algorithm, tiny_data()
  state, _ = run_rounds(sim, p0, 1)
  x = jnp.asarray(data.x[:5])
  params = state.server
  plain = {**params["model"], "classifier": {
      "kernel": jnp.mean(params["endpoints"], axis=0),
      "bias": params["model"]["classifier"]["bias"]}}
  for i in (0, 3):
    row = jax.tree.map(lambda a, i=i: a[i], state.clients)
    got = alg.eval_apply(alg.personalize(state.server, row), x)
    np.testing.assert_allclose(got, sim.algorithm.eval_apply(
        {"params": params, "alpha": jnp.full(4, 0.25)}, x), rtol=1e-6)
    np.testing.assert_allclose(got, tiny_model(data.num_classes).apply(plain, x), rtol=1e-5, atol=1e-6)
  state, _ = run_rounds(sim, p0, 2)                            # projection after round 1
  beta = np.asarray(state.clients.beta)
  np.testing.assert_allclose(beta.sum(1), 1.0, rtol=1e-5)
  assert beta.min() >= 0 and not np.allclose(beta, 0.25)
  for i in (0, 5):
    row = jax.tree.map(lambda a, i=i: a[i], state.clients)
    np.testing.assert_array_equal(alg.personalize(state.server, row)["alpha"], beta[i])

