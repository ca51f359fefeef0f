"""Tests for fedjax_pfl.ops.importance (FedOBP scores, Eq. 19)."""

import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl import ops
from fedjax_pfl.ops import importance
from tests.ops.common import NP_SCORES, VARIANTS, assert_tree_close, make_params


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("score", sorted(NP_SCORES))
def test_scores_match_numpy(variant, score):
  rng = np.random.default_rng(0)
  local, glob = make_params(rng), make_params(rng)
  fn = variant(lambda l, g: ops.fedobp_scores(l, g, score=score))
  out = fn(local, glob)
  expected = jax.tree.map(NP_SCORES[score], local, glob)
  assert_tree_close(out, expected)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out))


def test_default_score_is_sq_diff():
  rng = np.random.default_rng(1)
  local, glob = make_params(rng), make_params(rng)
  assert_tree_close(ops.fedobp_scores(local, glob),
                    jax.tree.map(NP_SCORES["sq_diff"], local, glob))


def test_scores_cast_to_float32():
  local = {"a": jnp.array([1.0, 2.0], jnp.bfloat16)}
  glob = {"a": jnp.zeros(2, jnp.bfloat16)}
  out = ops.fedobp_scores(local, glob)
  assert out["a"].dtype == jnp.float32
  np.testing.assert_allclose(out["a"], [1.0, 4.0])


@pytest.mark.parametrize("score", sorted(NP_SCORES))
def test_scores_vmap_equals_loop(score):
  rng = np.random.default_rng(2)
  local, glob = make_params(rng, batch=3), make_params(rng)
  fn = lambda l: ops.fedobp_scores(l, glob, score=score)
  batched = jax.vmap(fn)(local)
  for c in range(3):
    single = fn(jax.tree.map(operator.itemgetter(c), local))
    assert_tree_close(jax.tree.map(operator.itemgetter(c), batched),
                      jax.tree.map(np.asarray, single))


def test_unknown_score_raises():
  params = {"a": jnp.ones(2)}
  with pytest.raises(ValueError, match="sq_diff"):
    ops.fedobp_scores(params, params, score="fisher_typo")


def test_structure_mismatch_raises():
  with pytest.raises(ValueError):
    ops.fedobp_scores({"a": jnp.ones(2)}, {"b": jnp.ones(2)})


def test_register_score(monkeypatch):
  monkeypatch.setattr(importance, "SCORE_FNS", dict(importance.SCORE_FNS))
  ops_fn = lambda l, g: jnp.abs(l) + 0.0 * g
  importance.register_score("abs_local", ops_fn)
  out = importance.fedobp_scores({"a": jnp.array([-2.0])},
                                 {"a": jnp.array([5.0])}, score="abs_local")
  np.testing.assert_allclose(out["a"], [2.0])
  with pytest.raises(ValueError, match="already registered"):
    importance.register_score("abs_local", ops_fn)
  importance.register_score("abs_local", ops_fn, overwrite=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_ema_scores(variant):
  rng = np.random.default_rng(3)
  new, prev = make_params(rng), make_params(rng)
  out = variant(ops.ema_scores)(new, prev, 0.25)
  assert_tree_close(out, jax.tree.map(lambda n, p: 0.75 * n + 0.25 * p,
                                      new, prev))


def test_ema_scores_first_round_and_validation():
  new = {"a": np.array([1.0, 2.0], np.float32)}
  assert_tree_close(ops.ema_scores(new, None, 0.5), new)
  with pytest.raises(ValueError, match="a must be in"):
    ops.ema_scores(new, new, 1.5)
