"""FedAvgCNN: the 4-layer CNN of FL-bench (``avgcnn``) used by FedOBP.

conv5x5-32 -> ReLU -> maxpool2 -> conv5x5-64 -> ReLU -> maxpool2 -> fc-512 ->
ReLU -> classifier. ``conv`` picks the convolution (``models.conv``: ``auto``
= im2col on CPU, XLA's elsewhere) and ``pool`` the max pooling
(``models.pool``: ``auto`` = explicit window slices on CPU, ``reduce_window``
elsewhere); same params and function either way. 582,026 parameters
on 28x28x1 with 10 classes, 878,538 on 32x32x3. Initialized like PyTorch's
defaults (kaiming-uniform a=sqrt(5): weights and biases U(-1/sqrt(fan_in),
1/sqrt(fan_in))). Layout NHWC.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.models.base import HEAD
from fedjax_pfl.models.conv import conv_fn
from fedjax_pfl.models.pool import pool_fn

_torch_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_dense(features: int, fan_in: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=_torch_kernel, bias_init=_torch_bias(fan_in), name=name)


def torch_conv(features: int, kernel: int, in_ch: int, name: str, conv: str = "auto") -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding="VALID", kernel_init=_torch_kernel,
                 bias_init=_torch_bias(kernel * kernel * in_ch), name=name,
                 conv_general_dilated=conv_fn(conv))


class FedAvgCNN(nn.Module):
  """FL-bench's FedAvgCNN. Input ``[B, H, W, C]``, output logits ``[B, K]``."""
  num_classes: int = 10
  conv: str = "auto"
  pool: str = "auto"

  @nn.compact
  def __call__(self, x):
    in_ch = x.shape[-1]
    max_pool = pool_fn(self.pool)
    x = torch_conv(32, 5, in_ch, "conv1", self.conv)(x)
    x = max_pool(nn.relu(x), (2, 2), (2, 2))
    x = torch_conv(64, 5, 32, "conv2", self.conv)(x)
    x = max_pool(nn.relu(x), (2, 2), (2, 2))
    x = x.reshape(x.shape[:-3] + (-1,))
    x = nn.relu(torch_dense(512, x.shape[-1], "fc1")(x))
    return torch_dense(self.num_classes, 512, HEAD)(x)
