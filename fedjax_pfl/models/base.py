"""Model adapter, registry and parameter-group labels."""

import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl.types import Params, PyTree


class Model(NamedTuple):
  """A model as pure functions.

  Attributes:
    name: registry name.
    init: ``key -> params`` (float32 pytree).
    apply: ``(params, x [B, H, W, C]) -> logits [B, K]``.
    input_shape: ``(H, W, C)``.
    num_classes: ``K``.
  """
  name: str
  init: Callable[[jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]
  input_shape: tuple[int, ...]
  num_classes: int


def from_flax(name: str, module, input_shape, num_classes) -> Model:
  def init(key):
    return module.init(key, jnp.zeros((1,) + tuple(input_shape), jnp.float32))["params"]

  def apply(params, x):
    return module.apply({"params": params}, x)
  return Model(name, init, apply, tuple(input_shape), int(num_classes))


def _cnn(input_shape, num_classes):
  from fedjax_pfl.models.cnn import FedAvgCNN
  return from_flax("cnn", FedAvgCNN(num_classes=num_classes), input_shape, num_classes)


def _mlp(input_shape, num_classes):
  from fedjax_pfl.models.mlp import MLP
  return from_flax("mlp", MLP(num_classes=num_classes), input_shape, num_classes)


MODELS = {"cnn": _cnn, "mlp": _mlp}


def get_model(name: str, input_shape, num_classes: int) -> Model:
  """Builds a registered model; ``name="auto"`` picks ``mlp`` for inputs
  smaller than 16x16 (digits) and ``cnn`` (FedAvgCNN) otherwise.

  Raises:
    ValueError: unknown name, or an input too small for the CNN.
  """
  if name == "auto":
    name = "mlp" if min(input_shape[:2]) < 16 else "cnn"
  if name not in MODELS:
    raise ValueError(f"model.name={name!r}; allowed: {['auto', *sorted(MODELS)]}")
  if name == "cnn" and min(input_shape[:2]) < 16:
    raise ValueError(f"model.name='cnn' needs inputs of at least 16x16, got {input_shape}")
  return MODELS[name](tuple(input_shape), num_classes)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def label_params(params: Params, rules: dict[str, str], default: str = "body") -> PyTree:
  """Labels each leaf by the first regex in ``rules`` matching its path
  (``"classifier/kernel"``), else ``default``. Computed once, at build time."""
  def label(path, _):
    p = _path_str(path)
    for pattern, lab in rules.items():
      if re.search(pattern, p):
        return lab
    return default
  return jax.tree_util.tree_map_with_path(label, params)


CLASSIFIER_RULES = {r"^classifier(/|$)": "classifier"}


def scope_mask(params: Params, scope: str) -> PyTree | None:
  """FedOBP scoring scope as a pytree of Python bools: ``"all"`` -> None
  (every entry scored), ``"classifier"`` -> True only under ``classifier``."""
  if scope == "all":
    return None
  if scope == "classifier":
    labels = label_params(params, CLASSIFIER_RULES)
    return jax.tree.map(lambda lab: lab == "classifier", labels)
  raise ValueError(f"fedobp.scope={scope!r}; allowed: ['all', 'classifier']")
