"""FlexP-SFL's switchable design choices (helpers of :mod:`.flexp_sfl`).

The FlexP-SFL paper (Yuan et al., arXiv:2508.10349) was replaced by v2,
"FlexP-SFT: A Flexible Aggregation-Free Framework for On-Device Personalized
Split Federated Fine-Tuning of LLMs" (spec reference-protocols §4): no
client-side aggregation, a layer-flexible alignment without global
synchronization, and (third-party summary) a U-shaped split. Its body is not
available; these helpers implement the project's readings of those choices:
which blocks run on the client under a (U-shaped) cut, the server-side-only
aggregation and a feature-level alignment that needs no global model.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_pfl.core.local import softmax_cross_entropy
from fedjax_pfl.ops.aggregation import weighted_mean


def u_cut(cut, num_blocks: int):
  """U-shaped cut: a server part ``[cut, L - 1)`` needs ``cut <= L - 2``; a
  larger cut puts the whole model on the client (returned as ``L``)."""
  return jnp.where(cut >= num_blocks - 1, num_blocks, cut)


def client_block(cut, j: int, last: int, u_shaped: bool):
  """Whether block ``j`` runs on the client for cut ``cut`` (any shape)."""
  mine = jnp.asarray(j) < cut
  return (mine | (jnp.asarray(j == last) & (cut <= last))) if u_shaped else mine


def server_side_mean(server, params, cuts, weights, names, *, u_shaped: bool):
  """Block-wise weighted mean of the uploads ``params`` (leaves ``[C, ...]``)
  over the clients that ran that block on the SERVER (``cuts [C]``); a block
  no client ran there keeps its value in ``server`` (client-side blocks are
  never averaged)."""
  last = len(names) - 1
  out = {}
  for j, n in enumerate(names):
    w = weights * (~client_block(cuts, j, last, u_shaped)).astype(weights.dtype)
    mean = weighted_mean(params[n], w)
    out[n] = jax.tree.map(lambda m, old, w=w: jnp.where(jnp.sum(w) > 0, m, old), mean, server[n])
  return out


def feature_alignment_loss(spec, names, align_lambda: float):
  """``(params, batch, key, (start, cut)) -> CE + lambda * mean_b mean((h_cut -
  h0_cut)^2)``: ``h_cut`` = the input of block ``cut`` (the smashed data) of the
  trained model, ``h0_cut`` that of the round-start model ``start`` (eval mode,
  no gradient); 0 when ``cut = L``. Block inputs are read with
  ``flax.linen.intercept_methods`` (blocks are top-level submodules, as in
  :mod:`fedjax_pfl.models.flops`)."""
  names = tuple(names)

  def with_inputs(fn):
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      scope = context.module.scope
      if (context.method_name == "__call__" and scope is not None and len(scope.path) == 1
          and context.module.name in names):
        seen[context.module.name] = args[0]
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(interceptor):
      out = fn()
    return out, seen

  def loss(params, batch, key=None, context=()):
    (logits, new), feats = with_inputs(lambda: spec.forward(params, batch))
    value = softmax_cross_entropy(logits, batch.y, batch.mask)
    if align_lambda > 0:
      start, cut = context
      _, ref = with_inputs(lambda: spec.apply(start, batch.x))
      n = jnp.maximum(jnp.sum(batch.mask), 1)
      for j, name in enumerate(names[1:], 1):
        diff = feats[name] - jax.lax.stop_gradient(ref[name])
        per = jnp.mean(jnp.square(diff.reshape(diff.shape[0], -1)), axis=1)
        term = jnp.sum(jnp.where(batch.mask, per, 0.0)) / n
        value = value + align_lambda * jnp.where(cut == j, term, 0.0)
    return value if spec.state_mask is None else (value, new)
  return loss


__all__ = ["client_block", "feature_alignment_loss", "server_side_mean", "u_cut"]
