"""Aggregation over a stacked cohort (leading axis ``C``)."""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedjax_pfl.types import PyTree


def weighted_mean(stacked: PyTree, weights: ArrayLike) -> PyTree:
  """Sample-weighted mean over the leading client axis (FedAvg, McMahan et al.
  2017, Eq. 11 of FedOBP): ``sum_i w_i x_i / sum_i w_i``.

  Args:
    stacked: pytree whose leaves have shape ``[C, ...]``.
    weights: ``[C]`` non-negative weights (0 for cohort padding). If they sum
      to 0 the result is all zeros.

  Returns:
    Pytree of leaves ``[...]`` in the leaves' dtype.
  """
  w = jnp.asarray(weights, jnp.float32)
  total = jnp.maximum(jnp.sum(w), jnp.finfo(jnp.float32).tiny)

  def mean(x):
    wx = jnp.tensordot(w, x.astype(jnp.float32), axes=(0, 0))
    return (wx / total).astype(x.dtype)
  return jax.tree.map(mean, stacked)
