"""Model adapter, registry and parameter-group labels."""

import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl.models.conv import resolve_conv
from fedjax_pfl.models.pool import resolve_pool
from fedjax_pfl.types import Params, PyTree


class Model(NamedTuple):
  """A model as pure functions.

  Models with BatchNorm keep their running statistics INSIDE the params
  pytree, beside the BN scale and bias (``bn1: {scale, bias, mean, var}``),
  as non-trainable leaves marked by ``state_mask``. The train-mode forward
  returns the updated statistics; the local SGD program writes them back.

  Attributes:
    name: registry name.
    init: ``key -> params`` (float32 pytree).
    apply: ``(params, x [B, H, W, C]) -> logits [B, K]`` (eval mode: running
      statistics).
    input_shape: ``(H, W, C)``.
    num_classes: ``K``.
    apply_train: for models with state, ``(params, x, mask [B]) -> (logits,
      params with updated statistics)`` (batch statistics over the ``mask``-ed
      examples only); None for stateless models.
    state_mask: bool pytree, True on state leaves (BN running statistics);
      None for stateless models.
  """
  name: str
  init: Callable[[jax.Array], Params]
  apply: Callable[[Params, jax.Array], jax.Array]
  input_shape: tuple[int, ...]
  num_classes: int
  apply_train: Callable[..., tuple[jax.Array, Params]] | None = None
  state_mask: PyTree | None = None


def from_flax(name: str, module, input_shape, num_classes) -> Model:
  def init(key):
    return module.init(key, jnp.zeros((1,) + tuple(input_shape), jnp.float32))["params"]

  def apply(params, x):
    return module.apply({"params": params}, x)
  return Model(name, init, apply, tuple(input_shape), int(num_classes))


def _merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if k in out and isinstance(v, dict) else v
  return out


def _split(merged: dict, state_paths: dict) -> tuple[dict, dict]:
  """Splits merged variables into (params, batch_stats) using ``state_paths``
  (a nested dict shaped like the batch_stats collection)."""
  params, stats = {}, {}
  for k, v in merged.items():
    if k in state_paths and isinstance(state_paths[k], dict):
      p, s = _split(v, state_paths[k])
      if p:
        params[k] = p
      stats[k] = s
    elif k in state_paths:
      stats[k] = v
    else:
      params[k] = v
  return params, stats


def from_flax_stateful(name: str, module, input_shape, num_classes) -> Model:
  """Adapter for flax modules with a ``batch_stats`` collection whose
  ``__call__(x, train, mask)`` takes the training flag and the batch mask."""
  dummy = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  shapes = jax.eval_shape(lambda k: module.init(k, dummy), jax.random.key(0))
  state_paths = jax.tree.map(lambda _: True, shapes["batch_stats"])

  def init(key):
    v = module.init(key, dummy)
    return _merge(v["params"], v["batch_stats"])

  def apply(params, x):
    p, s = _split(params, state_paths)
    return module.apply({"params": p, "batch_stats": s}, x, train=False)

  def apply_train(params, x, mask):
    p, s = _split(params, state_paths)
    logits, updates = module.apply({"params": p, "batch_stats": s}, x, train=True,
                                   mask=mask, mutable=["batch_stats"])
    return logits, _merge(p, updates["batch_stats"])

  template = _merge(jax.tree.map(lambda _: False, shapes["params"]), state_paths)
  return Model(name, init, apply, tuple(input_shape), int(num_classes), apply_train, template)


def _cnn(input_shape, num_classes, conv, bn_running_var, pool):
  del bn_running_var  # no BatchNorm
  from fedjax_pfl.models.cnn import FedAvgCNN
  return from_flax("cnn", FedAvgCNN(num_classes=num_classes, conv=conv, pool=pool), input_shape,
                   num_classes)


def _mlp(input_shape, num_classes, conv, bn_running_var, pool):
  del conv, bn_running_var, pool
  from fedjax_pfl.models.mlp import MLP
  return from_flax("mlp", MLP(num_classes=num_classes), input_shape, num_classes)


def _resnet(widths, name):
  def build(input_shape, num_classes, conv, bn_running_var, pool):
    from fedjax_pfl.models.resnet import ResNet
    net = ResNet(num_classes=num_classes, widths=widths, conv=conv, pool=pool,
                 bn_running_var=bn_running_var)
    return from_flax_stateful(name, net, input_shape, num_classes)
  return build


MODELS = {"cnn": _cnn, "mlp": _mlp, "resnet8": _resnet((64, 128, 256), "resnet8"),
          "resnet10": _resnet((64, 128, 256, 512), "resnet10")}


def resolve_model_name(name: str, input_shape) -> str:
  """The model ``name="auto"`` stands for: ``mlp`` for inputs smaller than
  16x16 (digits), ``cnn`` (FedAvgCNN) otherwise; other names unchanged.

  Args:
    name: ``model.name``.
    input_shape: ``(H, W, C)`` of one example.
  """
  if name == "auto":
    return "mlp" if min(input_shape[:2]) < 16 else "cnn"
  return name


def get_model(name: str, input_shape, num_classes: int, conv: str = "auto",
              bn_running_var: str = "biased", pool: str = "auto") -> Model:
  """Builds a registered model (``cnn``, ``mlp``, ``resnet8``, ``resnet10``);
  ``name="auto"`` picks ``mlp`` for inputs smaller than 16x16 (digits) and
  ``cnn`` (FedAvgCNN) otherwise. ``conv`` (``auto`` | ``xla`` | ``im2col``)
  picks how convolutions run (:mod:`fedjax_pfl.models.conv`) and ``pool``
  (``auto`` | ``xla`` | ``slices``) how max pooling and its gradient run
  (:mod:`fedjax_pfl.models.pool`); the params and the function are the same.
  ``bn_running_var`` (``biased`` | ``unbiased``): the batch variance in
  BatchNorm's running update, flax's or PyTorch's
  (:mod:`fedjax_pfl.models.resnet`); no effect on models without BatchNorm.

  Raises:
    ValueError: unknown name, ``conv``, ``pool`` or ``bn_running_var``, or an
      input too small for the CNN.
  """
  from fedjax_pfl.models.resnet import BN_RUNNING_VARS
  if bn_running_var not in BN_RUNNING_VARS:
    raise ValueError(f"model.bn_running_var={bn_running_var!r}; allowed: {list(BN_RUNNING_VARS)}")
  conv = resolve_conv(conv)
  pool = resolve_pool(pool)
  name = resolve_model_name(name, input_shape)
  if name not in MODELS:
    raise ValueError(f"model.name={name!r}; allowed: {['auto', *sorted(MODELS)]}")
  if name != "mlp" and min(input_shape[:2]) < 16:
    raise ValueError(f"model.name={name!r} needs inputs of at least 16x16, got {input_shape}")
  return MODELS[name](tuple(input_shape), num_classes, conv, bn_running_var, pool)


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


HEAD = "classifier"  # the name of every model's final linear layer (the personal head)
HEAD_REGEX = rf"^{HEAD}(/|$)"  # path rule selecting the head's parameters
CLASSIFIER_RULES = {HEAD_REGEX: HEAD}


def scope_mask(params: Params, scope: str) -> PyTree | None:
  """FedOBP scoring scope as a pytree of Python bools: ``"all"`` -> None
  (every entry scored), ``"classifier"`` -> True only under ``classifier``."""
  if scope == "all":
    return None
  if scope == HEAD:
    labels = label_params(params, CLASSIFIER_RULES)
    return jax.tree.map(lambda lab: lab == HEAD, labels)
  raise ValueError(f"fedobp.scope={scope!r}; allowed: ['all', 'classifier']")
