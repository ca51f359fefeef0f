"""Critical-parameter ops (FedCAC / FedPURIN) against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.ops import critical as ops

SETS = jax.jit(ops.collaboration_sets, static_argnums=(3,))


def ref_mask(score, tau, floor):
  """The reference code's per-tensor loop, transcribed to NumPy."""
  v = score.reshape(-1)
  k = int(tau * v.size)
  thr = np.sort(v)[::-1][k - 1] if k > 0 else np.inf
  if thr <= 1e-10:
    above = v[v > floor]
    if above.size:
      thr = np.sort(above)[0]
  return score >= thr


def ref_overlap(masks):
  """Fling's ``get_customized_global_models`` overlap loop (flattened masks)."""
  c = len(masks)
  o = np.zeros((c, c))
  for i in range(c):
    for j in range(c):
      o[i, j] = 1 - np.abs(masks[i] - masks[j]).sum() / (masks[i].sum() * 2.0)
  return o


MASK_CASES = {
    # name: (scores, tau, floor, expected count)
    "ties_kept": (np.array([3, 2, 2, 2, 1, 0], np.float32), 0.5, ops.PURIN_FLOOR, 4),
    "floor_k": (np.arange(9, dtype=np.float32) + 1, 0.5, ops.PURIN_FLOOR, 4),   # int(4.5) = 4
    "cutoff_purin": (np.array([5, 1e-12, 0, 0, 0, 0, 2e-11, 3], np.float32), 0.5,
                     ops.PURIN_FLOOR, 2),
    "cutoff_cac": (np.array([5, 1e-12, 0, 0, 0, 0, 2e-11, 3], np.float32), 0.5,
                   ops.CAC_FLOOR, 4),
    "all_zero_keeps_all": (np.zeros(6, np.float32), 0.5, ops.PURIN_FLOOR, 6),
    "k_zero_keeps_none": (np.array([7.0], np.float32), 0.5, ops.PURIN_FLOOR, 0),
    "tau_one": (np.array([[1, 2], [3, 4]], np.float32), 1.0, ops.CAC_FLOOR, 4),
}


@pytest.mark.parametrize("name", sorted(MASK_CASES))
@pytest.mark.parametrize("jit", [False, True])
def test_topk_mask_exact_counts(name, jit):
  score, tau, floor, count = MASK_CASES[name]
  fn = (lambda s: ops.topk_mask(s, tau, floor))
  got = np.asarray((jax.jit(fn) if jit else fn)(jnp.asarray(score)))
  assert got.shape == score.shape and got.dtype == bool
  assert int(got.sum()) == count
  np.testing.assert_array_equal(got, ref_mask(score, tau, floor))


def test_topk_mask_random_tensors_match_reference():
  rng = np.random.default_rng(0)
  for shape in [(3, 3, 2, 5), (17,)]:
    for tau in (0.2, 0.7):
      score = np.abs(rng.normal(size=shape)).astype(np.float32)
      score[rng.random(shape) < 0.3] = 0.0       # ReLU-dead entries: exact zeros
      got = np.asarray(ops.topk_mask(jnp.asarray(score), tau, ops.PURIN_FLOOR))
      np.testing.assert_array_equal(got, ref_mask(score, tau, ops.PURIN_FLOOR))


def test_scores():
  g = jnp.array([0.5, -2.0, 0.0])
  v = jnp.array([2.0, 1.0, 3.0])
  np.testing.assert_allclose(ops.purin_score(g, v), [1.0, 2.0, 0.0])
  # |-gv + (gv)^2 / 2|: gv = 1 -> 0.5; gv = -2 -> 4.
  np.testing.assert_allclose(ops.purin_score(g, v, hessian=True), [0.5, 4.0, 0.0])
  np.testing.assert_allclose(ops.cac_score(jnp.array([1.0, 1.0]), jnp.array([3.0, -1.0])),
                             [6.0, 2.0])


def test_overlap_matrix_matches_reference():
  rng = np.random.default_rng(1)
  a = rng.random((5, 3, 4)) < 0.5
  b = rng.random((5, 7)) < 0.3
  o, n = ops.overlap_matrix((jnp.asarray(a), jnp.asarray(b)))
  flat = [np.concatenate([a[i].ravel(), b[i].ravel()]).astype(np.float64) for i in range(5)]
  np.testing.assert_allclose(np.asarray(o), ref_overlap(flat), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(n), [f.sum() for f in flat])
  assert not np.allclose(np.asarray(o), np.asarray(o).T)  # asymmetric when the n_i differ


def test_threshold_matches_reference():
  rng = np.random.default_rng(2)
  masks = rng.random((6, 40)) < 0.5
  o, _ = ops.overlap_matrix((jnp.asarray(masks),))
  ref = ref_overlap([m.astype(np.float64) for m in masks])
  off = ~np.eye(6, dtype=bool)
  avg, mx = ref[off].mean(), ref[off].max()
  for r, beta in [(1, 100.0), (30, 100.0), (99, 100.0)]:
    sets, stats = SETS(o, jnp.ones(6, bool), r, beta)
    thr = avg + r / beta * (mx - avg)
    assert float(stats["threshold"]) == pytest.approx(thr, rel=1e-6)
    assert float(stats["overlap_avg"]) == pytest.approx(avg, rel=1e-6)
    assert float(stats["overlap_max"]) == pytest.approx(mx, rel=1e-6)
    np.testing.assert_array_equal(np.asarray(sets), off & (ref >= thr))


def _three_clients():
  m = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], bool)
  return ops.overlap_matrix((jnp.asarray(m),))[0]  # O01 = O10 = 1, all others 0


def test_collaboration_set_edges():
  o = _three_clients()
  valid = jnp.ones(3, bool)
  pair01 = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
  sets, stats = SETS(o, valid, 1, 2.0)        # T = 1/3 + 1/2 * 2/3
  assert float(stats["threshold"]) == pytest.approx(2 / 3)
  np.testing.assert_array_equal(np.asarray(sets), pair01)
  sets, stats = SETS(o, valid, 2, 2.0)        # r = beta: T = O_max, ties in
  np.testing.assert_array_equal(np.asarray(sets), pair01)
  assert float(stats["threshold"]) == pytest.approx(1.0)
  sets, _ = SETS(o, valid, 3, 2.0)            # r > beta: nobody
  assert not np.asarray(sets).any()
  # Padding never collaborates (client 1 here); with one valid client there are
  # no pairs. O_02 = O_20 = 0 = O_avg = O_max, so 0 and 2 collaborate.
  sets, stats = SETS(o, jnp.array([True, False, True]), 1, 100.0)
  np.testing.assert_array_equal(np.asarray(sets), [[0, 0, 1], [0, 0, 0], [1, 0, 0]])
  sets, stats = SETS(o, jnp.array([True, False, False]), 1, 100.0)
  assert not np.asarray(sets).any() and float(stats["overlap_max"]) == 0.0
  # O_max == O_avg (clients 0, 1 only): the formula keeps them together for any r.
  sets, _ = SETS(o, jnp.array([True, True, False]), 500, 100.0)
  np.testing.assert_array_equal(np.asarray(sets), pair01)


def test_collaborate_hand_case():
  sets = jnp.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], bool)
  x = jnp.array([[3.0, 0.0], [6.0, 3.0], [0.0, 9.0]])
  want = [[3.0, 4.0], [6.0, 3.0], [1.5, 4.5]]
  np.testing.assert_allclose(np.asarray(ops.collaborate(sets, x)), want, rtol=1e-6)
  assert ops.collaborate(sets, x.reshape(3, 2, 1)).shape == (3, 2, 1)
