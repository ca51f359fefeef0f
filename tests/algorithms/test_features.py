"""Penultimate features of the models, and the post-training data pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms import _features
from fedjax_pfl.models import get_model


@pytest.mark.parametrize("name,shape", [("cnn", (16, 16, 1)), ("mlp", (8, 8, 1))])
def test_logits_are_features_times_classifier(name, shape):
  model = get_model(name, shape, 5)
  params = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (3,) + shape)
  h = _features.features(model.apply, params, x)
  assert h.shape == (3, params["classifier"]["kernel"].shape[0])
  expected = np.asarray(h) @ np.asarray(params["classifier"]["kernel"]) + np.asarray(
      params["classifier"]["bias"])
  np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_replaced_head_and_gradients_through_features():
  model = get_model("mlp", (8, 8, 1), 5)
  params = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  logits, h = _features.apply_with_head(model.apply, params, x, head=lambda f: 2.0 * f[:, :5])
  np.testing.assert_allclose(logits, 2.0 * h[:, :5], rtol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(_features.features(model.apply, p, x)))(params)
  assert float(jnp.sum(jnp.abs(grads["classifier"]["kernel"]))) == 0.0
  assert float(jnp.sum(jnp.abs(grads["fc1"]["kernel"]))) > 0.0
