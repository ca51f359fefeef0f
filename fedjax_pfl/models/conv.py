"""Convolution as an explicit im2col product, and the per-backend choice.

XLA:CPU runs some convolutions far below its matmul rate: measured on the
2-core development machine (batch 50, forward + backward), a 3x3 conv on a
2x2x256 map took 164 ms through ``lax.conv_general_dilated`` and 15 ms as
im2col + matmul; under ``jax.vmap`` over models (grouped convolutions) the
ResNet-8 gradient of 10 clients went from 10.8 s to 1.1 s, and inside
``lax.scan`` the backward convolutions lose their fast path (benchmarks/
README.md, finding 1). :func:`im2col_conv` builds the patches with pads and
strided slices (in two stages: column taps, then row taps) and contracts them
with one ``dot``, so neither the forward nor the backward pass contains a
convolution op.

``conv="auto"`` (the default of ``model.conv``) uses im2col on the CPU
backend and XLA's convolution elsewhere (cuDNN on GPU); ``"xla"`` and
``"im2col"`` force one. Both give the same function up to float32 rounding
(tested against ``lax.conv_general_dilated``, values and gradients).
"""

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "im2col")
_NHWC = ("NHWC", "HWIO", "NHWC")


def im2col_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None,
                preferred_element_type=None):
  """Drop-in for ``lax.conv_general_dilated`` (2-D, NHWC / HWIO) as im2col.

  Args:
    lhs: inputs ``[B, H, W, C_in]``.
    rhs: kernel ``[kh, kw, C_in, C_out]``.
    window_strides: ``(sh, sw)``.
    padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
    lhs_dilation, rhs_dilation, feature_group_count: only the trivial values
      (``None`` / all ones / 1) take the im2col path; anything else, other
      ranks or other layouts fall back to ``lax.conv_general_dilated``.
    dimension_numbers: must describe NHWC / HWIO / NHWC (flax's layout).
    precision, preferred_element_type: passed to ``dot``.

  Returns:
    ``[B, H_out, W_out, C_out]``, ``H_out = (H + top + bottom - kh) // sh + 1``.
  """
  def fallback():
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type)

  trivial = lambda d: d is None or all(int(v) == 1 for v in d)
  if (lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1
      or not trivial(lhs_dilation) or not trivial(rhs_dilation)):
    return fallback()
  if dimension_numbers is not None:
    want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != want:
      return fallback()
  kh, kw, cin, cout = rhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  (pt, pb), (pl, pr) = padding
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  oh = (x.shape[1] - kh) // sh + 1
  ow = (x.shape[2] - kw) // sw + 1
  # Two stages, kw + kh slices instead of kh * kw: the column taps side by side
  # ([B, H_pad, W_out, kw * C_in]), then the row taps of that ([B, H_out, W_out,
  # kh * kw * C_in], channel order (i, j, c) = the HWIO kernel's). XLA:CPU
  # materializes each slice before a concatenate, and the gradient sums one
  # padded copy per slice: FedAvgCNN's step took 15% less CPU time than with
  # the kh * kw slices of one stage (benchmarks/README.md, finding 7).
  cat = lambda parts: parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
  xw = cat([x[:, :, j:j + sw * (ow - 1) + 1:sw, :] for j in range(kw)])
  patches = cat([xw[:, i:i + sh * (oh - 1) + 1:sh] for i in range(kh)])
  return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision,
                 preferred_element_type=preferred_element_type)


def resolve_conv(conv: str) -> str:
  """``"auto"`` -> ``"im2col"`` on the CPU backend, ``"xla"`` otherwise.

  Raises:
    ValueError: ``conv`` not in ``CONV_IMPLS``.
  """
  if conv not in CONV_IMPLS:
    raise ValueError(f"model.conv={conv!r}; allowed: {list(CONV_IMPLS)}")
  if conv == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "xla"
  return conv


def conv_fn(conv: str) -> Callable | None:
  """The ``conv_general_dilated`` to give ``flax.linen.Conv`` (None = XLA's)."""
  return im2col_conv if resolve_conv(conv) == "im2col" else None
