"""im2col convolution: equal to lax.conv_general_dilated (values, gradients),
and the models give the same function with either implementation."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fedjax_pfl import config as config_lib
from fedjax_pfl.errors import ConfigError
from fedjax_pfl.models import get_model
from fedjax_pfl.models.conv import im2col_conv, resolve_conv

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("hw,cin,cout,k,stride,padding", [
    (9, 2, 3, 3, 1, "SAME"), (9, 2, 3, 3, 2, "SAME"), (8, 1, 4, 5, 1, "VALID"),
    (10, 3, 2, 7, 2, ((3, 3), (3, 3))), (5, 4, 6, 1, 2, ((0, 0), (0, 0))),
    (2, 5, 3, 3, 1, ((1, 1), (1, 1))), (7, 2, 2, 3, 3, ((0, 2), (1, 0)))])
def test_im2col_equals_lax_conv_values_and_gradients(hw, cin, cout, k, stride, padding):
  kx, kw = jax.random.split(jax.random.key(hw * 100 + k))
  x = jax.random.normal(kx, (3, hw, hw, cin))
  w = jax.random.normal(kw, (k, k, cin, cout))
  ref = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding,
                                              dimension_numbers=NHWC))
  ours = jax.jit(lambda x, w: im2col_conv(x, w, (stride, stride), padding,
                                          dimension_numbers=lax.conv_dimension_numbers(
                                              x.shape, w.shape, NHWC)))
  chex.assert_trees_all_close(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
  loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w))))
  chex.assert_trees_all_close(jax.jit(jax.grad(loss(ours), (0, 1)))(x, w),
                              jax.jit(jax.grad(loss(ref), (0, 1)))(x, w), rtol=1e-4, atol=1e-4)


def test_im2col_hand_computed():
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  w = jnp.ones((2, 2, 1, 1))
  out = im2col_conv(x, w, (1, 1), "VALID")
  np.testing.assert_array_equal(np.asarray(out)[0, :, :, 0],
                                [[0 + 1 + 3 + 4, 1 + 2 + 4 + 5], [3 + 4 + 6 + 7, 4 + 5 + 7 + 8]])


def test_im2col_falls_back_for_dilation_and_groups():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
  args = dict(dimension_numbers=NHWC, feature_group_count=2, rhs_dilation=(2, 2))
  chex.assert_trees_all_close(im2col_conv(x, w, (1, 1), "SAME", **args),
                              lax.conv_general_dilated(x, w, (1, 1), "SAME", **args))


def test_resolve_conv():
  assert resolve_conv("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")
  assert resolve_conv("xla") == "xla"
  with pytest.raises(ValueError, match="model.conv='fft'"):
    resolve_conv("fft")
  cfg = config_lib.ExperimentConfig()
  with pytest.raises(ConfigError, match="model.conv"):
    config_lib.validate(dataclasses.replace(cfg, model=config_lib.ModelConfig(conv="fft")))


@pytest.mark.parametrize("name,shape", [("cnn", (28, 28, 1)), ("resnet8", (16, 16, 1))])
def test_models_same_function_with_either_convolution(name, shape):
  xla, im2col = (get_model(name, shape, 10, conv=c) for c in ("xla", "im2col"))
  params = xla.init(jax.random.key(0))
  chex.assert_trees_all_equal_shapes(params, im2col.init(jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (8,) + shape)
  chex.assert_trees_all_close(jax.jit(im2col.apply)(params, x), jax.jit(xla.apply)(params, x),
                              rtol=1e-4, atol=1e-4)
  if name == "resnet8":   # train mode: batch statistics and updated running stats
    mask = jnp.ones(8, bool)
    chex.assert_trees_all_close(jax.jit(im2col.apply_train)(params, x, mask),
                                jax.jit(xla.apply_train)(params, x, mask), rtol=1e-4, atol=1e-4)
    return
  loss = lambda m: (lambda p: jnp.sum(m.apply(p, x) ** 2))
  g_xla, g_im2col = (jax.jit(jax.grad(loss(m)))(params) for m in (xla, im2col))
  for a, b in zip(jax.tree.leaves(g_im2col), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(b))))
