"""model.bn_running_var: PyTorch's running-variance update (Fling) against NumPy and flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.models import get_model
from fedjax_pfl.models.resnet import TorchBatchNorm

X = np.random.default_rng(0).normal(1.5, 2.0, (5, 3, 4, 2)).astype(np.float32)
MASK = np.array([1, 1, 0, 1, 0], bool)


def numpy_bn_step(x, mask, ra_mean, ra_var, m=0.9, eps=1e-5):
  """torch.nn.BatchNorm2d training step (NHWC) on the masked examples."""
  xs = x[mask].reshape(-1, x.shape[-1]).astype(np.float64)
  n = xs.shape[0]
  mu, var = xs.mean(0), xs.var(0)                  # biased: normalizes the batch
  y = (x - mu) / np.sqrt(var + eps)
  return y, m * ra_mean + (1 - m) * mu, m * ra_var + (1 - m) * var * n / (n - 1)


def _apply(module, x, mask):
  v = module.init(jax.random.key(0), jnp.asarray(x), mask=None)
  return module.apply(v, jnp.asarray(x), mask=jnp.asarray(mask)[:, None, None, None],
                      mutable=["batch_stats"]), v


def test_one_running_update_matches_numpy():
  (y, upd), v = _apply(TorchBatchNorm(use_running_average=False), X, MASK)
  assert jax.tree.structure(v["batch_stats"]) == jax.tree.structure(upd["batch_stats"])
  want_y, want_mean, want_var = numpy_bn_step(X, MASK, np.zeros(2), np.ones(2))
  np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), want_mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(upd["batch_stats"]["var"]), want_var, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y)[MASK], want_y[MASK], rtol=1e-4, atol=1e-5)


def test_same_as_flax_except_the_running_variance():
  (y_t, upd_t), v_t = _apply(TorchBatchNorm(use_running_average=False), X, MASK)
  (y_f, upd_f), v_f = _apply(nn.BatchNorm(use_running_average=False, momentum=0.9,
                                          epsilon=1e-5), X, MASK)
  assert jax.tree.map(np.shape, v_t) == jax.tree.map(np.shape, v_f)   # same variables
  np.testing.assert_allclose(np.asarray(y_t), np.asarray(y_f), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(upd_t["batch_stats"]["mean"], upd_f["batch_stats"]["mean"],
                             rtol=1e-6)
  n = MASK.sum() * 3 * 4
  biased = (np.asarray(upd_f["batch_stats"]["var"]) - 0.9) / 0.1
  unbiased = (np.asarray(upd_t["batch_stats"]["var"]) - 0.9) / 0.1
  np.testing.assert_allclose(unbiased, biased * n / (n - 1), rtol=1e-4)
  # Eval mode normalizes with the running statistics.
  v = {"params": v_t["params"], "batch_stats": upd_t["batch_stats"]}
  y = TorchBatchNorm(use_running_average=True).apply(v, jnp.asarray(X))
  st = jax.tree.map(np.asarray, upd_t["batch_stats"])
  np.testing.assert_allclose(np.asarray(y), (X - st["mean"]) / np.sqrt(st["var"] + 1e-5),
                             rtol=1e-5, atol=1e-5)


def test_resnet_option():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 28, 28, 1)), jnp.float32)
  mask = jnp.array([True, True, True, False])
  out = {}
  for mode in ("biased", "unbiased"):
    model = get_model("resnet8", (28, 28, 1), 10, "im2col", mode)
    params = model.init(jax.random.key(0))
    out[mode] = (params, *model.apply_train(params, x, mask))
  (p_b, logits_b, new_b), (p_u, logits_u, new_u) = out["biased"], out["unbiased"]
  assert jax.tree.map(np.shape, p_b) == jax.tree.map(np.shape, p_u)
  np.testing.assert_allclose(np.asarray(logits_b), np.asarray(logits_u), rtol=1e-4, atol=1e-5)
  n = 3 * 14 * 14      # bn1 follows the stride-2 7x7 conv: 14x14 positions per example
  np.testing.assert_allclose((np.asarray(new_u["bn1"]["var"]) - 0.9),
                             (np.asarray(new_b["bn1"]["var"]) - 0.9) * n / (n - 1), rtol=1e-4)
  with pytest.raises(ValueError, match="model.bn_running_var='torch'"):
    get_model("resnet8", (28, 28, 1), 10, "im2col", "torch")
  get_model("cnn", (28, 28, 1), 10, "im2col", "unbiased")   # no BatchNorm: accepted
