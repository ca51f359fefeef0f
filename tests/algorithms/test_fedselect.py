"""FedSelect: FedAvg when masks never grow, masked mean and growth by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.algorithms import fedselect
from fedjax_pfl.algorithms.fedselect import FedSelectConfig
from tests.helpers import make_sim, run_rounds


def test_no_growth_equals_fedavg_round_for_round():
  sim_avg, p0 = make_sim("fedavg")
  sim_sel, _ = make_sim("fedselect", FedSelectConfig(prune_percent=0.0, lth_epoch_iters=1))
  _, h_avg = run_rounds(sim_avg, p0, 3)
  state, h_sel = run_rounds(sim_sel, p0, 3)
  for (s_avg, _), (s_sel, m_sel) in zip(h_avg, h_sel):
    chex.assert_trees_all_close(s_avg.server, s_sel.server.params, rtol=1e-5, atol=1e-6)
    assert m_sel["personalized_fraction"] == 0.0
  assert not any(bool(jnp.any(m)) for m in jax.tree.leaves(state.clients.mask))


def test_masked_mean_by_hand():
  params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}      # 3 clients x 2 entries
  shared = {"w": jnp.array([[True, False], [True, False], [False, False]])}
  weights = jnp.array([1.0, 3.0, 2.0])
  out = fedselect.masked_mean(params, shared, weights, {"w": jnp.array([-7.0, -8.0])})
  # Entry 0: clients 0, 1 share it -> (1*1 + 3*3) / (1 + 3); entry 1: nobody -> fallback.
  np.testing.assert_allclose(out["w"], [2.5, -8.0])
  plain = fedselect.masked_mean(params, shared, jnp.ones(3), {"w": jnp.zeros(2)})
  np.testing.assert_allclose(plain["w"], [2.0, 0.0])


def test_grow_mask_by_hand():
  delta = jnp.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])
  snap = {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)}
  now = {"kernel": delta.reshape(3, 3), "bias": jnp.array([5.0, 6.0, 7.0])}
  mask = {"kernel": jnp.zeros((3, 3), bool).at[0, 2].set(True),   # 0.9 already personal
          "bias": jnp.zeros(3, bool)}
  is_weight = {"kernel": True, "bias": False}
  out = fedselect.grow_mask(now, snap, mask, is_weight, 0.25, 0.8)
  # 8 shared deltas sorted [.1 .2 .3 .4 .5 .6 .7 .8]; index round(0.75 * 8) = 6 -> cutoff 0.7.
  expected = (np.asarray(delta) >= np.float32(0.7)).reshape(3, 3)
  np.testing.assert_array_equal(out["kernel"], expected)
  assert not bool(jnp.any(out["bias"]))
  # Above the target (here 1/9 > 0.1) the tensor does not grow.
  frozen = fedselect.grow_mask(now, snap, mask, is_weight, 0.25, 0.1)
  np.testing.assert_array_equal(frozen["kernel"], mask["kernel"])
  # Round half to even: 0.75 * 2 = 1.5 -> index 2 = k, so nothing grows.
  two = {"kernel": jnp.ones((3, 3), bool).at[0, 0].set(False).at[0, 1].set(False)}
  same = fedselect.grow_mask({"kernel": now["kernel"]}, {"kernel": snap["kernel"]}, two,
                             {"kernel": True}, 0.25, 1.0)
  np.testing.assert_array_equal(same["kernel"], two["kernel"])


def test_masks_grow_on_schedule_and_personal_entries_are_kept():
  sim, p0 = make_sim("fedselect", FedSelectConfig(lth_epoch_iters=1), participation=1.0)
  state, history = run_rounds(sim, p0, 2)
  assert history[0][1]["personalized_fraction"] == 0.0
  kernel = np.asarray(state.clients.mask["fc1"]["kernel"][0])
  assert 0.2 < kernel.mean() <= 0.3                     # one growth of ~25%
  assert not bool(jnp.any(state.clients.mask["fc1"]["bias"]))
  # Round 1's training used the round-0 mask (all shared): the merge uses it.
  assert not any(bool(jnp.any(m)) for m in jax.tree.leaves(state.clients.merge_mask))
  state, _ = run_rounds(sim, p0, 3)
  client = jax.tree.map(lambda a: a[0], state.clients)
  merged = sim.algorithm.personalize(state.server, client)
  for m, p, s, k in zip(*(jax.tree.leaves(t) for t in (merged, client.params,
                                                         state.server.params,
                                                         client.merge_mask))):
    np.testing.assert_array_equal(m, np.where(k, p, s))
  assert any(bool(jnp.any(k)) for k in jax.tree.leaves(client.merge_mask))
