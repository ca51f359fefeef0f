"""Tests for fedjax_pfl.ops.threshold (normalization and τ, Eqs. 7-8)."""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl import ops
from tests.ops.common import ATOL, NORMS, RTOL, SHAPES, make_scope, np_masks

SCOPES = ["none", "bools", "arrays", "prefix"]
# Every norm x scope under jit; eager only with element-wise array scopes.
CASES = ([pytest.param(jax.jit, n, s, id=f"jit-{n}-{s}")
          for n in NORMS for s in SCOPES]
         + [pytest.param(lambda f: f, n, "arrays", id=f"eager-{n}-arrays")
            for n in NORMS])


def make_scores(rng, batch=None):
  lead = () if batch is None else (batch,)
  return jax.tree.map(
      lambda s: (rng.normal(size=lead + s) ** 2).astype(np.float32), SHAPES,
      is_leaf=lambda x: isinstance(x, tuple))


def np_scale(s, lo, hi):
  if not hi - lo > 0:
    return np.zeros_like(s)
  return (s - lo) / (hi - lo)


def np_normalize(leaves, masks, norm):
  if norm == "none":
    return [np.asarray(s, np.float32) for s in leaves]
  if norm == "layer":
    return [np_scale(s, s[m].min(), s[m].max()) if m.any() else np.zeros_like(s)
            for s, m in zip(leaves, masks)]
  scored = np.concatenate([s[m] for s, m in zip(leaves, masks)])
  return [np_scale(s, scored.min(), scored.max()) for s in leaves]


def np_threshold(scores, q, norm, scope):
  leaves = [np.asarray(x) for x in jax.tree.leaves(scores)]
  masks = np_masks(scope, scores)
  normed = np_normalize(leaves, masks, norm)
  scored = np.concatenate([s[m] for s, m in zip(normed, masks)])
  return normed, np.quantile(scored, q, method="linear")


@pytest.mark.parametrize("variant,norm,scope_kind", CASES)
def test_normalize_and_quantile_match_numpy(variant, norm, scope_kind):
  rng = np.random.default_rng(0)
  scores, scope = make_scores(rng), make_scope(scope_kind, rng)

  def fn(s, q):  # One function (one compilation) exercising both ops.
    return (ops.normalize_scores(s, norm=norm, scope=scope),
            ops.quantile_threshold(s, q, norm=norm, scope=scope))

  fn = variant(fn)
  masks = np_masks(scope, scores)
  for q in (0.0, 0.13, 0.5, 0.77, 1.0):
    out, tau = fn(scores, jnp.float32(q))
    expected, expected_tau = np_threshold(scores, q, norm, scope)
    assert jax.tree.structure(out) == jax.tree.structure(scores)
    for a, e, m in zip(jax.tree.leaves(out), expected, masks):
      assert a.dtype == jnp.float32 and a.shape == e.shape
      np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)
      if norm != "none" and m.any():
        assert a[m].min() >= 0.0 and a[m].max() <= 1.0
    assert tau.shape == () and tau.dtype == jnp.float32
    np.testing.assert_allclose(tau, expected_tau, rtol=RTOL, atol=ATOL)


def test_quantile_python_float_q_and_endpoints():
  rng = np.random.default_rng(2)
  scores = make_scores(rng)
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(scores)])
  assert ops.quantile_threshold(scores, 0.0) == flat.min()
  assert ops.quantile_threshold(scores, 1.0) == flat.max()
  assert ops.quantile_threshold(scores, 1) == flat.max()
  np.testing.assert_allclose(ops.quantile_threshold(scores, 0.3),
                             np.quantile(flat, 0.3), rtol=RTOL, atol=ATOL)


