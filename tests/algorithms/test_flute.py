"""FLUTE: the neural-collapse term, the server step, FedPer-like degenerate case."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms import flute
from fedjax_pfl.algorithms.flute import FLUTEConfig
from fedjax_pfl.core import backend, cohort
from fedjax_pfl.core.algorithm import Algorithm, ServerContext
from fedjax_pfl.core.local import LocalSpec, make_optimizer
from fedjax_pfl.core.simulation import Simulation
from fedjax_pfl.models.base import CLASSIFIER_RULES, label_params
from fedjax_pfl.ops.aggregation import weighted_mean
from tests.helpers import make_sim, run_rounds, seen_and_unseen, tiny_data, tiny_model


def test_nc_loss_is_zero_for_a_simplex_etf():
  k, d = 5, 7
  etf = np.eye(k) - np.ones((k, k)) / k                          # Gram of a simplex ETF
  vecs = np.linalg.cholesky(etf + 1e-12 * np.eye(k))             # rows w_k
  w = np.pad(vecs, ((0, 0), (0, d - k))) * 3.0                   # [K, D], any scale
  kernel = jnp.asarray(w.T, jnp.float32)
  assert float(flute.nc_loss(kernel, jnp.ones(k))) < 1e-5
  assert float(flute.nc_loss(kernel, jnp.array([1.0, 1, 0, 1, 1]))) > 0.1
  rand = jax.random.normal(jax.random.key(0), (d, k))
  gram = np.asarray(rand).T @ np.asarray(rand)
  expected = np.linalg.norm(gram / np.linalg.norm(gram) - etf / np.sqrt(k - 1))
  np.testing.assert_allclose(flute.nc_loss(rand, jnp.ones(k)), expected, rtol=1e-5)


def test_server_step_writes_stepped_kernels_of_valid_clients():
  sim, p0 = make_sim("flute", FLUTEConfig(nc2_lr=0.5))
  state = sim.init(p0)
  server = state.server
  keys = jax.random.split(jax.random.key(3), 3)
  params = jax.tree.map(lambda a: jnp.stack([a + 0.1 * i for i in range(3)]), p0)
  params["classifier"]["kernel"] = jnp.stack(
      [jax.random.normal(k, p0["classifier"]["kernel"].shape) for k in keys])
  present = jnp.array([[1.0, 1, 0], [1, 1, 1], [1, 0, 1]])
  ids = jnp.array([2, 5, 7], jnp.int32)
  weights = jnp.array([3.0, 1.0, 0.0])                            # the last is padding
  ctx = ServerContext(jnp.int32(0), ids, jnp.array([True, True, False]), jax.random.key(0),
                      state.clients)
  new, _, personal = sim.algorithm.aggregate(server, (params, present), weights, ctx=ctx)
  for j, i in enumerate(ids[:2]):
    k = params["classifier"]["kernel"][j]
    step = k - 0.5 * jax.grad(flute.nc_loss)(k, present[j]) / 2.0
    np.testing.assert_allclose(personal["kernel"][i], step, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(personal["bias"][i], params["classifier"]["bias"][j])
  np.testing.assert_array_equal(personal["kernel"][7], state.clients["kernel"][7])
  chex.assert_trees_all_close(new.params["fc1"], weighted_mean(params["fc1"], weights))


def _fedper_head_then_all(spec: LocalSpec, params, rep_round: int) -> Algorithm:
  """FedPer with FedRep-like local phases, head kept in the client state."""
  labels = label_params(params, CLASSIFIER_RULES)
  cut = spec.epochs - rep_round
  local = spec.program(trainable=lambda e: jax.tree.map(
      lambda lab: jnp.asarray(True) if lab == "classifier" else e >= cut, labels))

  def with_head(server, head):
    return {**server, "classifier": head}
  return Algorithm(
      "fedper_ht", lambda p, n, key=None: (p, cohort.stack_clients(p["classifier"], n)),
      lambda s, c, ctx=None: (with_head(s, c), ()), local,
      lambda s, c, t, e, ctx=None: (t, t["classifier"], {}),
      lambda s, u, w, ctx=None: (weighted_mean(u, w), {}), with_head)


def test_zero_regularisers_equal_fedper_with_head_then_all_training():
  cfg = FLUTEConfig(lamda1=0.0, lamda2=0.0, lamda3=0.0, nc2_lr=0.0)
  sim, p0 = make_sim("flute", cfg, epochs=3)
  data = tiny_data()
  model = tiny_model(data.num_classes)
  spec = LocalSpec(model.apply, make_optimizer(0.1, 0.5), 3, 4, int(data.train_idx.shape[1]))
  ref = Simulation(_fedper_head_then_all(spec, p0, 1), model.apply, data, seed=0,
                   participation=0.5, execution=backend.Execution(), eval_batch_size=2)
  got, _ = run_rounds(sim, p0, 2)
  want, _ = run_rounds(ref, p0, 2)
  body = lambda p: {k: v for k, v in p.items() if k != "classifier"}
  chex.assert_trees_all_close(body(got.server.params), body(want.server), rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got.clients, want.clients, rtol=1e-5, atol=1e-6)
  assert sim.evaluate(got)["loss"] == pytest.approx(ref.evaluate(want)["loss"], rel=1e-5)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(body(got.server.params)),
                                                   jax.tree.leaves(body(p0))))


def test_detach_features_keeps_the_body_at_theta0_bit_for_bit():
  """FL-bench's ``detach=True``: no loss reaches the body; heads still train."""
  sim, p0 = make_sim("flute", FLUTEConfig(detach_features=True))
  state, history = run_rounds(sim, p0, 2)
  for key in p0:
    if key != "classifier":
      chex.assert_trees_all_equal(state.server.params[key], p0[key])
  picked = sim.cohort(1).tolist()
  assert not np.allclose(state.clients["kernel"][picked[0]], p0["classifier"]["kernel"])
  sim_on, _ = make_sim("flute")
  state_on, _ = run_rounds(sim_on, p0, 1)
  assert not np.allclose(state_on.server.params["fc1"]["kernel"], p0["fc1"]["kernel"])


def test_unseen_personal_server_mean_uses_the_average_head():
  sim, p0 = make_sim("flute", FLUTEConfig(unseen_personal="server_mean"))
  state, _ = run_rounds(sim, p0, 1)
  seen, client = seen_and_unseen(sim, state)
  model = sim.algorithm.personalize(state.server, client)
  chex.assert_trees_all_equal(model, state.server.params)
  assert not np.allclose(state.server.params["classifier"]["kernel"], p0["classifier"]["kernel"])
  np.testing.assert_array_equal(sim.algorithm.personalize(state.server, seen)["classifier"]
                                ["kernel"], seen[0]["kernel"])
