"""Tests for fedjax_pfl.ops.masking (FedOBP decoupling, Eqs. 7-9)."""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl import ops
from tests.ops.common import (
  ATOL,
  NORMS,
  NP_SCORES,
  RTOL,
  SHAPES,
  VARIANTS,
  make_params,
  make_scope,
  np_masks,
)

CASES = ([pytest.param(jax.jit, n, "arrays", id=f"jit-{n}-arrays") for n in NORMS]
         + [pytest.param(jax.jit, "layer", "none", id="jit-layer-none"),
            pytest.param(lambda f: f, "global", "bools", id="eager-global-bools")])
def np_decouple(local, glob, q, norm, scope, score="sq_diff"):
  """NumPy reference of Eqs. 7-9: returns (merged leaves, keep leaves)."""
  ls = [np.asarray(x) for x in jax.tree.leaves(local)]
  gs = [np.asarray(x) for x in jax.tree.leaves(glob)]
  masks = np_masks(scope, local)
  s = [NP_SCORES[score](l, g) for l, g in zip(ls, gs)]

  def scale(x, lo, hi):
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)

  if norm == "global":
    sc = np.concatenate([x[m] for x, m in zip(s, masks)])
    s = [scale(x, sc.min(), sc.max()) for x in s]
  elif norm == "layer":
    s = [scale(x, x[m].min(), x[m].max()) if m.any() else np.zeros_like(x)
         for x, m in zip(s, masks)]
  tau = np.quantile(np.concatenate([x[m] for x, m in zip(s, masks)]), q)
  keep = [(x > tau) & m for x, m in zip(s, masks)]
  merged = [np.where(k, l, g) for k, l, g in zip(keep, ls, gs)]
  return merged, keep, tau


def test_hand_computed_case():
  local = {"a": jnp.array([0.0, 3.0, 1.0]), "b": jnp.array([2.0])}
  glob = {"a": jnp.zeros(3), "b": jnp.zeros(1)}
  merged, keep = ops.fedobp_decouple(local, glob, 0.5)
  # scores [0, 9, 1, 4]; tau = quantile(., 0.5) = 2.5.
  np.testing.assert_allclose(ops.quantile_threshold(
      ops.fedobp_scores(local, glob), 0.5), 2.5)
  np.testing.assert_array_equal(keep["a"], [False, True, False])
  np.testing.assert_array_equal(keep["b"], [True])
  np.testing.assert_array_equal(merged["a"], [0.0, 3.0, 0.0])
  np.testing.assert_array_equal(merged["b"], [2.0])


@pytest.mark.parametrize("variant,norm,scope_kind", CASES)
def test_decouple_matches_numpy(variant, scope_kind, norm):
  rng = np.random.default_rng(0)
  local, glob = make_params(rng), make_params(rng)
  scope = make_scope(scope_kind, rng)
  fn = variant(lambda l, g, q: ops.fedobp_decouple(l, g, q, norm=norm,
                                                   scope=scope))
  for q in (0.25, 0.6):
    merged, keep = fn(local, glob, jnp.float32(q))
    ref_merged, ref_keep, _ = np_decouple(local, glob, q, norm, scope)
    n_keep = sum(int(np.sum(k)) for k in jax.tree.leaves(keep))
    assert n_keep == sum(int(np.sum(k)) for k in ref_keep)
    for k, rk, m, rm in zip(jax.tree.leaves(keep), ref_keep,
                            jax.tree.leaves(merged), ref_merged):
      assert k.dtype == jnp.bool_ and k.shape == rk.shape
      np.testing.assert_array_equal(k, rk)
      np.testing.assert_array_equal(m, rm)


@pytest.mark.parametrize("score", sorted(NP_SCORES))
def test_decouple_scores(score):
  rng = np.random.default_rng(1)
  local, glob = make_params(rng), make_params(rng)
  _, keep = ops.fedobp_decouple(local, glob, 0.5, norm="global", score=score)
  _, ref_keep, _ = np_decouple(local, glob, 0.5, "global", None, score)
  for k, rk in zip(jax.tree.leaves(keep), ref_keep):
    np.testing.assert_array_equal(k, rk)


