"""FedCAC: one aggregation against a NumPy reference, β edges, communication,
degenerate equivalence with fedavg_bn, contract."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.fedcac import FedCACConfig, fedcac
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import ClientContext, ServerContext
from fedjax_pfl.core.local import LocalSpec, make_optimizer
from tests.algorithms.test_critical import ref_mask, ref_overlap
from tests.helpers import make_sim, run_rounds, tiny_data

# A hand model: 'bn/scale' is a BN affine parameter (masked by FedCAC),
# 'bn/mean' a running statistic (never aggregated), 'w' a weight.
STATE = {"bn": {"mean": True, "scale": False}, "w": False}
ZERO = {"bn": {"mean": np.zeros(2, np.float32), "scale": np.zeros(2, np.float32)},
        "w": np.zeros(6, np.float32)}
W = np.array([[4, 3, 2, .5, .1, .2], [3, 4, 2, .1, .5, .2], [.1, .2, 2, 4, 3, .3]], np.float32)
SCALE = np.array([[2, 1], [2, 1], [1, 2]], np.float32)
MEAN = np.array([[10, 11], [20, 21], [30, 31]], np.float32)
WEIGHTS = np.array([1.0, 1.0, 2.0], np.float32)


def hand_spec(state_mask=STATE):
  return LocalSpec(lambda p, x: x, make_optimizer(0.1), 1, 2, 2, None, state_mask, 0.1)


def trained(i):
  return {"bn": {"mean": jnp.asarray(MEAN[i]), "scale": jnp.asarray(SCALE[i])},
          "w": jnp.asarray(W[i])}


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def slot_round(alg, outputs, weights, *, params0=ZERO, rounds_done=0):
  """init -> per client (broadcast, finalize) -> the driver's write of the new
  client states -> aggregate (with its contexts), without training; one jitted
  program per algorithm (``rounds_done`` is traced). Every client is in the
  cohort; a weight of 0 is a client without train data.

  Returns:
    ``(server, clients after aggregate's write-back, per-client metrics,
    aggregate metrics)``.
  """
  return _slot_program(alg)(outputs, jnp.asarray(weights), params0, jnp.int32(rounds_done))


_PROGRAMS = {}


def _slot_program(alg):
  if id(alg) not in _PROGRAMS:
    def run(outputs, weights, params0, rounds_done):
      n = len(outputs)
      server, clients = alg.init(params0, n, key=jax.random.key(0))
      ups, news, metrics = [], [], []
      for i, out in enumerate(outputs):
        client = jax.tree.map(lambda a, i=i: a[i], clients)
        ctx = ClientContext(rounds_done, jnp.int32(i), jax.random.key(i))
        _, extra = alg.broadcast(server, client, ctx=ctx)
        up, new, m = alg.finalize(server, client, out, extra, ctx=ctx)
        ups.append(up), news.append(new), metrics.append(m)
      ids, valid = jnp.arange(n, dtype=jnp.int32), jnp.ones((n,), bool)
      clients = cohort.scatter(clients, ids, stack(news), valid)
      ctx = ServerContext(rounds_done, ids, valid, jax.random.key(n), clients)
      out = alg.aggregate(server, stack(ups), weights, ctx=ctx)
      return out[0], (out[2] if len(out) == 3 else clients), metrics, out[1]
    _PROGRAMS[id(alg)] = (alg, jax.jit(run))
  return _PROGRAMS[id(alg)][1]


def ref_round(xs, masks, weights, r, beta):
  """NumPy FedCAC/FedPURIN server step on flattened masked leaves."""
  o = ref_overlap([m.astype(np.float64) for m in masks])
  c = len(xs)
  off = ~np.eye(c, dtype=bool)
  avg, mx = o[off].mean(), o[off].max()
  thr = avg + r / beta * (mx - avg)
  gbar = sum(w * x for w, x in zip(weights, xs)) / weights.sum()
  merged, sets = [], []
  for i in range(c):
    group = [i] + [j for j in range(c) if j != i and o[i, j] >= thr]
    delta = np.mean([xs[j] for j in group], axis=0)
    merged.append(np.where(masks[i], delta, gbar))
    sets.append(len(group) - 1)
  return np.array(merged), np.array(sets)


ALG = fedcac(FedCACConfig(beta=2.0, downlink_mask_bits=True), spec=hand_spec(), params=ZERO)


@pytest.mark.parametrize("rounds_done", [0, 1, 2])   # r = 1 < beta, r = beta, r > beta
def test_aggregation_matches_reference(rounds_done):
  beta, r = 2.0, rounds_done + 1
  server, clients, metrics, agg = slot_round(ALG, [trained(i) for i in range(3)], WEIGHTS,
                                             rounds_done=rounds_done)
  # Scores |Δθ ⊙ θ| = θ² (θ_before = 0); masks on [scale | w]:
  # m0 = m1 = [1,0 | 1,1,1,0,0,0], m2 = [0,1 | 0,0,1,1,1,0]; O_01 = 1, other
  # pairs 1 - 6/8: O_avg = 1/2, O_max = 1, T_r = 1/2 + r/4.
  masks = [np.concatenate([ref_mask(SCALE[i] ** 2, .5, 1e-20), ref_mask(W[i] ** 2, .5, 1e-20)])
           for i in range(3)]
  xs = [np.concatenate([SCALE[i], W[i]]) for i in range(3)]
  want, sizes = ref_round(xs, masks, WEIGHTS, r, beta)
  got = np.concatenate([np.asarray(clients.next["bn"]["scale"]), np.asarray(clients.next["w"])], 1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert float(agg["threshold"]) == pytest.approx(0.5 + r / 4)
  np.testing.assert_array_equal(np.asarray(clients.next["bn"]["mean"]), MEAN)  # own statistics
  np.testing.assert_array_equal(sizes, [1, 1, 0] if r <= beta else [0, 0, 0])
  assert float(agg["collaborators"]) == pytest.approx(2 / 3 if r <= beta else 0.0)
  assert float(agg["aggregation_round"]) == r
  if r == 1:  # written out: (w0 + w1)/2 on m0, gbar = (w0 + w1 + 2 w2)/4 elsewhere
    gbar = (W[0] + W[1] + 2 * W[2]) / 4
    np.testing.assert_allclose(got[0, 2:], np.where(masks[0][2:], (W[0] + W[1]) / 2, gbar),
                               rtol=1e-6)
  # Communication: uplink = 8 values + 8 mask bits; downlink of the merged row =
  # the full 8 values, or only the 4 non-critical ones without collaborators
  # (+ 8 mask bits with downlink_mask_bits).
  for m in metrics:
    assert float(m["uplink_values"]) == 8 and float(m["uplink_bytes"]) == 4 * 8 + 1
    assert float(m["downlink_bytes"]) == 32 and float(m["critical_fraction"]) == .5
  down = [8, 8, 4] if r <= beta else [4, 4, 4]
  np.testing.assert_array_equal(np.asarray(clients.down_values), down)
  np.testing.assert_array_equal(np.asarray(clients.down_bytes), 4 * np.array(down) + 1)
  # The next round starts from the merged row; evaluation uses the trained model.
  client0 = jax.tree.map(lambda a: a[0], clients)
  start, (_, down0) = ALG.broadcast(server, client0)
  np.testing.assert_allclose(np.asarray(start["w"]), want[0, 2:], rtol=1e-6)
  assert float(down0["downlink_values"]) == down[0]
  chex.assert_trees_all_equal(ALG.personalize(server, client0), trained(0))


def test_tau_zero_merges_to_the_weighted_mean():
  """tau = 0 masks nothing: every row is FedAvg's weighted mean (fedavg_bn)."""
  alg = fedcac(FedCACConfig(tau=0.0), spec=hand_spec(), params=ZERO)
  server, clients, metrics, _ = slot_round(alg, [trained(i) for i in range(3)], WEIGHTS)
  for leaf, values in (("w", W), ("scale", SCALE)):
    table = clients.next[leaf] if leaf == "w" else clients.next["bn"][leaf]
    gbar = (WEIGHTS[:, None] * values).sum(0) / WEIGHTS.sum()
    np.testing.assert_allclose(np.asarray(table), np.stack([gbar] * 3), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(clients.next["bn"]["mean"]), MEAN)
  assert all(float(m["critical_fraction"]) == 0.0 for m in metrics)


