"""A small MLP for small inputs (the embedded 8x8 digits dataset)."""

from typing import Sequence

import flax.linen as nn

from fedjax_pfl.models.base import HEAD
from fedjax_pfl.models.cnn import torch_dense


class MLP(nn.Module):
  """Flatten -> Dense(h) -> ReLU ... -> ``classifier``. Input ``[B, H, W, C]``."""
  num_classes: int = 10
  hidden: Sequence[int] = (128, 128)

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[:-3] + (-1,))
    for i, h in enumerate(self.hidden):
      x = nn.relu(torch_dense(h, x.shape[-1], f"fc{i + 1}")(x))
    return torch_dense(self.num_classes, x.shape[-1], HEAD)(x)
