"""Evaluation of every client, plain and after fine-tuning (pure functions).

A client is evaluated with the model ``personalize(server, client)`` (or
``personalize_with_data`` on its train data, :func:`personalized`; or, after
fine-tuning, the model it trained from that for a few epochs), applied to its
own test examples in padded batches; per-client sums (correct predictions,
summed cross-entropy) become pooled and client-mean figures on the host.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm, ClientContext
from fedjax_pfl.core.local import ClientData, LocalProgram
from fedjax_pfl.types import Metrics


def batch_sums(apply_fn: Callable[..., jax.Array], batch_size: int, params,
               cdata: ClientData, b) -> jax.Array:
  """``[2]`` float32 (correct predictions, summed cross-entropy) of test batch
  ``b`` (examples ``b*B .. b*B + B - 1`` of ``cdata``; padding masked out)."""
  pos = b * batch_size + jnp.arange(batch_size)
  mask = pos < cdata.count
  examples = cdata.idx[jnp.minimum(pos, cdata.idx.shape[0] - 1)]
  logits = apply_fn(params, cdata.x[examples])
  labels = cdata.y[examples]
  correct = jnp.sum(mask & (jnp.argmax(logits, -1) == labels))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.stack([correct.astype(jnp.float32), jnp.sum(jnp.where(mask, ce, 0.0))])


def client_sums(batch_fn: Callable[..., jax.Array], batch_size: int, prepare, shared, client,
                cdata: ClientData) -> jax.Array:
  """``[2]`` sums over one client's test batches of ``batch_size`` examples,
  evaluated with ``prepare(shared, client)`` (traceable). Only the
  ``ceil(count / batch_size)`` batches that hold real examples run (a
  ``fori_loop``; vmapped over clients it runs to the longest client's count,
  the others' extra batches being fully masked)."""
  params = prepare(shared, client)
  out = jax.eval_shape(lambda: batch_fn(params, cdata, 0))
  return jax.lax.fori_loop(0, (cdata.count + batch_size - 1) // batch_size,
                           lambda b, acc: acc + batch_fn(params, cdata, b),
                           jnp.zeros(out.shape, out.dtype))


def summarize_eval(correct: np.ndarray, loss_sum: np.ndarray, counts: np.ndarray) -> Metrics:
  """Pooled and client-mean accuracy and loss from per-client sums (host numpy).

  Args:
    correct: ``[N]`` correct predictions per client.
    loss_sum: ``[N]`` summed cross-entropy (nats) per client.
    counts: ``[N]`` test examples per client.

  Returns:
    ``accuracy`` (pooled, sample-weighted), ``client_mean_accuracy``
    (unweighted over clients with test data), ``loss``, ``client_mean_loss``
    and ``client_accuracy`` (``[N]`` list, None for a client without test data).
  """
  counts = np.asarray(counts, np.float64)
  has = counts > 0
  per_client = np.where(has, correct / np.maximum(counts, 1), np.nan)
  return {
      "accuracy": float(correct.sum() / max(counts.sum(), 1)),
      "client_mean_accuracy": float(np.nanmean(per_client[has])) if has.any() else float("nan"),
      "loss": float(loss_sum.sum() / max(counts.sum(), 1)),
      "client_mean_loss": (float(np.mean(loss_sum[has] / counts[has])) if has.any()
                           else float("nan")),
      "client_accuracy": [None if not h else float(a) for a, h in zip(per_client, has)],
  }


def personalized(alg: Algorithm, server, client, train_data: ClientData, cid, round_idx,
                 key: jax.Array):
  """The model client ``cid`` is evaluated with: ``personalize_with_data``
  (context: ``round_idx``, ``cid``, ``fold_in(key, cid)``) when the algorithm
  sets it, else ``personalize`` (traceable)."""
  if alg.personalize_with_data is None:
    return alg.personalize(server, client)
  ctx = ClientContext(jnp.asarray(round_idx, jnp.int32), jnp.asarray(cid, jnp.int32),
                      jax.random.fold_in(key, cid))
  return alg.personalize_with_data(server, client, train_data, ctx=ctx)


def finetune_task(alg: Algorithm, program: LocalProgram) -> cohort.ClientTask:
  """Each client trains its personalized model with ``program`` (FL-bench's
  "after fine-tuning"); shared = ``(server, key, round)``; the output is the
  tuned params. The client's key is ``fold_in(key, client id)`` (the same key
  is the context key of ``personalize_with_data``)."""
  def prologue(shared, client, cdata, cid):
    server, key, round_idx = shared
    start = personalized(alg, server, client, cdata, cid, round_idx, key)
    return program.init(start, cdata, jax.random.fold_in(key, cid))

  def epilogue(shared, client, state):
    return program.finish(state)[0]
  return cohort.ClientTask(prologue, program.step, epilogue, program.num_steps,
                           program.active_steps, program.step_schedule)


def own_params(shared: Any, client):
  """``prepare`` for fine-tuned models: the client's stacked row is its model."""
  del shared
  return client
