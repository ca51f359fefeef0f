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
eps 1e-5. Deviation: flax keeps the biased batch variance in the running
statistics where PyTorch keeps the unbiased one. Every BN takes the batch
``mask`` so padded examples never enter the batch statistics.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fedjax_pfl.models.cnn import torch_dense
from fedjax_pfl.models.conv import conv_fn
from fedjax_pfl.models.pool import pool_fn

_kaiming = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _bn(name: str, train: bool, mask):
  bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
  return lambda x: bn(x, mask=None if mask is None else mask[:, None, None, None])


class BasicBlock(nn.Module):
  features: int
  stride: int
  conv: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool, mask):
    make_conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding=k // 2, use_bias=False, kernel_init=_kaiming, name=name,
        conv_general_dilated=conv_fn(self.conv))
    out = nn.relu(_bn("bn1", train, mask)(make_conv(self.features, 3, self.stride, "conv1")(x)))
    out = _bn("bn2", train, mask)(make_conv(self.features, 3, 1, "conv2")(out))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _bn("downsample_bn", train, mask)(make_conv(self.features, 1, self.stride,
                                                      "downsample_conv")(x))
    return nn.relu(out + x)


class ResNet(nn.Module):
  """Input ``[B, H, W, C]``; ``train=True`` uses (masked) batch statistics."""
  num_classes: int = 10
  widths: Sequence[int] = (64, 128, 256)
  conv: str = "auto"
  pool: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    x = nn.Conv(self.widths[0], (7, 7), (2, 2), padding=3, use_bias=False,
                kernel_init=_kaiming, name="pre_conv", conv_general_dilated=conv_fn(self.conv))(x)
    x = nn.relu(_bn("bn1", train, mask)(x))
    x = pool_fn(self.pool)(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, w in enumerate(self.widths):
      x = BasicBlock(w, 1 if i == 0 else 2, self.conv, name=f"layer{i + 1}")(x, train, mask)
    x = jnp.mean(x, axis=(-3, -2))
    return torch_dense(self.num_classes, x.shape[-1], "classifier")(x)
