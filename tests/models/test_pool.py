"""Max pooling by explicit window slices: values and gradients bit-equal to
``flax.linen.max_pool`` (``reduce_window``, select-and-scatter gradient), ties
included; and where a plain ``reshape + max`` differs (the claim of issue 16)."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl import config as config_lib
from fedjax_pfl.errors import ConfigError
from fedjax_pfl.models import get_model
from fedjax_pfl.models.pool import resolve_pool, slices_max_pool


def _reshape_max(x):
  """2x2 stride-2 pooling as ``reshape + max`` (autodiff splits tied cotangents)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _vjp(f, x, g):
  out, pull = jax.vjp(f, x)
  return np.asarray(out), np.asarray(pull(g)[0])


def _tied(shape, seed):
  """Post-ReLU values on a coarse grid: many exact zeros and positive ties."""
  x = np.round(np.random.default_rng(seed).standard_normal(shape) * 2) / 2
  return jnp.asarray(np.maximum(x, 0.0), jnp.float32)


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((4, 24, 24, 8), (2, 2), (2, 2), "VALID"),             # FedAvgCNN's pools (reshape path)
    ((3, 14, 14, 5), (3, 3), (2, 2), ((1, 1), (1, 1))),   # ResNet stem (overlapping, padded)
    ((2, 7, 9, 3), (2, 2), (2, 2), "VALID"),               # odd sizes: slices path
    ((2, 8, 8, 3), (3, 3), (1, 1), "SAME"),
    ((2, 6, 6, 2), (2, 3), (1, 2), ((0, 1), (2, 0)))])
def test_slices_pool_bit_equal_to_reduce_window(shape, window, strides, padding):
  x = _tied(shape, seed=sum(shape))
  ref = lambda v: nn.max_pool(v, window, strides, padding)
  g = jax.random.normal(jax.random.key(0), ref(x).shape)
  out_ref, dx_ref = _vjp(ref, x, g)
  out, dx = _vjp(lambda v: slices_max_pool(v, window, strides, padding), x, g)
  np.testing.assert_array_equal(out, out_ref)
  np.testing.assert_array_equal(dx, dx_ref)
  # Under jit too (the fused program is what training runs).
  dx_jit = jax.jit(jax.grad(lambda v: jnp.vdot(slices_max_pool(v, window, strides, padding),
                                               g)))(x)
  np.testing.assert_array_equal(np.asarray(dx_jit), dx_ref)


def test_slices_pool_under_vmap_equals_each_client():
  """Under ``jax.vmap`` over clients (the vmap executions), the gradient of
  each lane equals the unbatched one, bit for bit."""
  xs = jnp.stack([_tied((2, 8, 8, 3), seed=s) for s in (1, 2)])
  gs = jax.random.normal(jax.random.key(3), (2, 2, 4, 4, 3))
  loss = lambda x, g: jnp.vdot(slices_max_pool(x, (2, 2), (2, 2)), g)
  batched = jax.jit(jax.vmap(jax.grad(loss)))(xs, gs)
  for i in range(2):
    np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(jax.grad(loss)(xs[i], gs[i])))
    ref = jax.grad(lambda v: jnp.vdot(nn.max_pool(v, (2, 2), (2, 2)), gs[i]))(xs[i])
    np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(ref))


def test_slices_pool_hand_computed_first_maximum_takes_the_gradient():
  # One 2x2 window [[1, 3], [3, 0]]: the max 3 is tied; row-major first is (0, 1).
  x = jnp.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
  out, dx = _vjp(lambda v: slices_max_pool(v, (2, 2), (2, 2)), x, jnp.full((1, 1, 1, 1), 5.0))
  assert out.item() == 3.0
  np.testing.assert_array_equal(dx[0, :, :, 0], [[0.0, 5.0], [0.0, 0.0]])
  # reshape + max splits it: 2.5 to each tied entry.
  _, dx_split = _vjp(_reshape_max, x, jnp.full((1, 1, 1, 1), 5.0))
  np.testing.assert_array_equal(dx_split[0, :, :, 0], [[0.0, 2.5], [2.5, 0.0]])