@pytest.mark.parametrize("variant,norm,scope_kind,q", [
    pytest.param(jax.jit, n, "arrays", jnp.float32(1.0), id=f"jit-{n}")
    for n in NORMS
] + [pytest.param(lambda f: f, "global", "none", 1.0, id="eager-global")])
def test_q_one_is_fedavg_bitwise(variant, norm, scope_kind, q):
  rng = np.random.default_rng(2)
  local, glob = make_params(rng), make_params(rng)
  scope = make_scope(scope_kind, rng)
  fn = variant(lambda l, g, q: ops.fedobp_decouple(l, g, q, norm=norm,
                                                   scope=scope))
  for l in (local, glob):
    merged, keep = fn(l, glob, q)
    assert not any(np.any(k) for k in jax.tree.leaves(keep))
    for m, g in zip(jax.tree.leaves(merged), jax.tree.leaves(glob)):
      assert m.dtype == g.dtype
      np.testing.assert_array_equal(np.asarray(m).view(np.uint32),
                                    np.asarray(g).view(np.uint32))


@pytest.mark.parametrize("norm", NORMS)
def test_q_zero_keeps_all_but_minima(norm):
  rng = np.random.default_rng(3)
  local, glob = make_params(rng), make_params(rng)
  _, keep = ops.fedobp_decouple(local, glob, 0.0, norm=norm)
  s = ops.normalize_scores(ops.fedobp_scores(local, glob), norm=norm)
  s_min = min(float(np.min(x)) for x in jax.tree.leaves(s))
  for k, x in zip(jax.tree.leaves(keep), jax.tree.leaves(s)):
    np.testing.assert_array_equal(k, np.asarray(x) != s_min)
  n_total = sum(np.size(k) for k in jax.tree.leaves(keep))
  n_keep = sum(int(np.sum(k)) for k in jax.tree.leaves(keep))
  assert n_total - n_keep >= 1
  if norm == "none":
    assert n_keep == n_total - 1  # Continuous random scores: unique minimum.


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_local_equals_global_gives_global(norm, q):
  rng = np.random.default_rng(4)
  glob = make_params(rng)
  merged, keep = ops.fedobp_decouple(glob, glob, q, norm=norm)
  assert not any(np.any(k) for k in jax.tree.leaves(keep))
  for m, g in zip(jax.tree.leaves(merged), jax.tree.leaves(glob)):
    assert not np.any(np.isnan(m))
    np.testing.assert_array_equal(m, g)


def test_out_of_scope_entries_are_global():
  rng = np.random.default_rng(5)
  local, glob = make_params(rng), make_params(rng)
  scope = make_scope("arrays", rng)
  merged, keep = ops.fedobp_decouple(local, glob, 0.0, norm="layer",
                                     scope=scope)
  for k, m, g, sm in zip(jax.tree.leaves(keep), jax.tree.leaves(merged),
                         jax.tree.leaves(glob), np_masks(scope, glob)):
    assert not np.any(np.asarray(k) & ~sm)
    np.testing.assert_array_equal(np.asarray(m)[~sm], np.asarray(g)[~sm])


@pytest.mark.parametrize("norm,scope_kind", [("global", "arrays"),
                                              ("layer", "none")])
