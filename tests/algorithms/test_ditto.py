"""Ditto: global model is FedAvg; lam limits of the personal model."""

import chex
import jax
import numpy as np
import pytest

from fedjax_pfl.algorithms.ditto import DittoConfig
from fedjax_pfl.core import cohort, rng
from fedjax_pfl.core.local import LocalSpec, make_optimizer
from tests.helpers import make_sim, run_rounds, tiny_model


def _personal_only(sim, v, cid, round_idx, *, lr, momentum, epochs):
  """Pure local training of ``v`` (the personal phase with lam = 0)."""
  spec = LocalSpec(tiny_model().apply, make_optimizer(lr, momentum), 1, 4,
                   int(sim.data.train_idx.shape[1]))
  prog = spec.program(epochs=epochs)
  key = jax.random.fold_in(rng.client_key(sim.train_key, round_idx, cid), 1)
  data = cohort.client_data(sim.data, cid)
  carry = jax.lax.fori_loop(0, prog.num_steps, lambda t, c: prog.step(c, t, data),
                            prog.init(v, data, key))
  return prog.finish(carry)[0]


def test_lam_zero_is_local_training_and_server_is_fedavg():
  sim_avg, p0 = make_sim("fedavg", participation=1.0)
  sim, _ = make_sim("ditto", DittoConfig(lam=0.0, pers_epochs=2), participation=1.0)
  _, h_avg = run_rounds(sim_avg, p0, 2)
  _, hist = run_rounds(sim, p0, 2)
  for (s_avg, _), (s, m) in zip(h_avg, hist):
    chex.assert_trees_all_close(s.server, s_avg.server, rtol=1e-6, atol=1e-7)
    assert m["pers/train_examples"] > 0
  run = jax.jit(lambda v, c, r: _personal_only(sim, v, c, r, lr=0.1, momentum=0.5, epochs=2))
  for cid in (0, 3):
    v = p0
    for r in range(2):  # v_i carries over rounds, starting from theta^0
      v = run(v, cid, r)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[cid], hist[-1][0].clients), v,
                                rtol=1e-5, atol=1e-6)


def test_huge_lam_pins_personal_model_to_received_global():
  # lr * lam = 1: each step gives v = theta^t - lr grad f(v_prev), so |v - theta^t| ~ 1e-4.
  sim, p0 = make_sim("ditto", DittoConfig(lam=1e4), lr=1e-4, momentum=0.0, participation=1.0)
  state, _ = run_rounds(sim, p0, 1)
  trained = [c for c in range(sim.num_clients) if c != 1]  # client 1 has no batch of 2
  dev = jax.tree.map(lambda v, g: np.max(np.abs(np.asarray(v)[trained] - np.asarray(g)), axis=0),
                     state.clients, p0)
  worst = max(float(np.max(d)) for d in jax.tree.leaves(dev))
  assert 0 < worst < 1e-3
  # Never-trained client keeps theta^0 exactly.
  chex.assert_trees_all_equal(jax.tree.map(lambda a: a[1], state.clients), p0)
  # Evaluation uses v_i.
  v0 = jax.tree.map(lambda a: a[0], state.clients)
  chex.assert_trees_all_equal(sim.algorithm.personalize(state.server, v0), v0)


def test_invalid_config_rejected():
  with pytest.raises(ValueError, match="ditto.lam=-1"):
    DittoConfig(lam=-1.0).validate()
  with pytest.raises(ValueError, match="ditto.pers_epochs=0"):
    DittoConfig(pers_epochs=0).validate()
