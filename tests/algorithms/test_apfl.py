"""APFL: alpha = 0 is FedAvg; one hand-computed step of (w, v, alpha)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.apfl import APFLClient, APFLConfig, apfl_program
from fedjax_pfl.core.local import ClientData, make_optimizer, softmax_cross_entropy
from tests.helpers import make_sim, run_rounds, tiny_model

MODEL = tiny_model()


def test_alpha_zero_fixed_equals_fedavg():
  sim_avg, p0 = make_sim("fedavg")
  sim, _ = make_sim("apfl", APFLConfig(alpha_init=0.0, adapt_alpha=False))
  _, h_avg = run_rounds(sim_avg, p0, 2)
  _, hist = run_rounds(sim, p0, 2)
  for (s_avg, m_avg), (s, m) in zip(h_avg, hist):
    chex.assert_trees_all_close(s.server, s_avg.server, rtol=1e-6, atol=1e-7)
    assert m["train_loss"] == pytest.approx(m_avg["train_loss"], rel=1e-6)
    assert m["alpha"] == 0.0
  e_avg, e = sim_avg.evaluate(h_avg[-1][0]), sim.evaluate(hist[-1][0])
  assert e["accuracy"] == e_avg["accuracy"]
  assert e["loss"] == pytest.approx(e_avg["loss"], rel=1e-5)


def test_alpha_adapts_within_unit_interval_for_sampled_clients():
  sim, p0 = make_sim("apfl", participation=0.5)
  state, _ = run_rounds(sim, p0, 1)
  alpha = np.asarray(state.clients.alpha)
  picked = [c for c in sim.cohort(0).tolist() if c != 1]  # client 1 never has a batch
  others = [c for c in range(sim.num_clients) if c not in picked]
  assert np.all((alpha >= 0) & (alpha <= 1))
  assert np.all(alpha[picked] != 0.5) and np.all(alpha[others] == 0.5)


def _one_batch_data(n=4):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 3, n).astype(np.int32)
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.arange(n, dtype=jnp.int32), jnp.int32(n))


@pytest.mark.parametrize("grad, reuse", [("flbench", False), ("flbench", True), ("logit", False)])
def test_single_batch_step_matches_hand_computation(grad, reuse):
  """One epoch of one full batch, momentum 0: check w, v and alpha."""
  lr, lr_a, alpha = 0.1, 0.05, 0.3
  cfg = APFLConfig(alpha_init=alpha, reuse_global_grad=reuse, alpha_grad=grad)
  prog = apfl_program(MODEL.apply, make_optimizer(lr), cfg, lr_a, epochs=1, batch_size=4,
                      num_slots=4)
  w0 = MODEL.init(jax.random.key(1))
  v0 = MODEL.init(jax.random.key(2))
  data = _one_batch_data()
  carry = prog.init((w0, APFLClient(v0, jnp.float32(alpha))), data, jax.random.key(3))
  (w, client), _ = prog.finish(jax.jit(prog.step)(carry, jnp.int32(0), data))

  @jax.jit
  def by_hand(w0, v0):
    x, y, mask = data.x, data.y, jnp.ones(4, bool)
    ce = lambda p: softmax_cross_entropy(MODEL.apply(p, x), y, mask)
    g_w = jax.grad(ce)(w0)
    w1 = jax.tree.map(lambda p, g: p - lr * g, w0, g_w)
    mixed = lambda v, a: softmax_cross_entropy(
        a * MODEL.apply(v, x) + (1 - a) * MODEL.apply(w1, x), y, mask)
    g_v, g_logit = jax.grad(mixed, argnums=(0, 1))(v0, jnp.float32(alpha))
    v1 = jax.tree.map(lambda p, g: p - lr * g, v0, g_v)
    w_end = jax.tree.map(lambda p, g: p - lr * g, w1, g_w) if reuse else w1
    g_a = sum(jnp.vdot(vv - ww, alpha * gv + (1 - alpha) * gw) for vv, ww, gv, gw in zip(
        jax.tree.leaves(v1), jax.tree.leaves(w_end), jax.tree.leaves(g_v), jax.tree.leaves(g_w)))
    if grad == "logit":  # d/d alpha of the mixed-logit loss at (v0, alpha)
      g_a = g_logit
    return w_end, v1, jnp.clip(alpha - lr_a * (g_a + 0.02 * alpha), 0, 1)
  w_end, v1, expected_alpha = by_hand(w0, v0)
  chex.assert_trees_all_close(w, w_end, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(client.v, v1, rtol=1e-5, atol=1e-6)
  assert float(client.alpha) == pytest.approx(float(expected_alpha), rel=1e-5)
  assert float(client.alpha) != alpha


def test_invalid_config_rejected():
  with pytest.raises(ValueError, match="apfl.alpha_init=1.5"):
    APFLConfig(alpha_init=1.5).validate()
  with pytest.raises(ValueError, match="apfl.alpha_grad='x'"):
    APFLConfig(alpha_grad="x").validate()