def test_quantile_with_traced_scope():
  """Scope passed as a jit argument: python bools become traced arrays."""
  rng = np.random.default_rng(3)
  scores = make_scores(rng)
  for kind in ("bools", "arrays"):
    scope = make_scope(kind, rng)
    fn = jax.jit(lambda s, q, sc: ops.quantile_threshold(
        s, q, norm="global", scope=sc))
    _, expected = np_threshold(scores, 0.4, "global", scope)
    np.testing.assert_allclose(fn(scores, 0.4, scope), expected,
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("norm", NORMS)
def test_quantile_vmap_over_clients_and_q(norm):
  rng = np.random.default_rng(4)
  scores = make_scores(rng, batch=3)
  scope = make_scope("arrays", rng)
  qs = jnp.array([0.1, 0.5, 0.95], jnp.float32)
  fn = jax.jit(lambda s, q: ops.quantile_threshold(s, q, norm=norm,
                                                   scope=scope))
  batched = jax.jit(jax.vmap(fn))(scores, qs)
  assert batched.shape == (3,)
  for c in range(3):
    single = jax.tree.map(operator.itemgetter(c), scores)
    np.testing.assert_allclose(batched[c], fn(single, qs[c]),
                               rtol=RTOL, atol=ATOL)
    _, expected = np_threshold(single, float(qs[c]), norm, scope)
    np.testing.assert_allclose(batched[c], expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("norm", ["global", "layer"])
def test_normalize_degenerate_range_is_zero_not_nan(norm):
  scores = {"a": jnp.full((4,), 3.0), "b": jnp.full((2, 2), 3.0),
            "c": jnp.array([1.0, 2.0])}
  scope = {"a": True, "b": True, "c": norm == "layer"}
  out = ops.normalize_scores(scores, norm=norm, scope=scope)
  for x in jax.tree.leaves(out):
    assert not np.any(np.isnan(x))
  np.testing.assert_array_equal(out["a"], 0.0)
  np.testing.assert_array_equal(out["b"], 0.0)
  tau = ops.quantile_threshold(scores, 0.5, norm=norm, scope=scope)
  assert not np.isnan(tau)


def test_layer_norm_single_entry_leaf_and_empty_scope():
  scores = {"w": jnp.array([1.0, 5.0, 3.0]), "b": jnp.array([7.0])}
  out = ops.normalize_scores(scores, norm="layer")
  np.testing.assert_allclose(out["w"], [0.0, 1.0, 0.5])
  np.testing.assert_array_equal(out["b"], [0.0])
  none_scored = {"w": False, "b": np.array([False])}
  tau = ops.quantile_threshold(scores, 0.5, norm="global", scope=none_scored)
  assert np.isposinf(tau)
  out = ops.normalize_scores(scores, norm="global", scope=none_scored)
  assert not any(np.any(np.isnan(x)) for x in jax.tree.leaves(out))


def test_layer_norm_uses_one_quantile_over_all_entries():
  scores = {"a": jnp.array([0.0, 10.0, 5.0]), "b": jnp.array([100.0, 300.0])}
  tau = ops.quantile_threshold(scores, 0.5, norm="layer")
  np.testing.assert_allclose(tau, np.quantile([0.0, 1.0, 0.5, 0.0, 1.0], 0.5))


def test_threshold_and_normalize_consistent():
  rng = np.random.default_rng(5)
  scores, scope = make_scores(rng), make_scope("arrays", rng)
  s, tau = ops.threshold_and_normalize(scores, 0.3, norm="layer", scope=scope)
  ref_s = ops.normalize_scores(scores, norm="layer", scope=scope)
  ref_tau = ops.quantile_threshold(scores, 0.3, norm="layer", scope=scope)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(ref_s)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(tau, ref_tau)


@pytest.mark.parametrize("q", [1.5, -0.1, float("nan"), np.float32(2.0)])
def test_bad_q_raises(q):
  scores = {"a": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"q must be in the range \[0, 1\]"):
    ops.quantile_threshold(scores, q)


def test_non_scalar_q_raises():
  with pytest.raises(ValueError, match="q must be a scalar"):
    ops.quantile_threshold({"a": jnp.ones(3)}, np.array([0.1, 0.2]))


def test_unknown_norm_raises():
  scores = {"a": jnp.ones(3)}
  with pytest.raises(ValueError, match="global"):
    ops.normalize_scores(scores, norm="minmax")
  with pytest.raises(ValueError, match="layer"):
    ops.quantile_threshold(scores, 0.5, norm="minmax")


def test_bad_scope_raises():
  scores = {"a": jnp.ones(3), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match="scope"):
    ops.normalize_scores(scores, norm="global", scope={"a": True})
  with pytest.raises(ValueError, match="boolean"):
    ops.normalize_scores(scores, norm="global",
                         scope={"a": np.ones(3), "b": True})


def _sort_quantile(x, q):
  """Reference: np.quantile's linear method on the float32 values."""
  return np.float32(np.quantile(np.asarray(x, np.float64), q, method="linear"))


@pytest.mark.parametrize("kind", ["signed", "ties", "zeros_and_infs", "large"])
def test_order_statistics_are_exact_for_any_float32(kind):
  # τ comes from a bisection over float32 bit patterns, not a sort: the
  # order statistics must be the exact sorted values, negatives included.
  rng = np.random.default_rng(3)
  if kind == "signed":
    x = rng.normal(size=1001).astype(np.float32) * 1e3
  elif kind == "ties":
    x = rng.integers(-3, 4, size=500).astype(np.float32)
  elif kind == "zeros_and_infs":
    x = np.array([0.0, -0.0, np.inf, -np.inf, 1e-30, -1e-30, 2.5, 0.0], np.float32)
  else:
    x = (rng.normal(size=200_003) ** 2).astype(np.float32)
  tau = jax.jit(ops.quantile_threshold)
  xs = np.sort(x)
  for q in (0.0, 0.25, 0.5, 0.9, 0.999, 1.0):
    got = float(tau({"w": jnp.asarray(x)}, jnp.float32(q)))
    h = q * (x.size - 1)
    lo, hi = int(np.floor(h)), int(np.ceil(h))
    if lo == hi or xs[lo] == xs[hi]:  # an order statistic itself: bit-exact
      assert got == xs[lo] or (np.isnan(got) and np.isnan(xs[lo])), (q, got, xs[lo])
    elif np.all(np.isfinite(xs[[lo, hi]])):
      # h = q(k-1) is float32, as in the sorting version: interpolation to ~1e-5.
      np.testing.assert_allclose(got, _sort_quantile(x, q), rtol=1e-5)
