"""Shared fixtures of the ops tests: a small parameter tree, scopes, NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

RTOL, ATOL = 1e-5, 1e-6
SHAPES = {
    "conv1": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "dense": {"kernel": (5, 3), "bias": (1,)},
    "classifier": {"scale": ()},
}
VARIANTS = [pytest.param(lambda f: f, id="eager"),
            pytest.param(jax.jit, id="jit")]
NORMS = ["none", "global", "layer"]
NP_SCORES = {
    "sq_diff": lambda l, g: (l - g) ** 2,
    "abs_diff_local": lambda l, g: np.abs((l - g) * l),
    "abs_diff": lambda l, g: np.abs(l - g),
}


def make_params(rng, batch=None):
  """Random float32 tree of SHAPES (with a leading ``batch`` axis if given)."""
  lead = () if batch is None else (batch,)
  return jax.tree.map(
      lambda s: rng.normal(size=lead + s).astype(np.float32), SHAPES,
      is_leaf=lambda x: isinstance(x, tuple))


def make_scope(kind, rng):
  """Scopes of every supported form: None, Python bools, arrays, a prefix tree."""
  if kind == "none":
    return None
  if kind == "bools":
    return {"conv1": {"kernel": True, "bias": False},
            "dense": {"kernel": True, "bias": True},
            "classifier": {"scale": False}}
  if kind == "arrays":
    return {"conv1": {"kernel": rng.random((3, 3, 2, 4)) < 0.6, "bias": False},
            "dense": {"kernel": jnp.asarray(rng.random((5, 3)) < 0.5),
                      "bias": np.array([True])},
            "classifier": {"scale": True}}
  if kind == "prefix":
    return {"conv1": True, "dense": False, "classifier": True}
  raise AssertionError(kind)


def np_masks(scope, tree):
  """Expands a scope (any form, prefix trees too) into one NumPy bool array per leaf."""
  leaves = jax.tree.leaves(tree)
  if scope is None:
    return [np.ones(np.shape(x), bool) for x in leaves]
  full = jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), scope, tree)
  masks = jax.tree.structure(tree).flatten_up_to(full)
  return [np.broadcast_to(np.asarray(m, bool), np.shape(x)).copy()
          for m, x in zip(masks, leaves)]


def assert_tree_close(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert np.shape(a) == np.shape(e)
    np.testing.assert_allclose(np.asarray(a), e, rtol=RTOL, atol=ATOL)
