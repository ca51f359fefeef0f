"""Parameter-importance scores of FedOBP (Chen et al., arXiv 2604.16574).

FedOBP ranks every parameter entry j by an importance score I_j computed from
a client's locally trained parameters θ_local and the global model θ_global it
started from. Eq. (19) of the paper uses the squared drift

  I_j = (θ_local,j − θ_global,j)²,

the January-2025 reference code uses |(θ_local − θ_global) ⊙ θ_local|, and the
paper's Fig. 4 ablation uses the plain gradient-like drift |θ_local − θ_global|.

Scores are elementwise, so every function here is jittable and `jax.vmap`-able
over a leading client axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def _sq_diff(local: jax.Array, glob: jax.Array) -> jax.Array:
  """Eq. (19): I = (θ_local − θ_global)²."""
  return jnp.square(local - glob)


def _abs_diff_local(local: jax.Array, glob: jax.Array) -> jax.Array:
  """Reference-code variant: I = |(θ_local − θ_global) ⊙ θ_local|."""
  return jnp.abs((local - glob) * local)


def _abs_diff(local: jax.Array, glob: jax.Array) -> jax.Array:
  """Fig. 4 "gradient-based" score: I = |θ_local − θ_global|."""
  return jnp.abs(local - glob)


# Registry of leafwise score functions f(local_leaf, global_leaf) -> score_leaf
# (float32 inputs of equal shape, float32 output of the same shape).
SCORE_FNS: dict[str, ScoreFn] = {
    "sq_diff": _sq_diff,
    "abs_diff_local": _abs_diff_local,
    "abs_diff": _abs_diff,
}


def register_score(name: str, fn: ScoreFn, *, overwrite: bool = False) -> None:
  """Adds a leafwise score function to `SCORE_FNS`.

  Args:
    name: key used as ``score=name`` in `fedobp_scores`.
    fn: elementwise function ``(local_leaf, global_leaf) -> score_leaf`` on
      float32 arrays of equal shape; must be jittable.
    overwrite: allow replacing an existing entry.

  Raises:
    ValueError: if `name` is already registered and `overwrite` is False.
  """
  if name in SCORE_FNS and not overwrite:
    raise ValueError(f"score {name!r} is already registered.")
  SCORE_FNS[name] = fn


def _get_score_fn(score: str) -> ScoreFn:
  try:
    return SCORE_FNS[score]
  except (KeyError, TypeError):
    raise ValueError(
        f"Unknown score {score!r}; allowed values: {sorted(SCORE_FNS)}."
    ) from None


def fedobp_scores(
    local_params: PyTree,
    global_params: PyTree,
    *,
    score: str = "sq_diff",
) -> PyTree:
  """Computes the FedOBP importance score of every parameter entry.

  Args:
    local_params: pytree of float arrays θ_local (client-updated parameters).
    global_params: pytree of the same structure and shapes, θ_global.
    score: one of `SCORE_FNS`: ``"sq_diff"`` (default, Eq. 19),
      ``"abs_diff_local"`` (reference code) or ``"abs_diff"`` (Fig. 4).

  Returns:
    A pytree with the structure and leaf shapes of `local_params` holding
    float32 scores I (non-negative for the built-in scores).

  Raises:
    ValueError: if `score` is unknown or the two pytrees differ in structure.
  """
  fn = _get_score_fn(score)

  def leaf(local: jax.typing.ArrayLike, glob: jax.typing.ArrayLike) -> jax.Array:
    local = jnp.asarray(local, jnp.float32)
    glob = jnp.asarray(glob, jnp.float32)
    return jnp.asarray(fn(local, glob), jnp.float32)

  return jax.tree.map(leaf, local_params, global_params)


def ema_scores(
    new_scores: PyTree,
    prev_ema: PyTree | None,
    a: jax.typing.ArrayLike,
) -> PyTree:
  """Exponential moving average of scores across rounds.

  Computes (1 − a)·new + a·prev leafwise (FedOBP reference-code option
  ``alpha``, default 0.5 there). With ``prev_ema=None`` (first round) the new
  scores are returned unchanged.

  Args:
    new_scores: pytree of float arrays (this round's scores).
    prev_ema: pytree of the same structure, or None.
    a: scalar weight of the previous average, in [0, 1] (may be traced).

  Returns:
    Pytree of float32 arrays with the structure of `new_scores`.

  Raises:
    ValueError: if `a` is a Python number outside [0, 1].
  """
  if isinstance(a, (int, float)) and not 0.0 <= a <= 1.0:
    raise ValueError(f"a must be in [0, 1], got {a}.")
  if prev_ema is None:
    return jax.tree.map(lambda s: jnp.asarray(s, jnp.float32), new_scores)
  a = jnp.asarray(a, jnp.float32)
  return jax.tree.map(
      lambda s, p: (1.0 - a) * jnp.asarray(s, jnp.float32)
      + a * jnp.asarray(p, jnp.float32),
      new_scores, prev_ema)
