"""pFedMe: inner loop by hand, beta = 1 is weighted averaging of the w_i."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.pfedme import PFedMeConfig, inner_steps
from fedjax_pfl.core import cohort, rng
from fedjax_pfl.core.local import Batch, softmax_cross_entropy
from fedjax_pfl.ops.aggregation import weighted_mean
from tests.helpers import make_sim, run_rounds, tiny_model

MODEL = tiny_model()


def _batch(n=5):
  r = np.random.default_rng(0)
  return Batch(jnp.asarray(r.normal(size=(n, 4, 4, 1)), jnp.float32),
               jnp.asarray(r.integers(0, 3, n), jnp.int32), jnp.ones(n, bool))


def _ce(params, batch):
  return softmax_cross_entropy(MODEL.apply(params, batch.x), batch.y, batch.mask)


def test_inner_loop_without_prox_is_plain_sgd():
  theta0, w = MODEL.init(jax.random.key(1)), MODEL.init(jax.random.key(2))
  batch = _batch()
  got, loss = jax.jit(lambda t, w: inner_steps(_ce, t, w, batch, k=5, lr=0.05, lam=0.0,
                                               mu=0.0))(theta0, w)
  sgd = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.05 * g, p, jax.grad(_ce)(p, batch)))
  ref = theta0
  for _ in range(5):
    ref = sgd(ref)
  chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-6)
  assert float(loss) == pytest.approx(float(jax.jit(_ce)(theta0, batch)), rel=1e-6)


def test_one_inner_step_with_prox_by_hand():
  theta0, w = MODEL.init(jax.random.key(1)), MODEL.init(jax.random.key(2))
  batch = _batch()
  got, _ = jax.jit(lambda t, w: inner_steps(_ce, t, w, batch, k=1, lr=0.01, lam=15.0,
                                            mu=1e-3))(theta0, w)
  g = jax.jit(jax.grad(_ce))(theta0, batch)
  ref = jax.tree.map(lambda t, gt, wt: t - 0.01 * (gt + 15.0 * (t - wt) + 1e-3 * t), theta0, g, w)
  chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-6)


def test_server_mixing():
  sim, p0 = make_sim("pfedme", PFedMeConfig(beta=0.25))
  uploads = jax.tree.map(lambda a: jnp.stack([a + 1.0, a - 2.0, a * 3.0]), p0)
  weights = jnp.array([1.0, 2.0, 0.0])
  got, _ = sim.algorithm.aggregate(p0, uploads, weights)
  mean = weighted_mean(uploads, weights)
  chex.assert_trees_all_close(got, jax.tree.map(lambda s, m: 0.75 * s + 0.25 * m, p0, mean),
                              rtol=1e-6, atol=1e-6)


def test_beta_one_round_is_weighted_mean_of_local_copies():
  sim, p0 = make_sim("pfedme", PFedMeConfig(beta=1.0), participation=1.0)
  state, _ = run_rounds(sim, p0, 1)
  prog = sim.algorithm.local_train

  @jax.jit
  def local(cid):
    data = cohort.client_data(sim.data, cid)
    carry = jax.lax.fori_loop(0, prog.num_steps, lambda t, c: prog.step(c, t, data),
                              prog.init(p0, data, rng.client_key(sim.train_key, 0, cid)))
    return prog.finish(carry)[0]
  outs = [local(c) for c in range(sim.num_clients)]
  ws = jax.tree.map(lambda *xs: jnp.stack(xs), *[o[0] for o in outs])
  expected = weighted_mean(ws, jnp.asarray(sim.train_counts, jnp.float32))
  chex.assert_trees_all_close(state.server, expected, rtol=1e-5, atol=1e-6)
  # Personalized models: the stored theta_hat of trained clients.
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], state.clients.theta), outs[0][1],
                              rtol=1e-5, atol=1e-6)
  assert bool(state.clients.trained[0]) and bool(state.clients.trained[1])
  model0 = sim.algorithm.personalize(state.server, jax.tree.map(lambda a: a[0], state.clients))
  chex.assert_trees_all_close(model0, outs[0][1], rtol=1e-6, atol=1e-7)


def test_untrained_client_is_evaluated_with_global_model():
  sim, p0 = make_sim("pfedme")
  client = jax.tree.map(lambda a: a[2], sim.init(p0).clients)
  assert not bool(client.trained)
  server = jax.tree.map(lambda a: a - 1.0, p0)
  chex.assert_trees_all_equal(sim.algorithm.personalize(server, client), server)
  trained = client._replace(trained=jnp.ones((), bool))
  chex.assert_trees_all_equal(sim.algorithm.personalize(server, trained), p0)


def test_invalid_config_rejected():
  with pytest.raises(ValueError, match="pfedme.k=0"):
    PFedMeConfig(k=0).validate()
  with pytest.raises(ValueError, match="pfedme.beta=2"):
    PFedMeConfig(beta=2.0).validate()
