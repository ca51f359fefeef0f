"""FedDPA: Fisher masks, FedAvg equivalence, the original's two stages."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms import feddpa
from fedjax_pfl.algorithms.feddpa import FedDPAConfig
from fedjax_pfl.core import cohort
from fedjax_pfl.core.local import LocalInput, LocalSpec, make_optimizer
from tests.helpers import make_sim, run_rounds, tiny_data, tiny_model


def test_quantile_one_equals_fedavg_round_for_round():
  sim_avg, p0 = make_sim("fedavg")
  sim_dpa, _ = make_sim("feddpa", FedDPAConfig(fisher_quantile=1.0))
  _, h_avg = run_rounds(sim_avg, p0, 2)
  state, h_dpa = run_rounds(sim_dpa, p0, 2)
  for (s_avg, _), (s_dpa, m_dpa) in zip(h_avg, h_dpa):
    chex.assert_trees_all_close(s_avg.server, s_dpa.server, rtol=1e-6, atol=1e-7)
    assert m_dpa["personalized_fraction"] == 0.0
  assert not any(bool(jnp.any(m)) for m in jax.tree.leaves(state.clients.mask))


def test_per_tensor_quantile_mask_fraction_is_about_sixty_percent():
  keys = jax.random.split(jax.random.key(0), 3)
  fisher = {"a": jax.random.uniform(keys[0], (40, 25)) ** 3,
            "b": jax.random.exponential(keys[1], (501,)),
            "c": jnp.full((7,), 2.0)}
  mask = feddpa.quantile_mask(fisher, 0.4)
  for name in ("a", "b"):
    n = fisher[name].size
    # Distinct values: exactly n - 1 - floor(0.4 (n - 1)) lie above the quantile.
    assert int(jnp.sum(mask[name])) == n - 1 - int(np.floor(0.4 * (n - 1)))
    assert float(jnp.mean(mask[name])) == pytest.approx(0.6, abs=0.01)
  assert not bool(jnp.any(mask["c"]))     # constant tensor: F_norm = 0 everywhere
  thr = feddpa.threshold_mask(fisher, 0.4)
  a = np.asarray(fisher["a"])
  np.testing.assert_array_equal(thr["a"], (a - a.min()) / (a.max() - a.min()) > 0.4)


def test_two_stage_program_trains_u_then_v():
  data = tiny_data()
  model = tiny_model(data.num_classes)
  params = model.init(jax.random.key(0))
  spec = LocalSpec(model.apply, make_optimizer(0.1), 2, 4, int(data.train_idx.shape[1]))
  prog = feddpa.two_stage_program(spec, FedDPAConfig(variant="original"))
  u = jax.tree.map(lambda p: jax.random.bernoulli(jax.random.key(p.size), 0.5, p.shape), params)
  glob = jax.tree.map(lambda p: p + 0.01, params)
  cdata = cohort.client_data(cohort.DeviceData(*map(jnp.asarray, (
      data.x, data.y, data.train_idx, data.train_counts, data.test_idx, data.test_counts))), 0)
  carry = prog.init(LocalInput(params, (glob, u)), cdata, jax.random.key(1))
  half = prog.num_steps // 2
  step = jax.jit(prog.step)
  for t in range(half):
    carry = step(carry, t, cdata)
  stage1 = carry.params
  for t in range(half, prog.num_steps):
    carry = step(carry, t, cdata)
  final, metrics = prog.finish(carry)
  for p, s1, f, m in zip(*(jax.tree.leaves(t) for t in (params, stage1, final, u))):
    np.testing.assert_array_equal(np.where(m, 0, s1), np.where(m, 0, p))   # v frozen in 1
    np.testing.assert_array_equal(np.where(m, f, 0), np.where(m, s1, 0))   # u frozen in 2
  assert any(bool(jnp.any(s1 != p)) for s1, p in zip(jax.tree.leaves(stage1),
                                                     jax.tree.leaves(params)))
  assert any(bool(jnp.any(f != s1)) for f, s1 in zip(jax.tree.leaves(final),
                                                     jax.tree.leaves(stage1)))
  assert np.isfinite(float(metrics["train_loss"]))
