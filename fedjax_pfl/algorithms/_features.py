"""Penultimate features of the flax models, and an extra data pass for programs.

Several baselines need the classifier's input ``h(x)`` (FLUTE's feature
penalty, FLOCO's simplex head, pFedFDA's LDA head). Every model in
:mod:`fedjax_pfl.models` ends in a Dense layer named ``classifier`` (logits =
``h @ kernel + bias``), so the features are captured by intercepting that
submodule's call with ``flax.linen.intercept_methods``; this works on the
model's plain ``apply(params, x)`` closure, with no change to the models.

Some algorithms also need a statistic of the TRAINED model over the client's
own train set (FedDPA's Fisher, pFedFDA's feature statistics), which the
round contract cannot give ``finalize`` (it sees no data). :func:`append_pass`
adds one in-order pass over the client's batches after local training.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fedjax_pfl.core.local import Batch, ClientData, LocalProgram, batch_active, gather_batch
from fedjax_pfl.models.base import HEAD

CLASSIFIER = HEAD


def _is_classifier_call(context) -> bool:
  return context.module.name == CLASSIFIER and context.method_name == "__call__"


def apply_with_head(apply_fn: Callable[..., jax.Array], params, x: jax.Array,
                    head: Callable[[jax.Array], jax.Array] | None = None):
  """Runs ``apply_fn(params, x)`` capturing the classifier's input.

  Args:
    apply_fn: a model's ``(params, x [B, ...]) -> logits [B, K]`` whose last
      layer is a flax submodule named ``classifier``.
    params: the model's params.
    x: ``[B, ...]`` inputs.
    head: optional ``h [B, D] -> logits`` replacing the classifier's output.

  Returns:
    ``(logits [B, K], h [B, D])``.
  """
  captured = []

  def interceptor(next_fun, args, kwargs, context):
    if not _is_classifier_call(context):
      return next_fun(*args, **kwargs)
    captured.append(args[0])
    return head(args[0]) if head is not None else next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    logits = apply_fn(params, x)
  if len(captured) != 1:
    raise ValueError(f"expected one call of a '{CLASSIFIER}' submodule, saw {len(captured)}")
  return logits, captured[0]


def features(apply_fn: Callable[..., jax.Array], params, x: jax.Array) -> jax.Array:
  """``h(x) [B, D]``: the penultimate activations (the classifier's input)."""
  return apply_with_head(apply_fn, params, x)[1]


def append_pass(inner: LocalProgram, acc0: Any,
                batch_fn: Callable[[Any, Any, Batch, jax.Array], Any],
                finish_fn: Callable[[Any, Any, dict], tuple[Any, dict]]) -> LocalProgram:
  """``inner`` followed by one in-order pass over the client's train batches.

  The pass runs ``steps_per_epoch`` extra steps (so ``active_steps`` keeps
  working); batch ``s`` holds slots ``s*B .. s*B+B-1`` in order, and, like
  training, batches with fewer than 2 real examples are skipped (a lone last
  example is left out of the pass). The switch is a ``lax.cond`` on the step
  index, which is never batched over clients, so only one branch runs.

  Args:
    inner: the training program; its ``finish(carry)[0]`` are the params.
    acc0: initial accumulator pytree (e.g. zeros).
    batch_fn: ``(acc, params, batch, s) -> acc`` for pass step ``s``.
    finish_fn: ``(params, acc, metrics) -> (trained, metrics)``.

  Returns:
    A :class:`LocalProgram` whose ``finish`` returns ``finish_fn``'s output.
  """
  train_steps = inner.num_steps
  spe, bsz = inner.steps_per_epoch, inner.batch_size
  order = jnp.arange(spe * bsz, dtype=jnp.int32)

  def init(inputs, data: ClientData, key):
    return inner.init(inputs, data, key), acc0

  def step(carry, t, data: ClientData):
    def train(c):
      return inner.step(c[0], t, data), c[1]

    def one_pass(c):
      s = t - train_steps
      batch = gather_batch(data, order, s, bsz)
      acc = batch_fn(c[1], inner.finish(c[0])[0], batch, s)
      active = batch_active(jnp.sum(batch.mask))
      return c[0], jax.tree.map(lambda n, o: jnp.where(active, n, o), acc, c[1])
    return jax.lax.cond(t < train_steps, train, one_pass, carry)

  def finish(carry):
    params, metrics = inner.finish(carry[0])
    return finish_fn(params, carry[1], metrics)

  return LocalProgram(init, step, finish, train_steps + spe, spe, bsz)


__all__ = ["apply_with_head", "features", "append_pass"]
