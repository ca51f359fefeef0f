"""Shared skeleton of FedCAC and FedPURIN (critical-parameter collaboration).

Per round (spec §3.3-3.4), with the cohort's uploads at the server:

* client i trains from ``θ_i^new`` (its row of the server's ``next`` table),
  scores the masked tensors, takes per-tensor top-τ masks ``m_i`` and uploads
  its model (FedPURIN: sparsified ``θ_i ⊙ m_i``) plus ``m_i``;
* the server computes the overlaps, the threshold ``T_r`` (``r`` = aggregation
  number from 1), the sets ``C_i``, ``δ_i`` (mean of the uploaded models over
  ``C_i ∪ {i}``; zeros of sparsified models count) and the sample-weighted
  mean ``θ̄`` of the uploaded models; it writes
  ``θ_i^new = m_i ⊙ δ_i + (1 − m_i) ⊙ θ̄`` on masked tensors, and the client's
  own uploaded values on the others (BN running statistics; FedPURIN's BN
  affine parameters), into row i of ``next``.

State: each client's row of the stacked client state holds ``θ_i^new``
(``next``, read by ``broadcast`` and written by ``aggregate`` for the cohort),
its downlink size and its last post-training model (FedPURIN: after
sparsification), which is what "evaluation before aggregation"
(``eval_model="trained"``, Fling's ``test_place=['before_aggregation']``)
evaluates; ``eval_model="next"`` evaluates ``θ_i^new`` instead and
``eval_model="dense"`` the post-training model BEFORE FedPURIN's
sparsification (FedCAC: the same as ``"trained"``). The server
state is empty; the aggregation number ``r`` is the round index + 1 (every
round aggregates), read from the round context.

The method assumes full participation; with ``ρ < 1`` overlaps, sets and
``θ̄`` are computed over the sampled cohort and only sampled rows of ``next``
change. Cohort padding (weight 0) never collaborates; a client with no train
examples (weight 0) is treated like padding.

Communication (Table 3; bytes = 4 per fp32 value + 1 bit per mask element):
uplink = the masked tensors (FedCAC: all values; FedPURIN: the ``n_i``
critical values) + the mask. Downlink of row i (reported in the round that
trains from it): FedCAC sends ``θ_i^new`` densely, only its non-critical part
when ``C_i = ∅`` (the critical part is then the client's own); FedPURIN sends
the non-zeros of ``(1 − m_i) ⊙ θ̄`` plus, when ``C_i ≠ ∅``, the non-zeros of
``m_i ⊙ δ_i``. The mask is not re-sent (the client computed it) unless
``downlink_mask_bits``. Round 0 downloads the whole trainable ``θ^0``.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms._compose import Partition
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram
from fedjax_pfl.models.base import label_params
from fedjax_pfl.ops import critical as ops
from fedjax_pfl.ops.aggregation import weighted_mean
from fedjax_pfl.types import Params

BN_RULES = {r"(^|/)(bn[^/]*|downsample_bn)/": "bn"}  # Fling's 'bn' / 'downsample.1'
EVAL_MODELS = ("trained", "next", "dense")


def leaf_partition(params: Params, state_mask: Any, *, exclude_bn: bool) -> Partition:
  """Selects the leaves that are neither BN running statistics (``state_mask``)
  nor, with ``exclude_bn``, BatchNorm parameters (modules ``bn*`` and
  ``downsample_bn``). Computed once from paths."""
  labels, treedef = jax.tree.flatten(label_params(params, BN_RULES))
  state = ([False] * len(labels) if state_mask is None
           else treedef.flatten_up_to(state_mask))
  flags = tuple(not s and not (exclude_bn and lab == "bn") for lab, s in zip(labels, state))
  return Partition(treedef, flags)


def num_entries(part: Partition, params: Params) -> int:
  """Number of scalar entries of the selected leaves (static)."""
  return int(sum(x.size for x in part.select(params)))


class CriticalClient(NamedTuple):
  """Client state (stacked ``[N, ...]``, sharded over the client axis): the
  model ``next`` the client trains from next, its downlink size (values,
  bytes) and the last post-training model."""
  next: Params
  down_values: jax.Array
  down_bytes: jax.Array
  trained: Params


class CriticalUpload(NamedTuple):
  """What a client sends (FedPURIN: sparsified params) plus its masks; the
  unmasked leaves ride along but are not counted as communication."""
  params: Params
  masks: tuple


def critical_algorithm(*, name: str, local: LocalProgram, masked: Partition,
                       num_trainable: int,
                       score: Callable[[Params, Any], tuple[Params, tuple]],
                       tau: float, beta: float, floor: float, sparse: bool,
                       downlink_mask_bits: bool = False,
                       eval_model: str = "trained") -> Algorithm:
  """Builds the FedCAC / FedPURIN slots (module docstring).

  Args:
    name: algorithm name.
    local: the local program (its output is handed to ``score``).
    masked: the leaves that get masks and are collaborated.
    num_trainable: trainable entries of the model (round-0 downlink).
    score: ``(params before training, local output) -> (trained params,
      tuple of scores of the masked leaves)``.
    tau: top-τ fraction. beta: collaboration horizon. floor: cutoff floor.
    sparse: FedPURIN's sparsified upload and non-zero downlink accounting.
    downlink_mask_bits: also count 1 bit per masked entry on the downlink.
    eval_model: ``"trained"`` (before aggregation; FedPURIN: sparsified),
      ``"next"`` or ``"dense"`` (the trained model BEFORE sparsification;
      equal to ``"trained"`` when ``sparse`` is False).
  """
  tau, beta = float(tau), float(beta)

  def init(params, num_clients, *, key=None):
    del key
    down = jnp.float32(num_trainable)
    client = CriticalClient(params, down, 4.0 * down, params)
    return (), cohort.stack_clients(client, num_clients)

  def broadcast(server, client, *, ctx=None):
    down = {"downlink_values": client.down_values, "downlink_bytes": client.down_bytes}
    return client.next, (client.next, down)

  def finalize(server, client, output, extra, *, ctx=None):
    before, down = extra
    params, scores = score(before, output)
    dense = params
    masks = tuple(ops.topk_mask(s, tau, floor) for s in scores)
    if sparse:
      kept = tuple(jnp.where(m, x, 0.0).astype(x.dtype)
                   for m, x in zip(masks, masked.select(params)))
      params = masked.replace(params, kept)
    total = sum(m.size for m in masks)
    n = sum(jnp.sum(m, dtype=jnp.float32) for m in masks)
    up = n if sparse else jnp.float32(total)
    metrics = {"uplink_values": up, "uplink_bytes": 4.0 * up + total / 8.0,
               "critical_fraction": n / max(total, 1), **down}
    kept_model = dense if eval_model == "dense" else params
    return CriticalUpload(params, masks), client._replace(trained=kept_model), metrics

  def aggregate(server, uploads, weights, *, ctx):
    valid = weights > 0
    r = ctx.round + 1
    overlap, n = ops.overlap_matrix(uploads.masks)
    sets, stats = ops.collaboration_sets(overlap, valid, r, beta)
    xs = masked.select(uploads.params)
    deltas = tuple(ops.collaborate(sets, x) for x in xs)
    gbar = weighted_mean(xs, weights)
    merged = tuple(jnp.where(m, d, g[None]) for m, d, g in zip(uploads.masks, deltas, gbar))
    collaborates = jnp.any(sets, axis=1)
    total = sum(m[0].size for m in uploads.masks)
    if sparse:
      count = lambda b: jnp.sum(b.reshape(b.shape[0], -1), axis=1, dtype=jnp.float32)
      rest = sum(count(~m & (g[None] != 0)) for m, g in zip(uploads.masks, gbar))
      crit = sum(count(m & (d != 0)) for m, d in zip(uploads.masks, deltas))
      down = rest + jnp.where(collaborates, crit, 0.0)
    else:
      down = jnp.where(collaborates, float(total), total - n)
    down_bytes = 4.0 * down + (total / 8.0 if downlink_mask_bits else 0.0)
    rows = cohort.gather(ctx.clients, ctx.client_ids)._replace(
        next=masked.replace(uploads.params, merged), down_values=down, down_bytes=down_bytes)
    w = valid.astype(jnp.float32)
    size = jnp.sum(jnp.sum(sets, axis=1) * w) / jnp.maximum(jnp.sum(w), 1.0)
    metrics = {**stats, "collaborators": size, "aggregation_round": r.astype(jnp.float32)}
    return server, metrics, ctx.write(rows, where=valid)

  def personalize(server, client):
    return client.next if eval_model == "next" else client.trained  # "dense": stored dense

  return Algorithm(name, init, broadcast, local, finalize, aggregate, personalize)
