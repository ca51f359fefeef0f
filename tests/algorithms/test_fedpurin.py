"""FedPURIN: sparse aggregation and communication on a hand case, the
last-batch gradient, evaluation of the sparsified model, contract."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.fedpurin import FedPURINConfig, fedpurin, last_batch_grad_program
from fedjax_pfl.core import cohort
from fedjax_pfl.core.local import LocalSpec, make_optimizer, softmax_cross_entropy
from tests.algorithms.test_fedcac import slot_round
from tests.helpers import make_sim, run_rounds, tiny_data, tiny_model

# 'bn1' is a BatchNorm module: excluded from masks and never aggregated.
STATE = {"bn1": {"mean": True, "scale": False}, "w": False}
ZERO = {"bn1": {"mean": np.zeros(2, np.float32), "scale": np.zeros(2, np.float32)},
        "w": np.zeros(6, np.float32)}
W = np.array([[4, 3, 2, .5, .1, .2], [3, 4, 2, .1, .5, .2], [.1, .2, 2, 4, 3, .3]], np.float32)
BN = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
WEIGHTS = np.array([1.0, 1.0, 2.0], np.float32)


def hand_alg(**kw):
  spec = LocalSpec(lambda p, x: x, make_optimizer(0.1), 1, 2, 2, None, STATE, 0.1)
  return fedpurin(FedPURINConfig(grad="delta", **kw), spec=spec, params=ZERO)


def trained(i):
  return {"bn1": {"mean": jnp.asarray(BN[i] * 10), "scale": jnp.asarray(BN[i])},
          "w": jnp.asarray(W[i])}


ALG = hand_alg(beta=100.0)


def test_sparse_aggregation_hand_case():
  """Scores |Δθ ⊙ θ| = θ² (θ_before = 0): masks {0,1,2}, {0,1,2}, {2,3,4}."""
  alg = ALG
  server, clients, metrics, agg = slot_round(alg, [trained(i) for i in range(3)], WEIGHTS,
                                             params0=ZERO)
  # Uploads (sparsified): s0 = [4,3,2,0,0,0], s1 = [3,4,2,0,0,0], s2 = [0,0,2,4,3,0].
  # O_01 = O_10 = 1, other pairs 1 - 4/6 = 1/3: avg 5/9, T_1 = 5/9 + (4/9)/100.
  # C_0 = {1}, C_1 = {0}, C_2 = {}; gbar = (s0 + s1 + 2 s2) / 4 (zeros count).
  gbar = [1.75, 1.75, 2.0, 2.0, 1.5, 0.0]
  want = [[3.5, 3.5, 2.0, 2.0, 1.5, 0.0],     # m0 * (s0 + s1)/2 + (1 - m0) * gbar
          [3.5, 3.5, 2.0, 2.0, 1.5, 0.0],
          [1.75, 1.75, 2.0, 4.0, 3.0, 0.0]]   # m2 * s2 + (1 - m2) * gbar
  np.testing.assert_allclose(np.asarray(clients.next["w"]), want, rtol=1e-6)
  assert float(agg["threshold"]) == pytest.approx(5 / 9 + 4 / 900, rel=1e-6)
  assert float(agg["overlap_avg"]) == pytest.approx(5 / 9, rel=1e-6)
  assert float(agg["collaborators"]) == pytest.approx(2 / 3)
  del gbar
  # BN parameters and statistics: each client's own post-training values.
  np.testing.assert_array_equal(np.asarray(clients.next["bn1"]["scale"]), BN)
  np.testing.assert_array_equal(np.asarray(clients.next["bn1"]["mean"]), BN * 10)
  # Evaluated model: the client's sparsified post-training model (BN untouched).
  np.testing.assert_array_equal(np.asarray(clients.trained["w"][2]), [0, 0, 2, 4, 3, 0])
  client2 = jax.tree.map(lambda a: a[2], clients)
  chex.assert_trees_all_equal(alg.personalize(server, client2), client2.trained)
  # Uplink: 3 values + 6 mask bits = 12.75 bytes. Downlink (next round):
  # client 0 gets gbar's non-zeros at {3,4,5} (2) + delta's at {0,1,2} (3) = 5
  # values; client 2 (no collaborators) only gbar's non-zeros at {0,1,5} = 2.
  for m in metrics:
    assert float(m["uplink_values"]) == 3 and float(m["uplink_bytes"]) == 12.75
    assert float(m["downlink_values"]) == 8  # round 0: the trainable theta^0 (w + bn scale)
  np.testing.assert_array_equal(np.asarray(clients.down_values), [5, 5, 2])
  np.testing.assert_array_equal(np.asarray(clients.down_bytes), [20, 20, 8])


def test_after_beta_keeps_own_critical_entries():
  server, clients, _, agg = slot_round(ALG, [trained(i) for i in range(3)], WEIGHTS, params0=ZERO,
                                 rounds_done=100)                   # r = 101 > beta
  assert float(agg["collaborators"]) == 0.0
  np.testing.assert_allclose(np.asarray(clients.next["w"][0]), [4, 3, 2, 2, 1.5, 0], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(clients.down_values), [2, 2, 2])


def test_last_batch_gradient():
  """One epoch with all examples in one batch: g = ∇CE(θ0) on the client's
  data; client 1 has a single example (no active batch): g = 0."""
  data = tiny_data(num_clients=4)
  dev = cohort.DeviceData(*(jnp.asarray(a) for a in (data.x, data.y, data.train_idx,
                                                    data.train_counts, data.test_idx,
                                                    data.test_counts)))
  model = tiny_model(data.num_classes)
  p0 = model.init(jax.random.key(0))
  spec = LocalSpec(model.apply, make_optimizer(0.1), 1, 64, int(data.train_idx.shape[1]))
  prog = last_batch_grad_program(spec)

  @jax.jit
  def run(i):
    cdata = cohort.client_data(dev, i)
    carry = prog.init(p0, cdata, jax.random.key(3))
    carry = jax.lax.fori_loop(0, prog.num_steps, lambda t, c: prog.step(c, t, cdata), carry)
    (params, grads), _ = prog.finish(carry)
    x, y = dev.x[cdata.idx], dev.y[cdata.idx]
    mask = jnp.arange(cdata.idx.shape[0]) < cdata.count
    want = jax.grad(lambda p: softmax_cross_entropy(model.apply(p, x), y, mask))(p0)
    return params, grads, want

  params, grads, want = run(0)
  assert int(data.train_counts[0]) >= 2
  chex.assert_trees_all_close(grads, want, rtol=1e-5, atol=1e-6)
  assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0
  params, grads, _ = run(1)
  assert int(data.train_counts[1]) == 1
  chex.assert_trees_all_equal(params, p0)
  assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(grads))


@functools.cache
def _run():
  sim, p0 = make_sim("fedpurin", data=tiny_data(num_clients=5), participation=1.0, epochs=1)
  return sim, p0, *run_rounds(sim, p0, 2)


def test_contract_and_sparsified_evaluation():
  sim, p0, state, history = _run()
  init = sim.init(p0)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.server, state.server)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.clients, state.clients)
  assert all(np.isfinite(v) for _, m in history for v in m.values())
  again, hist2 = run_rounds(sim, p0, 2)
  chex.assert_trees_all_equal(state.server, again.server)
  chex.assert_trees_all_equal(state.clients, again.clients)
  assert history[-1][1] == hist2[-1][1]
  m = history[-1][1]
  total = sum(x.size for x in jax.tree.leaves(p0))            # 163, no BN in the MLP
  assert m["uplink_bytes"] == pytest.approx(4 * m["uplink_values"] + total / 8, rel=1e-6)
  assert m["uplink_values"] == pytest.approx(m["critical_fraction"] * total, rel=1e-5)
  assert history[0][1]["downlink_values"] == total
  # The evaluated (stored) models are sparse: the zeros match the masks.
  zeros = np.mean([np.mean(np.asarray(x) == 0) for x in jax.tree.leaves(state.clients.trained)])
  assert 0.2 < zeros < 0.6
  assert np.isfinite(sim.evaluate(state)["accuracy"])


def test_first_round_model_is_fedcacs_trained_model_masked():
  """Round 1 trains the same models in FedPURIN and FedCAC (same init, keys,
  data); FedPURIN's evaluated model keeps FedCAC's values on its mask and is
  exactly 0 elsewhere, about half of each tensor at tau = 0.5."""
  from fedjax_pfl.algorithms.fedcac import FedCACConfig
  purin, p0 = make_sim("fedpurin", FedPURINConfig(tau=0.5), participation=1.0)
  cac, _ = make_sim("fedcac", FedCACConfig(tau=0.5), participation=1.0)
  sparse = run_rounds(purin, p0, 1)[0].clients.trained
  dense = run_rounds(cac, p0, 1)[0].clients.trained
  for a, b in zip(jax.tree.leaves(sparse), jax.tree.leaves(dense)):
    a, b = np.asarray(a), np.asarray(b)
    kept = a != 0
    np.testing.assert_array_equal(a[kept], b[kept])
    assert 0.3 < kept.mean() <= 0.75


def test_validate():
  with pytest.raises(ValueError, match="fedpurin.grad"):
    FedPURINConfig(grad="fisher").validate()
  with pytest.raises(ValueError, match="fedpurin.tau"):
    FedPURINConfig(tau=-0.1).validate()


def test_dense_eval_model_is_the_trained_model_before_sparsification():
  """``eval_model="dense"``: the stored evaluated model is round 1's trained
  model unmasked (FedCAC's, same training), training is unchanged."""
  from fedjax_pfl.algorithms.fedcac import FedCACConfig
  dense_sim, p0 = make_sim("fedpurin", FedPURINConfig(tau=0.5, eval_model="dense"),
                           participation=1.0)
  sparse_sim, _ = make_sim("fedpurin", FedPURINConfig(tau=0.5), participation=1.0)
  cac, _ = make_sim("fedcac", FedCACConfig(tau=0.5), participation=1.0)
  dense = run_rounds(dense_sim, p0, 1)[0]
  sparse = run_rounds(sparse_sim, p0, 1)[0]
  chex.assert_trees_all_equal(dense.clients.trained, run_rounds(cac, p0, 1)[0].clients.trained)
  chex.assert_trees_all_equal(dense.clients.next, sparse.clients.next)
  assert np.mean([np.mean(np.asarray(x) == 0)
                  for x in jax.tree.leaves(dense.clients.trained)]) < 0.05
