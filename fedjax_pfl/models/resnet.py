"""ResNet-8 / ResNet-10 with BatchNorm, as in Fling's ``fling/model/resnet.py``
(the FedPURIN and FedCAC experiments).

``pre_conv`` 7x7 stride 2 (no bias) -> BN -> ReLU -> maxpool 3x3 s2 (pad 1) ->
one BasicBlock per stage (stage 1 stride 1; later stages stride 2 with a 1x1
conv + BN shortcut) -> global average pool -> ``classifier``. Widths
[64, 128, 256] (ResNet-8) or [64, 128, 256, 512] (ResNet-10). Convs use
Kaiming-normal (fan_out) init, BN scale 1 and bias 0. ``conv`` picks the
convolution (``models.conv``: ``auto`` = im2col on CPU) and ``pool`` the stem's
max pooling (``models.pool``: ``auto`` = explicit window slices on CPU); same
params and function either way. Parameter
counts (trainable): ResNet-8 on 28x28x1 with 10 classes 1,229,002; on 32x32x3
1,235,274; ResNet-10 on 32x32x3 with 100 classes 4,957,092.

BatchNorm follows PyTorch's defaults: momentum 0.1 (flax ``momentum=0.9``),
eps 1e-5. ``bn_running_var`` (:data:`BN_RUNNING_VARS`) picks the batch variance
that enters the running variance: ``"biased"`` (default; flax's
``nn.BatchNorm``) or ``"unbiased"`` (PyTorch's ``nn.BatchNorm2d``, which Fling
runs: ``var_run <- 0.9 var_run + 0.1 var_batch * n / (n - 1)``, :class:`TorchBatchNorm`).
Both normalize the batch with the biased variance. Every BN takes the batch
``mask`` so padded examples never enter the batch statistics.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_pfl.models.base import HEAD
from fedjax_pfl.models.cnn import torch_dense
from fedjax_pfl.models.conv import conv_fn
from fedjax_pfl.models.pool import pool_fn

_kaiming = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
BN_RUNNING_VARS = ("biased", "unbiased")


class TorchBatchNorm(nn.Module):
  """BatchNorm over all but the last axis with PyTorch's running update.

  Follows ``torch.nn.BatchNorm2d`` (training mode): the batch is normalized
  with its biased variance ``v`` (mean of squared deviations over the ``n``
  unmasked positions per channel), and the running statistics are updated as
  ``mean_run <- m mean_run + (1 - m) mu``, ``var_run <- m var_run + (1 - m) v
  n / (n - 1)`` (``v`` itself when ``n <= 1``). Same variables, names and
  initial values as ``flax.linen.BatchNorm`` (params ``scale`` = 1, ``bias`` =
  0; ``batch_stats`` ``mean`` = 0, ``var`` = 1), so the two are interchangeable.

  Attributes:
    use_running_average: eval mode (use the running statistics).
    momentum: flax convention, ``m = 1 - torch_momentum`` (0.9).
    epsilon: added to the variance (1e-5).
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, mask=None):
    """``x [..., C]``; ``mask`` (bool, broadcastable to ``x`` at ``x``'s rank)
    selects the positions that enter the batch statistics."""
    c = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      where = jnp.ones(x.shape, bool) if mask is None else jnp.broadcast_to(mask, x.shape)
      mean = jnp.mean(x, axes, where=where)
      var = jnp.maximum(0.0, jnp.mean(x * x, axes, where=where) - mean * mean)
      n = jnp.sum(where[..., 0], dtype=jnp.float32)
      unbiased = var * jnp.where(n > 1, n / jnp.maximum(n - 1, 1), 1.0)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * unbiased
    mean, var = jnp.expand_dims(mean, axes), jnp.expand_dims(var, axes)
    return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * jnp.expand_dims(scale, axes)) + \
        jnp.expand_dims(bias, axes)


def _bn(name: str, train: bool, mask, running_var: str = "biased"):
  if running_var == "unbiased":
    bn = TorchBatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  else:
    bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  return lambda x: bn(x, mask=None if mask is None else mask[:, None, None, None])


class BasicBlock(nn.Module):
  features: int
  stride: int
  conv: str = "auto"
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x, train: bool, mask):
    make_conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding=k // 2, use_bias=False, kernel_init=_kaiming, name=name,
        conv_general_dilated=conv_fn(self.conv))
    bn = lambda name: _bn(name, train, mask, self.bn_running_var)
    out = nn.relu(bn("bn1")(make_conv(self.features, 3, self.stride, "conv1")(x)))
    out = bn("bn2")(make_conv(self.features, 3, 1, "conv2")(out))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn("downsample_bn")(make_conv(self.features, 1, self.stride, "downsample_conv")(x))
    return nn.relu(out + x)


class ResNet(nn.Module):
  """Input ``[B, H, W, C]``; ``train=True`` uses (masked) batch statistics;
  ``bn_running_var``: ``"biased"`` (flax) or ``"unbiased"`` (PyTorch / Fling)."""
  num_classes: int = 10
  widths: Sequence[int] = (64, 128, 256)
  conv: str = "auto"
  bn_running_var: str = "biased"
  pool: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    x = nn.Conv(self.widths[0], (7, 7), (2, 2), padding=3, use_bias=False,
                kernel_init=_kaiming, name="pre_conv", conv_general_dilated=conv_fn(self.conv))(x)
    x = nn.relu(_bn("bn1", train, mask, self.bn_running_var)(x))
    x = pool_fn(self.pool)(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, w in enumerate(self.widths):
      x = BasicBlock(w, 1 if i == 0 else 2, self.conv, self.bn_running_var,
                     name=f"layer{i + 1}")(x, train, mask)
    x = jnp.mean(x, axis=(-3, -2))
    return torch_dense(self.num_classes, x.shape[-1], HEAD)(x)