def test_decouple_vmap_equals_loop(norm, scope_kind):
  rng = np.random.default_rng(6)
  local, glob = make_params(rng, batch=3), make_params(rng)
  scope = make_scope(scope_kind, rng)
  qs = jnp.array([0.2, 0.5, 0.9], jnp.float32)
  fn = jax.jit(lambda l, q: ops.fedobp_decouple(l, glob, q, norm=norm,
                                                scope=scope))
  merged, keep = jax.jit(jax.vmap(fn))(local, qs)
  for c in range(3):
    lc = jax.tree.map(operator.itemgetter(c), local)
    m1, k1 = fn(lc, qs[c])
    for a, b in zip(jax.tree.leaves(keep), jax.tree.leaves(k1)):
      np.testing.assert_array_equal(a[c], b)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(m1)):
      np.testing.assert_array_equal(a[c], b)
    _, ref_keep, _ = np_decouple(lc, glob, float(qs[c]), norm, scope)
    for a, b in zip(jax.tree.leaves(keep), ref_keep):
      np.testing.assert_array_equal(a[c], b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_masked_merge(variant):
  rng = np.random.default_rng(7)
  local, glob = make_params(rng), make_params(rng)
  keep = jax.tree.map(lambda x: rng.random(np.shape(x)) < 0.5, local)
  out = variant(ops.masked_merge)(keep, local, glob)
  for o, k, l, g in zip(*(jax.tree.leaves(t) for t in (out, keep, local, glob))):
    np.testing.assert_array_equal(o, np.where(k, l, g))


@pytest.mark.parametrize("variant", VARIANTS)
def test_personalized_fraction(variant):
  keep = {"params": {
      "conv1": {"kernel": np.array([[True, False], [False, False]]),
                "bias": np.array([True, True])},
      "classifier": {"kernel": np.array([True, False, True]),
                     "bias": np.array(False)}}}
  stats = variant(ops.personalized_fraction)(keep)
  np.testing.assert_allclose(stats["overall"], 5 / 10)
  assert set(stats["per_layer"]) == {"conv1", "classifier"}
  np.testing.assert_allclose(stats["per_layer"]["conv1"], 3 / 6)
  np.testing.assert_allclose(stats["per_layer"]["classifier"], 2 / 4)
  scope = {"params": {"conv1": {"kernel": np.array([[True, True],
                                                    [False, False]]),
                                "bias": False},
                      "classifier": False}}
  stats = variant(lambda k: ops.personalized_fraction(k, scope))(keep)
  np.testing.assert_allclose(stats["overall"], 1 / 2)
  np.testing.assert_allclose(stats["per_layer"]["conv1"], 1 / 2)
  np.testing.assert_allclose(stats["per_layer"]["classifier"], 0.0)


def test_personalized_fraction_vmap():
  rng = np.random.default_rng(8)
  local, glob = make_params(rng, batch=3), make_params(rng)
  qs = jnp.array([0.0, 0.5, 1.0], jnp.float32)

  def fn(l, q):
    _, keep = ops.fedobp_decouple(l, glob, q)
    return ops.personalized_fraction(keep)

  stats = jax.jit(jax.vmap(fn))(local, qs)
  n = sum(int(np.prod(s)) for s in jax.tree.leaves(
      SHAPES, is_leaf=lambda x: isinstance(x, tuple)))
  np.testing.assert_allclose(stats["overall"], [(n - 1) / n, 46 / 93, 0.0],
                             rtol=RTOL, atol=ATOL)
  assert stats["per_layer"]["dense"].shape == (3,)


def test_decouple_bad_inputs():
  params = {"a": jnp.ones(3)}
  with pytest.raises(ValueError, match="q"):
    ops.fedobp_decouple(params, params, 1.5)
  with pytest.raises(ValueError, match="norm"):
    ops.fedobp_decouple(params, params, 0.5, norm="bogus")
  with pytest.raises(ValueError, match="score"):
    ops.fedobp_decouple(params, params, 0.5, score="bogus")


def test_keep_local_mask_matches_decouple_with_precomputed_scores():
  rng = np.random.default_rng(9)
  local, glob = make_params(rng), make_params(rng)
  scope = make_scope("arrays", rng)
  scores = ops.ema_scores(ops.fedobp_scores(local, glob), None, 0.5)
  fn = jax.jit(lambda s, q: ops.keep_local_mask(s, q, norm="global",
                                                scope=scope))
  keep = fn(scores, 0.3)
  _, ref_keep = ops.fedobp_decouple(local, glob, 0.3, norm="global",
                                    scope=scope)
  for a, b in zip(jax.tree.leaves(keep), jax.tree.leaves(ref_keep)):
    np.testing.assert_array_equal(a, b)
  assert not any(np.any(k) for k in jax.tree.leaves(fn(scores, 1.0)))
