"""FLOCO: the simplex centre before tau, the client projection from tau on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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



def test_flbench_mode_pcas_all_clients_and_evaluates_the_centre_after_tau():
  """``mode="flbench"``: round tau-1 trains all N clients from the global
  model; the PCA uses every client's update; only the sampled clients are
  averaged; the evaluation after that round still uses the centre."""
  from fedjax_pfl.core import backend
  from fedjax_pfl.ops.aggregation import weighted_mean
  cfg = FlocoConfig(tau=2, endpoints=3, mode="flbench")
  sim, p0 = make_sim("floco", cfg)
  assert sim.algorithm.full_rounds == (1,)
  state, hist = run_rounds(sim, p0, 2)
  assert hist[0][1]["round_clients"] == 4 and hist[1][1]["round_clients"] == 8
  before = hist[0][0]
  stats = np.asarray(state.clients.stats)
  data = tiny_data()
  trains = np.asarray(data.train_counts) >= 2                  # client 1's one example: no batch
  assert np.all(np.abs(stats[trains]).sum(1) > 0) and np.all(stats[~trains] == 0)
  want = floco.best_radius(floco.pca(jnp.asarray(stats), 3))[1]
  np.testing.assert_allclose(state.clients.beta, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.clients.eval_beta, 1.0 / 3)   # centre until round tau
  # The all-client pass: client i's update is from the round-1 global model,
  # and the new global model averages only round 1's sampled clients.
  picked = np.isin(np.arange(8), sim.cohort(1))
  ends = before.server["endpoints"].ravel()[None] + stats
  w = np.asarray(data.train_counts, np.float32) * picked
  np.testing.assert_allclose(state.server["endpoints"].ravel(),
                             weighted_mean(jnp.asarray(ends), w), rtol=1e-5, atol=1e-6)
  state, _ = sim.run_round(state)                                # round tau: centres evaluated
  np.testing.assert_array_equal(state.clients.eval_beta, state.clients.beta)
  row = jax.tree.map(lambda a: a[0], state.clients)
  np.testing.assert_array_equal(sim.algorithm.personalize(state.server, row)["alpha"],
                                state.clients.beta[0])
  # Compiled backend: the split scan gives the same run.
  fused, _ = make_sim("floco", cfg, execution=backend.Execution(parallelism="vmap",
                                                                step_loop="scan"))
  got, recs = fused.run_rounds(fused.init(p0), 3)
  assert [m["round_clients"] for m in recs] == [4, 8, 4]
  np.testing.assert_allclose(got.clients.beta, state.clients.beta, rtol=1e-4, atol=1e-5)


def test_flbench_ball_sample_is_not_renormalized():
  centre = jnp.array([0.2, 0.3, 0.5])
  key = jax.random.key(4)
  raw = floco.sample_alpha(key, True, centre, 0.5, renormalize=False)
  norm = floco.sample_alpha(key, True, centre, 0.5)
  np.testing.assert_allclose(norm, raw / jnp.sum(raw), rtol=1e-6)
  assert abs(float(jnp.sum(raw)) - 1.0) > 1e-4
  with pytest.raises(ValueError, match="floco.mode='x'"):
    FlocoConfig(mode="x").validate()