def test_reshape_max_after_relu_differs_only_on_positive_ties():
  """Issue 16's claim: after a ReLU, ``reshape + max`` and ``reduce_window``
  differ only on ties at zero, where ReLU's own gradient is zero. True when the
  only ties are at zero; false when a window is tied at a positive value."""
  rng = np.random.default_rng(0)
  z = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
  z[:, :4] = np.minimum(z[:, :4], 0.0)          # whole windows of exact zeros after ReLU
  z[:, 4:, :2] = 0.0                           # pre-activations exactly 0 (ReLU'(0) = 0)
  g = jax.random.normal(jax.random.key(1), (4, 4, 4, 3))
  through_relu = lambda pool: (lambda v: pool(jax.nn.relu(v)))
  _, d_ref = _vjp(through_relu(lambda v: nn.max_pool(v, (2, 2), (2, 2))), jnp.asarray(z), g)
  _, d_reshape = _vjp(through_relu(_reshape_max), jnp.asarray(z), g)
  _, d_slices = _vjp(through_relu(lambda v: slices_max_pool(v, (2, 2), (2, 2))), jnp.asarray(z),
                     g)
  assert np.any(np.asarray(jax.nn.relu(z)) == 0.0)
  np.testing.assert_array_equal(d_reshape, d_ref)   # ties only at zero: equal
  np.testing.assert_array_equal(d_slices, d_ref)
  # A constant image region (e.g. Fashion-MNIST's background) ties a window at
  # relu(bias) > 0: reshape + max then splits the cotangent; slices do not.
  z[:, 4:6, 4:6] = 0.75
  _, d_ref = _vjp(through_relu(lambda v: nn.max_pool(v, (2, 2), (2, 2))), jnp.asarray(z), g)
  _, d_reshape = _vjp(through_relu(_reshape_max), jnp.asarray(z), g)
  _, d_slices = _vjp(through_relu(lambda v: slices_max_pool(v, (2, 2), (2, 2))), jnp.asarray(z),
                     g)
  assert not np.array_equal(d_reshape, d_ref)
  np.testing.assert_array_equal(d_slices, d_ref)


def test_resolve_pool_and_config():
  assert resolve_pool("auto") == ("slices" if jax.default_backend() == "cpu" else "xla")
  assert resolve_pool("xla") == "xla" and resolve_pool("slices") == "slices"
  with pytest.raises(ValueError, match="model.pool='avg'"):
    resolve_pool("avg")
  cfg = config_lib.ExperimentConfig()
  with pytest.raises(ConfigError, match="model.pool"):
    config_lib.validate(dataclasses.replace(cfg, model=config_lib.ModelConfig(pool="avg")))


@pytest.mark.parametrize("name,shape", [("cnn", (28, 28, 1)), ("resnet8", (16, 16, 1))])
def test_models_bit_equal_with_either_pool(name, shape):
  """Same params, logits and gradients bit for bit (the convolution fixed), on
  inputs with a constant zero region (positive ties after the first ReLU)."""
  xla, slices = (get_model(name, shape, 10, conv="im2col", pool=p) for p in ("xla", "slices"))
  params = xla.init(jax.random.key(0))
  chex.assert_trees_all_equal_shapes(params, slices.init(jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (8,) + shape)
  x = x.at[:, :shape[0] // 2].set(0.0)
  y = jnp.arange(8) % 10
  if name == "resnet8":
    mask = jnp.ones(8, bool)
    loss = lambda m: (lambda p: jnp.mean(
        jax.nn.log_softmax(m.apply_train(p, x, mask)[0])[jnp.arange(8), y]))
  else:
    loss = lambda m: (lambda p: jnp.mean(jax.nn.log_softmax(m.apply(p, x))[jnp.arange(8), y]))
  np.testing.assert_array_equal(jax.jit(slices.apply)(params, x), jax.jit(xla.apply)(params, x))
  g_xla, g_slices = (jax.jit(jax.grad(loss(m)))(params) for m in (xla, slices))
  chex.assert_trees_all_equal(g_slices, g_xla)
