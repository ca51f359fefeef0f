"""Per-block training FLOPs and cut sizes of a model, computed from its shapes.

A model's *blocks* are its top-level parameter groups in definition order
(FedAvgCNN: ``conv1, conv2, fc1, classifier``; MLP: ``fc1, fc2, classifier``).
:func:`block_costs` traces the model abstractly (``jax.eval_shape``, no
compute) with ``flax.linen.intercept_methods`` to record each block's input
and output shapes for one sample, then counts, per block:

* forward FLOPs = ``sum over kernels (ndim >= 2) of 2 * |kernel| * P``, where
  ``P`` is the number of output positions (``H_out * W_out`` for a conv, 1 for a
  Dense): one multiply and one add per weight use, zero-padding taps included.
  Biases, activations and pooling are not counted (FedAvgCNN on 28x28x1:
  8,534,016 here vs 8,597,002 from XLA's ``cost_analysis``,
  :func:`xla_forward_flops`; XLA skips padding taps, so "SAME" convs on small
  maps count less there: ResNet-8 on 32x32x3, 28.9M here vs 21.9M);
* training FLOPs = 3 x forward (the backward pass computes gradients with
  respect to the activations and to the weights, each about one forward);
* the per-sample size of the block's input: what crosses a cut placed before
  it (the smashed data of split learning), and its parameter count.

:func:`select_cut` picks the largest number of leading blocks whose training
FLOPs are within a fraction of the whole model's (FlexP-SFL, spec §5).
"""

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class BlockCosts(NamedTuple):
  """Per-block costs for one sample (tuples indexed by block, definition order).

  Attributes:
    names: block names.
    forward: forward FLOPs.
    train: forward + backward FLOPs (``3 * forward``).
    params: parameter counts.
    inputs: elements of the block's input activation.
    output: elements of the model's output (logits).
  """
  names: tuple[str, ...]
  forward: tuple[int, ...]
  train: tuple[int, ...]
  params: tuple[int, ...]
  inputs: tuple[int, ...]
  output: int

  def fractions(self) -> np.ndarray:
    """``[L]`` float32: training FLOPs of the first ``k = 1..L`` blocks over
    the total (the last entry is exactly 1)."""
    cum = np.cumsum(np.asarray(self.train, np.float64))
    return (cum / cum[-1]).astype(np.float32)


def _shapes(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree)


def block_costs(apply_fn: Callable, params, input_shape: Sequence[int],
                names: Sequence[str] | None = None) -> BlockCosts:
  """Costs of each block of ``apply_fn(params, x)`` for one input of shape
  ``input_shape`` (no batch axis).

  Args:
    apply_fn: the model's ``(params, x [B, ...]) -> logits``; each block must
      be a top-level flax submodule named like its parameter group.
    params: params or their shapes (only shapes are used).
    input_shape: per-sample input shape, e.g. ``(28, 28, 1)``.
    names: block names in order; default ``params``' top-level keys (pass the
      params exactly as returned by ``model.init`` to keep definition order).

  Raises:
    ValueError: a block was not called exactly once at the top level.
  """
  names = tuple(names or params.keys())
  seen: dict[str, tuple] = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    scope = context.module.scope
    if (context.method_name == "__call__" and scope is not None and len(scope.path) == 1
        and context.module.name in names):
      if context.module.name in seen:
        raise ValueError(f"block {context.module.name!r} is called more than once")
      seen[context.module.name] = (tuple(args[0].shape), tuple(out.shape))
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    logits = jax.eval_shape(apply_fn, _shapes(params), x)
  missing = [n for n in names if n not in seen]
  if missing:
    raise ValueError(f"blocks {missing} were not called as top-level submodules")
  forward, counts, inputs = [], [], []
  for n in names:
    in_shape, out_shape = seen[n]
    positions = int(np.prod(out_shape[1:-1], dtype=np.int64))
    leaves = jax.tree.leaves(_shapes(params[n]))
    forward.append(sum(2 * int(np.prod(a.shape)) * positions for a in leaves if len(a.shape) >= 2))
    counts.append(sum(int(np.prod(a.shape)) for a in leaves))
    inputs.append(int(np.prod(in_shape[1:])))
  return BlockCosts(names, tuple(forward), tuple(3 * f for f in forward), tuple(counts),
                    tuple(inputs), int(np.prod(logits.shape[1:])))


def select_cut(costs: BlockCosts, budget: float) -> int:
  """Largest ``k >= 1`` with ``sum(train[:k]) <= budget * sum(train)``.

  Compared in float32 (as :func:`cut_traced`), so host and traced cuts agree.
  """
  within = costs.fractions() <= np.float32(budget)
  return max(1, int(np.sum(within)))


def cut_traced(costs: BlockCosts, budget: jax.Array) -> jax.Array:
  """:func:`select_cut` for a traced ``budget []``; returns int32 ``[]``."""
  within = jnp.asarray(costs.fractions()) <= budget.astype(jnp.float32)
  return jnp.maximum(jnp.sum(within.astype(jnp.int32)), 1)


def prefix(values: Sequence[int]) -> np.ndarray:
  """``[L + 1]`` float64: ``out[k] = sum(values[:k])``."""
  return np.concatenate([[0.0], np.cumsum(np.asarray(values, np.float64))])


def xla_forward_flops(apply_fn: Callable, params, input_shape: Sequence[int]) -> float:
  """XLA's FLOP count of one forward pass on one sample (a cross-check)."""
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  analysis = jax.jit(apply_fn).lower(params, x).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])


__all__ = ["BlockCosts", "block_costs", "select_cut", "cut_traced", "prefix",
           "xla_forward_flops"]
