"""FedOBP parameter decoupling: personalized mask and merge (Eqs. 7-9).

Given a client's locally trained parameters θ_local and the global model
θ_global, FedOBP (Chen et al., arXiv 2604.16574) scores each entry, takes the
q-quantile τ of the (normalized) scores and keeps the entries with s_j > τ
personalized (P = {j ∈ J : s_j > τ}, Eqs. 7-8); all other entries are taken
from the global model (Eq. 9):

  θ_merged = keep_local ⊙ θ_local + (1 − keep_local) ⊙ θ_global.

With q = 1 nothing is personalized, so FedOBP reduces to FedAvg. Everything
is jittable and `jax.vmap`-able over a leading client axis of `local_params`
(and of `q`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fedjax_pfl.ops import importance, threshold
from fedjax_pfl.ops import tree as tree_lib

PyTree = Any


def masked_merge(
    keep_local: PyTree,
    local_params: PyTree,
    global_params: PyTree,
) -> PyTree:
  """Leafwise ``jnp.where(keep_local, local, global)`` (Eq. 9).

  Args:
    keep_local: pytree of bool arrays (True = personalized entry), with the
      structure of `local_params` and leaves broadcastable to its leaves.
    local_params: pytree of arrays θ_local.
    global_params: pytree of arrays θ_global, same structure and shapes.

  Returns:
    Pytree with the structure of `local_params`; entries are bitwise copies of
    θ_local where `keep_local` is True and of θ_global elsewhere.

  Raises:
    ValueError: if the pytree structures differ.
  """
  return jax.tree.map(
      lambda k, l, g: jnp.where(k, l, g), keep_local, local_params,
      global_params)


def keep_local_mask(
    scores: PyTree,
    q: jax.typing.ArrayLike,
    *,
    norm: str = "none",
    scope: PyTree | None = None,
) -> PyTree:
  """Personalized-entry mask P = {j ∈ J : s_j > τ} (Eqs. 7-8).

  s = `normalize_scores(scores)`, τ = `quantile_threshold(scores, q)` and
  keep_local = (s > τ) ∧ scope. Use this directly when the scores are
  precomputed (e.g. smoothed with `ema_scores`).

  Args:
    scores: pytree of float importance scores (e.g. `fedobp_scores`).
    q: scalar quantile level in [0, 1] (may be traced); q = 1 gives an
      all-False mask.
    norm: ``"none"``, ``"global"`` or ``"layer"`` (see `normalize_scores`).
    scope: optional boolean pytree; entries outside it are always False.

  Returns:
    Bool pytree with the structure and leaf shapes of `scores`.

  Raises:
    ValueError: on a Python q outside [0, 1], an unknown `norm`, or a `scope`
      not matching `scores`.
  """
  s, tau = threshold.threshold_and_normalize(scores, q, norm=norm, scope=scope)
  masks = tree_lib.resolve_scope(scope, scores)
  leaves, treedef = jax.tree.flatten(s)
  keep = []
  for x, m in zip(leaves, masks):
    if m is False:
      keep.append(jnp.zeros(x.shape, jnp.bool_))
    elif m is True:
      keep.append(x > tau)
    else:
      keep.append((x > tau) & m)
  return jax.tree.unflatten(treedef, keep)


def fedobp_decouple(
    local_params: PyTree,
    global_params: PyTree,
    q: jax.typing.ArrayLike,
    *,
    norm: str = "none",
    scope: PyTree | None = None,
    score: str = "sq_diff",
) -> tuple[PyTree, PyTree]:
  """Splits parameters into personalized and global parts (Eqs. 7-9, 19).

  scores I = `fedobp_scores` → s = `normalize_scores` → τ =
  `quantile_threshold` → keep_local = (s > τ) ∧ scope (`keep_local_mask`)
  → `masked_merge`.

  Args:
    local_params: pytree of float arrays θ_local.
    global_params: pytree of float arrays θ_global (same structure/shapes).
    q: scalar quantile level in [0, 1] (may be traced); q = 1 keeps nothing
      local (FedAvg), q = 0 keeps all scored entries except the minima.
    norm: ``"none"``, ``"global"`` or ``"layer"`` (see `normalize_scores`).
    scope: optional boolean pytree; entries outside it are never scored and
      always taken from `global_params`.
    score: importance score name, see `importance.SCORE_FNS`.

  Returns:
    ``(merged_params, keep_local)``: merged pytree with the structure and
    dtypes of `local_params`, and a bool pytree of the same shapes.

  Raises:
    ValueError: on a Python q outside [0, 1], an unknown `norm`/`score`, or
      mismatching pytree structures.
  """
  scores = importance.fedobp_scores(local_params, global_params, score=score)
  keep_local = keep_local_mask(scores, q, norm=norm, scope=scope)
  return masked_merge(keep_local, local_params, global_params), keep_local


def personalized_fraction(
    keep_local: PyTree,
    scope: PyTree | None = None,
) -> dict[str, Any]:
  """Share of personalized entries, overall and per top-level layer.

  The fraction is ``#(keep_local ∧ scope) / #scope`` (``#entries`` when
  `scope` is None); a layer with no scored entry reports 0.

  Args:
    keep_local: bool pytree (e.g. from `fedobp_decouple`). Layer names are the
      first key of each leaf's tree path (a leading flax ``'params'`` key is
      skipped), e.g. ``'conv1'``, ``'classifier'``.
    scope: optional boolean pytree as in `fedobp_decouple`.

  Returns:
    ``{'overall': f, 'per_layer': {name: f_name, ...}}`` with float32 scalar
    jax.Arrays. Under `jax.vmap` each is per client.

  Raises:
    ValueError: if `scope` does not match `keep_local`.
  """
  leaves = [jnp.asarray(k, jnp.bool_) for k in jax.tree.leaves(keep_local)]
  masks = tree_lib.resolve_scope(scope, keep_local)
  names = tree_lib.top_level_names(keep_local)
  kept: dict[str, Any] = {}
  total: dict[str, Any] = {}
  for k, m, name in zip(leaves, masks, names):
    kept.setdefault(name, jnp.int32(0))
    total.setdefault(name, jnp.int32(0))
    if m is False:
      continue
    if m is True:
      kept[name] = kept[name] + jnp.sum(k, dtype=jnp.int32)
      total[name] = total[name] + k.size
    else:
      kept[name] = kept[name] + jnp.sum(k & m, dtype=jnp.int32)
      total[name] = total[name] + jnp.sum(m, dtype=jnp.int32)

  def frac(n, d):
    n = jnp.asarray(n, jnp.float32)
    d = jnp.asarray(d, jnp.float32)
    return jnp.where(d > 0, n / jnp.maximum(d, 1.0), 0.0)

  per_layer = {name: frac(kept[name], total[name]) for name in kept}
  overall = frac(sum(kept.values()), sum(total.values()))
  return {"overall": overall, "per_layer": per_layer}