@functools.cache
def _run():
  sim, p0 = make_sim("fedcac", data=tiny_data(num_clients=5), participation=1.0, epochs=1)
  return sim, p0, *run_rounds(sim, p0, 2)


def test_contract():
  sim, p0, state, history = _run()
  init = sim.init(p0)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.server, state.server)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.clients, state.clients)
  assert all(np.isfinite(v) for _, m in history for v in m.values())
  assert 0.5 <= history[-1][1]["critical_fraction"] <= 1.0
  assert history[-1][1]["aggregation_round"] == 2.0  # r = round index + 1
  again, hist2 = run_rounds(sim, p0, 2)
  chex.assert_trees_all_equal(state.server, again.server)
  assert history[-1][1] == hist2[-1][1]
  # Rows differ per client (personalized), evaluation is finite.
  w = np.asarray(jax.tree.leaves(state.clients.next)[0])
  assert not np.allclose(w[0], w[2])
  assert np.isfinite(sim.evaluate(state)["accuracy"])


def test_validate():
  with pytest.raises(ValueError, match="fedcac.tau"):
    FedCACConfig(tau=1.5).validate()
  with pytest.raises(ValueError, match="fedcac.beta"):
    FedCACConfig(beta=0.5).validate()
  with pytest.raises(ValueError, match="fedcac.eval_model"):
    FedCACConfig(eval_model="x").validate()
