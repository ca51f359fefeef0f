"""Critical-parameter ops of FedCAC and FedPURIN (spec §3.1-3.4).

Wu et al., "Bold but Cautious: Unlocking the Potential of Personalized
Federated Learning through Cautiously Aggressive Collaboration", ICCV 2023
(arXiv:2309.11103); Xie, He, Shi, "FedPURIN" (reference: HikariX/FedPURIN).

* scores: FedCAC ``|Δθ ⊙ θ|``; FedPURIN ``|g ⊙ θ|`` or, with the Hessian
  term, ``|−gθ + ½(gθ)²|``;
* per-tensor top-τ mask with the reference code's cutoff: ``k = int(τ·n)``,
  ``thr`` = the k-th largest score (``+inf`` when ``k = 0``); if
  ``thr <= 1e-10`` it becomes the smallest score above ``floor`` (1e-10 in
  FedPURIN, 1e-20 in FedCAC) when one exists; ``m = score >= thr`` (ties kept).
  A tensor whose scores are all ``<= floor`` keeps its small threshold, so
  e.g. an all-zero score tensor is entirely critical (the reference prints
  "Abnormal" and does the same);
* overlap ``O_ij = 1 − ‖m_i − m_j‖₁ / (2 n_i)`` with ``n_i = Σ m_i``;
* threshold ``T_r = O_avg + (r/β)(O_max − O_avg)`` over pairs ``i ≠ j`` and
  collaboration sets ``C_i = {j ≠ i : O_ij >= T_r}``;
* the collaborated mean ``δ_i = mean_{j ∈ C_i ∪ {i}} θ_j``.

Cohort-level ops take stacked ``[C, ...]`` leaves and a ``valid [C]`` mask
(cohort padding never collaborates). Deviations from the reference code:
``n_i = 0`` (an empty mask) divides by 1 instead of 0, and the set test is
evaluated as ``O_ij − O_avg >= (r/β)(O_max − O_avg)`` so that at ``r = β``
the pairs tied with ``O_max`` collaborate regardless of float rounding. As in
the reference formula, when all overlaps are equal (``O_max = O_avg``, e.g. two
clients with equal ``n_i``) every pair collaborates for every ``r``.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST
CUTOFF = 1e-10        # the "<= 1e-10" test on the top-τ threshold
PURIN_FLOOR = 1e-10   # FedPURIN: fallback threshold = min score > 1e-10
CAC_FLOOR = 1e-20     # FedCAC:   fallback threshold = min score > 1e-20


def cac_score(before: jax.Array, after: jax.Array) -> jax.Array:
  """FedCAC score ``|(θ_after − θ_before) ⊙ θ_after|``."""
  return jnp.abs((after - before) * after)


def purin_score(grad: jax.Array, params: jax.Array, hessian: bool = False) -> jax.Array:
  """FedPURIN score ``|g θ|``, or ``|−g θ + ½ (g θ)²|`` with ``hessian``."""
  gv = grad * params
  return jnp.abs(-gv + 0.5 * gv * gv) if hessian else jnp.abs(gv)


def topk_threshold(score: jax.Array, tau: float, floor: float) -> jax.Array:
  """Per-tensor threshold of the top-τ mask with the 1e-10 cutoff (module doc).

  Args:
    score: one tensor's scores (any shape, float).
    tau: the kept fraction; ``k = int(tau * score.size)`` (floor, static).
    floor: the fallback's lower bound (``PURIN_FLOOR`` or ``CAC_FLOOR``).

  Returns:
    ``[]`` float32 threshold; the mask is ``score >= threshold``.
  """
  v = score.reshape(-1).astype(jnp.float32)
  k = int(tau * v.size)
  thr = jax.lax.top_k(v, k)[0][k - 1] if k > 0 else jnp.asarray(jnp.inf, jnp.float32)
  above = v > floor
  smallest = jnp.min(jnp.where(above, v, jnp.inf))
  return jnp.where((thr <= CUTOFF) & jnp.any(above), smallest, thr)


def topk_mask(score: jax.Array, tau: float, floor: float) -> jax.Array:
  """Bool mask ``score >= topk_threshold(score, tau, floor)`` (critical = True)."""
  return score >= topk_threshold(score, tau, floor)


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def overlap_matrix(masks: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Overlap of the cohort's masks.

  Args:
    masks: stacked ``[C, ...]`` bool masks, one per masked tensor.

  Returns:
    ``(O [C, C] float32, n [C] float32)``: ``O_ij = 1 − ‖m_i − m_j‖₁ /
    (2 max(n_i, 1))`` (the diagonal is 1 for non-empty masks) and the critical
    counts ``n_i``. Counts are exact below 2**24 entries.
  """
  gram = sum(jnp.matmul(_flat(m), _flat(m).T, precision=HIGHEST) for m in masks)
  n = jnp.diagonal(gram)
  l1 = n[:, None] + n[None, :] - 2.0 * gram
  return 1.0 - l1 / (2.0 * jnp.maximum(n, 1.0))[:, None], n


def collaboration_sets(overlap: jax.Array, valid: jax.Array, r, beta: float):
  """Threshold and collaboration sets at aggregation number ``r`` (from 1).

  Args:
    overlap: ``[C, C]`` from :func:`overlap_matrix`.
    valid: ``[C]`` bool, False for cohort padding.
    r: ``[]`` aggregation number (traced is fine).
    beta: collaboration horizon ``β > 0``.

  Returns:
    ``(sets [C, C] bool, stats)``: ``sets[i, j]`` is ``j ∈ C_i``; ``stats``
    holds ``threshold``, ``overlap_avg`` and ``overlap_max`` (0 without pairs).
  """
  c = overlap.shape[0]
  pair = valid[:, None] & valid[None, :] & ~jnp.eye(c, dtype=bool)
  num_pairs = jnp.sum(pair)
  has = num_pairs > 0
  o_avg = jnp.sum(jnp.where(pair, overlap, 0.0)) / jnp.maximum(num_pairs, 1)
  o_max = jnp.where(has, jnp.max(jnp.where(pair, overlap, -jnp.inf)), 0.0)
  frac = jnp.asarray(r, jnp.float32) / jnp.float32(beta)
  sets = pair & (overlap - o_avg >= frac * (o_max - o_avg))
  stats = {"threshold": o_avg + frac * (o_max - o_avg), "overlap_avg": o_avg,
           "overlap_max": o_max}
  return sets, stats


def collaborate(sets: jax.Array, stacked: jax.Array) -> jax.Array:
  """``δ_i = (θ_i + Σ_{j ∈ C_i} θ_j) / (|C_i| + 1)`` for stacked ``θ [C, ...]``."""
  a = sets.astype(jnp.float32) + jnp.eye(sets.shape[0], dtype=jnp.float32)
  a = a / jnp.sum(a, axis=1, keepdims=True)
  out = jnp.matmul(a, _flat(stacked), precision=HIGHEST)
  return out.reshape(stacked.shape).astype(stacked.dtype)
