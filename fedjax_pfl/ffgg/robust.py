"""Robust aggregation for FFGG: the coordinate-wise median over shuffled
buckets (Karimireddy, He, Jaggi, ICLR 2022), as the FFGG authors' Byzantine
notebook (``cm`` with ``bucketing``, bucket size 2) and the weighted mean."""

import functools

import jax
import jax.numpy as jnp

AGGREGATORS = ("mean", "bucketed_median")


@functools.partial(jax.jit, static_argnames=("bucket_size",))
def bucketed_median(values, weights: jax.Array, key: jax.Array, bucket_size: int = 2):
  """Coordinate-wise median over shuffled buckets (Karimireddy et al. 2022).

  Clients with positive weight are shuffled (``key``), grouped into buckets of
  ``bucket_size`` in that order, each bucket is replaced by its weighted mean,
  and the coordinate-wise median over the non-empty buckets is returned
  (mean of the two middle values for an even count). Weight-0 entries (cohort
  padding, absent clients) are ignored.

  Args:
    values: pytree with leaves ``[C, ...]``.
    weights: ``[C]`` non-negative.
    key: shuffle key.
    bucket_size: ``s >= 1`` (1: plain coordinate-wise median).

  Returns:
    Pytree of leaves ``[...]`` (zeros if every weight is 0).
  """
  c = weights.shape[0]
  nb = -(-c // bucket_size)
  pad = nb * bucket_size - c
  u = jnp.where(weights > 0, jax.random.uniform(key, (c,)), 2.0)
  order = jnp.argsort(u)
  wb = jnp.pad(weights[order].astype(jnp.float32), (0, pad)).reshape(nb, bucket_size)
  total = jnp.sum(wb, axis=1)
  valid = total > 0
  count = jnp.sum(valid)
  lo, hi = jnp.maximum((count - 1) // 2, 0), jnp.maximum(count // 2, 0)

  def one(leaf):
    v = jnp.pad(leaf[order], ((0, pad),) + ((0, 0),) * (leaf.ndim - 1))
    v = v.reshape((nb, bucket_size) + leaf.shape[1:])
    w = wb.reshape((nb, bucket_size) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)
    means = jnp.sum(w * v, axis=1) / jnp.maximum(total, 1e-30).reshape(
        (nb,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)
    means = jnp.where(valid.reshape((nb,) + (1,) * (leaf.ndim - 1)), means, jnp.inf)
    srt = jnp.sort(means, axis=0)
    med = 0.5 * (jnp.take(srt, lo, axis=0) + jnp.take(srt, hi, axis=0))
    return jnp.where(count > 0, med, jnp.zeros_like(med))
  return jax.tree.map(one, values)


def aggregate(values, weights, key, aggregator: str, bucket_size: int):
  """``"mean"`` (weighted) or ``"bucketed_median"`` over the leading axis."""
  if aggregator == "mean":
    w = weights / jnp.maximum(jnp.sum(weights), 1e-30)
    return jax.tree.map(lambda v: jnp.tensordot(w.astype(v.dtype), v, axes=(0, 0)), values)
  if aggregator == "bucketed_median":
    return bucketed_median(values, weights, key, bucket_size)
  raise ValueError(f"aggregator={aggregator!r}; allowed: {AGGREGATORS}")


__all__ = ["AGGREGATORS", "aggregate", "bucketed_median"]
