"""Max pooling with an explicit-window gradient, and the per-backend choice.

``flax.linen.max_pool`` is ``lax.reduce_window(max)``; its gradient is XLA's
``select-and-scatter``, which XLA:CPU lowers to a variadic ``reduce-window``
over the input and four ``s32`` iota index arrays followed by a ``scatter``. In
a profile of FedAvgCNN's batch-32 SGD step on the 2-core development machine
those ops took at least half of the summed op time, and the step took 26% less
CPU time without them (benchmarks/README.md, finding 7).

:func:`slices_max_pool` computes the same function from the ``kh * kw``
strided window slices (as :func:`fedjax_pfl.models.conv.im2col_conv` does for
convolutions): the forward is an elementwise maximum of the slices, and a
``custom_vjp`` sends each output's cotangent to the FIRST slice (window order,
row-major) that attains the maximum, which is exactly what XLA's
``select-and-scatter`` with the ``>=`` selector does. The gradient is therefore
bit-identical to ``reduce_window``'s for every input, ties included (ties at a
positive value do occur: a constant image region, e.g. Fashion-MNIST's
background, gives equal conv outputs, so ``relu(x)`` is tied at ``relu(bias)``
there). A plain ``reshape + max`` is not: its gradient splits a tied
cotangent evenly over the tied entries (tests/models/test_pool.py).
Non-overlapping windows (``window == strides``, no padding) take the slices
with one reshape; the backward is elementwise and a reshape, with no scatter.

``pool="auto"`` (the default of ``model.pool``) uses the slices on the CPU
backend and ``reduce_window`` elsewhere (not measured on accelerators yet);
``"xla"`` and ``"slices"`` force one. NaN inputs: both propagate a NaN maximum
through the forward; gradients at NaN windows are not specified.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

POOL_IMPLS = ("auto", "xla", "slices")


def _pads(shape, window, strides, padding):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(shape, window, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _non_overlapping(x_shape, window, strides, pads) -> bool:
  return (tuple(window) == tuple(strides) and all(p == (0, 0) for p in pads)
          and all(n % w == 0 for n, w in zip(x_shape, window)))


def _window_slices(x: jax.Array, window, strides, pads) -> list[jax.Array]:
  """The ``kh * kw`` strided views ``[B, Ho, Wo, C]`` of ``x [B, H, W, C]``,
  window offsets in row-major order (padding with ``-inf``)."""
  (kh, kw), (sh, sw) = window, strides
  b, h, w, c = x.shape
  if _non_overlapping((h, w), window, strides, pads):
    r = x.reshape(b, h // kh, kh, w // kw, kw, c)
    return [r[:, :, i, :, j, :] for i in range(kh) for j in range(kw)]
  (pt, pb), (pl, pr) = pads
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)
  oh = (xp.shape[1] - kh) // sh + 1
  ow = (xp.shape[2] - kw) // sw + 1
  return [xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _pool(x, window, strides, pads):
  return functools.reduce(jnp.maximum, _window_slices(x, window, strides, pads))


def _pool_fwd(x, window, strides, pads):
  out = _pool(x, window, strides, pads)
  return out, (x, out)


def _pool_bwd(window, strides, pads, res, g):
  x, out = res
  slices, transpose = jax.vjp(lambda v: _window_slices(v, window, strides, pads), x)
  taken = jnp.zeros(out.shape, bool)
  parts = []
  for s in slices:  # first maximum in window order gets the cotangent (select-and-scatter, >=)
    pick = (s == out) & ~taken
    taken = taken | pick
    parts.append(jnp.where(pick, g, jnp.zeros_like(g)))
  (dx,) = transpose(parts)
  return (dx,)


_pool.defvjp(_pool_fwd, _pool_bwd)


def slices_max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
                    padding="VALID") -> jax.Array:
  """Drop-in for ``flax.linen.max_pool`` on ``[B, H, W, C]`` inputs.

  Args:
    x: ``[B, H, W, C]`` float inputs (other ranks fall back to
      ``flax.linen.max_pool``).
    window_shape: ``(kh, kw)``.
    strides: ``(sh, sw)``; default ``(1, 1)``.
    padding: ``"VALID"``, ``"SAME"`` or ``((top, bottom), (left, right))``;
      padded entries are ``-inf`` (never the maximum of a window with a real
      entry).

  Returns:
    ``[B, Ho, Wo, C]``, ``Ho = (H + top + bottom - kh) // sh + 1``; the same
    values as ``flax.linen.max_pool`` and, through the ``custom_vjp``, the
    same gradient bit for bit.
  """
  window = tuple(int(v) for v in window_shape)
  strides = tuple(int(v) for v in (strides or (1,) * len(window)))
  if x.ndim != 4 or len(window) != 2 or len(strides) != 2:
    return nn.max_pool(x, window, strides, padding)
  pads = _pads(x.shape[1:3], window, strides, padding)
  return _pool(x, window, strides, pads)


def resolve_pool(pool: str) -> str:
  """``"auto"`` -> ``"slices"`` on the CPU backend, ``"xla"`` otherwise.

  Raises:
    ValueError: ``pool`` not in ``POOL_IMPLS``.
  """
  if pool not in POOL_IMPLS:
    raise ValueError(f"model.pool={pool!r}; allowed: {list(POOL_IMPLS)}")
  if pool == "auto":
    return "slices" if jax.default_backend() == "cpu" else "xla"
  return pool


def pool_fn(pool: str) -> Callable[..., jax.Array]:
  """The ``max_pool(x, window_shape, strides, padding)`` for ``pool``."""
  return slices_max_pool if resolve_pool(pool) == "slices" else nn.max_pool


__all__ = ["POOL_IMPLS", "slices_max_pool", "resolve_pool", "pool_fn"]
