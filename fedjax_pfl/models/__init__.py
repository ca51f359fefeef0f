"""Models as pure ``(init, apply)`` pairs over flax parameter pytrees.

Flax stays at this boundary: the rest of the package sees only a params pytree.
"""

from fedjax_pfl.models.base import MODELS, Model, get_model, label_params, scope_mask
from fedjax_pfl.models.cnn import FedAvgCNN
from fedjax_pfl.models.mlp import MLP

__all__ = ["Model", "get_model", "label_params", "scope_mask", "MODELS", "FedAvgCNN", "MLP"]
