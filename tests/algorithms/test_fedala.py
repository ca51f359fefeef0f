"""FedALA: ALA merge limits, first-phase convergence, eta = 0 is FedAvg."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms import _compose
from fedjax_pfl.algorithms.fedala import TOP, FedALAClient, FedALAConfig, ala, ala_merge
from fedjax_pfl.core import cohort
from tests.helpers import make_sim, run_rounds, tiny_model

MODEL = tiny_model()
SIM, P0 = make_sim("fedala", participation=1.0)
TOP_SPLIT = _compose.partition(P0, _compose.last_leaves_rules(P0, 2, TOP), TOP)
OTHER = jax.tree.map(lambda a: a + 0.5, MODEL.init(jax.random.key(1)))  # a different model


def _ala(cfg, global_params, client, cid=0):
  fn = jax.jit(lambda g, c, d: ala(MODEL.apply, TOP_SPLIT, cfg, g, c, d, jax.random.key(7), 4))
  return fn(global_params, client, cohort.client_data(SIM.data, cid))


def _client(local, weights=None, start=True):
  top = TOP_SPLIT.select(local)
  weights = weights or tuple(jnp.ones_like(x) for x in top)
  return FedALAClient(top, weights, jnp.asarray(start))


def test_top_tensors_are_the_classifier():
  assert TOP_SPLIT.select(P0) == (P0["classifier"]["bias"], P0["classifier"]["kernel"])


def test_weights_all_ones_copy_the_global_head():
  local, glob = TOP_SPLIT.select(OTHER), TOP_SPLIT.select(P0)
  merged = ala_merge(local, glob, tuple(jnp.ones_like(x) for x in glob))
  chex.assert_trees_all_close(merged, glob, rtol=1e-6, atol=1e-6)
  # ... and with eta = 0 the weights stay at one: theta_hat is the global model.
  theta_hat, weights, start, its = _ala(FedALAConfig(eta=0.0), P0, _client(OTHER))
  chex.assert_trees_all_close(theta_hat, P0, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_equal(weights, tuple(jnp.ones_like(x) for x in glob))
  assert not bool(start) and int(its) == 11  # constant losses: std 0 after 11 epochs


def test_local_equal_global_is_a_no_op():
  weights = tuple(jnp.full_like(x, 0.3) for x in TOP_SPLIT.select(P0))
  theta_hat, new_w, start, its = _ala(FedALAConfig(), P0, _client(P0, weights))
  chex.assert_trees_all_equal(theta_hat, P0)
  chex.assert_trees_all_equal(new_w, weights)
  assert bool(start) and int(its) == 0  # first phase kept for a later round


def test_first_phase_then_single_epoch():
  cfg = FedALAConfig(max_init_iters=30)
  theta_hat, w1, start, its = _ala(cfg, P0, _client(OTHER))
  assert not bool(start) and 11 <= int(its) <= 30
  leaves = np.concatenate([np.ravel(x) for x in w1])
  assert leaves.min() >= 0 and leaves.max() <= 1 and leaves.min() < 1
  # Lower layers are global; the head is the merge with the learned weights.
  chex.assert_trees_all_equal(theta_hat["fc1"], P0["fc1"])
  chex.assert_trees_all_close(TOP_SPLIT.select(theta_hat),
                              ala_merge(TOP_SPLIT.select(OTHER), TOP_SPLIT.select(P0), w1))
  _, _, start2, its2 = _ala(cfg, P0, _client(OTHER, w1, start=False))
  assert not bool(start2) and int(its2) == 1


def test_eta_zero_equals_fedavg():
  sim_avg, p0 = make_sim("fedavg")
  sim, _ = make_sim("fedala", FedALAConfig(eta=0.0))
  _, h_avg = run_rounds(sim_avg, p0, 2)
  _, hist = run_rounds(sim, p0, 2)
  for (s_avg, m_avg), (s, m) in zip(h_avg, hist):
    chex.assert_trees_all_close(s.server, s_avg.server, rtol=1e-5, atol=1e-6)
    assert m["train_loss"] == pytest.approx(m_avg["train_loss"], rel=1e-5)
  assert hist[0][1]["ala_epochs"] == 0.0  # round 0: local == global everywhere
  assert sim.evaluate(hist[-1][0])["accuracy"] == sim_avg.evaluate(h_avg[-1][0])["accuracy"]


def test_invalid_config_rejected():
  with pytest.raises(ValueError, match="fedala.rand_percent=0"):
    FedALAConfig(rand_percent=0.0).validate()


def test_flbench_eval_is_the_global_model_for_every_client_but_client_0():
  """``eval_mode="flbench"``: FL-bench's shared worker reloads the global model
  for every client after the first; training is unchanged."""
  from fedjax_pfl.core.rounds import SimState
  sim, p0 = make_sim("fedala")
  sim_fb, _ = make_sim("fedala", FedALAConfig(eval_mode="flbench"))
  sim_avg, _ = make_sim("fedavg")
  state, _ = run_rounds(sim, p0, 2)
  state_fb, _ = run_rounds(sim_fb, p0, 2)
  chex.assert_trees_all_equal(state_fb.server, state.server)
  chex.assert_trees_all_equal(state_fb.clients[0], state.clients)
  e_fb = sim_fb.evaluate(state_fb)["client_accuracy"]
  e_own = sim.evaluate(state)["client_accuracy"]
  e_glob = sim_avg.evaluate(SimState(state.server, (), 2))["client_accuracy"]
  assert e_fb[0] == e_own[0]
  assert e_fb[1:] == e_glob[1:]
  own = _client(OTHER, weights=tuple(0.5 * jnp.ones_like(x) for x in TOP_SPLIT.select(P0)))
  merged = sim.algorithm.personalize(state.server, own)
  assert not np.allclose(merged["classifier"]["kernel"], state.server["classifier"]["kernel"])
  chex.assert_trees_all_equal(sim_fb.algorithm.personalize(state.server, (own, True)), merged)
  chex.assert_trees_all_equal(sim_fb.algorithm.personalize(state.server, (own, False)),
                              state.server)
  with pytest.raises(ValueError, match="fedala.eval_mode='x'"):
    FedALAConfig(eval_mode="x").validate()
