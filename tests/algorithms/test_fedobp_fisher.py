"""FedOBP with score="fisher": FedAvg at q = 1, the stored Fisher by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.algorithms.fedobp import FedOBPConfig
from fedjax_pfl.core.local import num_batches
from tests.helpers import make_sim, run_rounds, tiny_data


def _fisher_by_hand(apply_fn, params, x, y):
  """Sum over examples of the squared gradient of log p(y|x), one at a time."""
  def log_prob(p, xi, yi):
    return jax.nn.log_softmax(apply_fn(p, xi[None]))[0, yi]
  total = jax.tree.map(jnp.zeros_like, params)
  for xi, yi in zip(x, y):
    g = jax.grad(log_prob)(params, xi, yi)
    total = jax.tree.map(lambda a, b: a + b * b, total, g)
  return total


def test_quantile_one_equals_fedavg_and_fisher_matches_hand_computation():
  data = tiny_data()
  sim_avg, p0 = make_sim("fedavg")
  sim, _ = make_sim("fedobp", FedOBPConfig(quantile=1.0, score="fisher"))
  _, h_avg = run_rounds(sim_avg, p0, 2)
  state, h = run_rounds(sim, p0, 2)
  for (s_avg, _), (s, m) in zip(h_avg, h):
    chex.assert_trees_all_close(s_avg.server, s.server, rtol=1e-6, atol=1e-7)
    assert m["personalized_fraction"] == 0.0
  i = next(int(c) for c in sim.cohort(1) if data.train_counts[c] >= 5)
  last = jax.tree.map(lambda a: a[i], state.clients.last)
  # The pass uses the batches with >= 2 examples (a lone last example is left out).
  n = int(data.train_counts[i])
  used = min(n, num_batches(n, 4) * 4)
  idx = data.train_idx[i, :used]
  expected = _fisher_by_hand(sim.apply_fn, last,
                             jnp.asarray(data.x[idx]), jnp.asarray(data.y[idx]))
  got = jax.tree.map(lambda a: a[i], state.clients.fisher)
  chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-7)
  assert all(float(jnp.sum(f)) > 0 for f in jax.tree.leaves(got))


def test_merge_keeps_the_entries_above_the_fisher_quantile():
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.5, norm="none", score="fisher"))
  state, history = run_rounds(sim, p0, 2)
  assert 0.0 < history[-1][1]["personalized_fraction"] <= 0.5
  i = int(sim.cohort(1)[0])
  client = jax.tree.map(lambda a: a[i], state.clients)
  merged = sim.algorithm.personalize(state.server, client)
  tau = np.quantile(np.concatenate([np.ravel(f) for f in jax.tree.leaves(client.fisher)]), 0.5)
  for m, s, l, f in zip(*(jax.tree.leaves(t) for t in (merged, state.server, client.last,
                                                         client.fisher))):
    np.testing.assert_array_equal(m, np.where(np.asarray(f) > tau, l, s))
