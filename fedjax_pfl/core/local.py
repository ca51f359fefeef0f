"""Local training as a step program over padded, masked minibatches.

A :class:`LocalProgram` describes one client's local training as
``init -> step (num_steps times) -> finish``. Written for ONE client; the
backend in :mod:`fedjax_pfl.core.backend` decides whether the steps run inside
one ``lax.scan`` or are stepped from Python, and whether clients are vmapped.

Minibatches follow FL-bench's client loop: each epoch reshuffles the client's
examples, batches of ``B`` are taken in order, the last partial batch is kept
when it has at least 2 examples, and batches of size 1 are skipped. Steps past
a client's data (padding) leave parameters and optimizer state unchanged.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_pfl.types import Metrics, Params


class ClientData(NamedTuple):
  """One client's view of the resident dataset.

  Attributes:
    x: ``[T, ...]`` float32 pooled examples, shared by all clients.
    y: ``[T]`` int32 pooled labels, shared.
    idx: ``[M]`` int32 indices of this client's examples into ``x``; entries
      at positions ``>= count`` are padding.
    count: ``[]`` int32 number of real examples.
  """
  x: jax.Array
  y: jax.Array
  idx: jax.Array
  count: jax.Array


class Batch(NamedTuple):
  """A padded minibatch: ``x [B, ...]``, ``y [B]``, ``mask [B]`` (bool)."""
  x: jax.Array
  y: jax.Array
  mask: jax.Array


class LocalInput(NamedTuple):
  """What ``broadcast`` may hand to an SGD program: the params to train and a
  frozen ``context`` passed to the loss (e.g. the global model for a prox term).
  A bare params pytree means ``context=()``."""
  params: Params
  context: Any = ()


class LocalProgram(NamedTuple):
  """One client's local training, written for a single client.

  Attributes:
    init: ``(params, data: ClientData, key) -> carry``.
    step: ``(carry, t: int32 [], data: ClientData) -> carry``; step ``t`` of
      ``num_steps``; must be a no-op where the client has no batch at ``t``.
    finish: ``carry -> (params, metrics)``.
    num_steps: static number of steps ``S`` (``epochs * steps_per_epoch``).
    steps_per_epoch: static steps per epoch (``ceil(M / B)``).
    batch_size: ``B``.
    active_fn: optional host-side ``counts -> step indices`` replacing the
      default :meth:`active_steps` (for programs whose steps do not follow
      ``epochs x batches``).
  """
  init: Callable[..., Any]
  step: Callable[..., Any]
  finish: Callable[..., tuple[Params, Metrics]]
  num_steps: int
  steps_per_epoch: int
  batch_size: int
  active_fn: Callable[[Any], Sequence[int]] | None = None

  def active_steps(self, counts) -> list[int]:
    """Host-side: the step indices at which any client in ``counts`` trains.

    Used by Python-stepped execution to skip steps that are no-ops for every
    client of a chunk; results are identical with or without skipping.
    """
    if self.active_fn is not None:
      return list(self.active_fn(counts))
    n = int(np.max(np.asarray(counts))) if np.size(counts) else 0
    per_epoch = num_batches(n, self.batch_size)
    epochs = self.num_steps // self.steps_per_epoch
    return [e * self.steps_per_epoch + s for e in range(epochs) for s in range(per_epoch)]

  def step_schedule(self, count: jax.Array):
    """Traced, one client: the steps :meth:`active_steps` would run for it.

    Args:
      count: ``[]`` int32, the client's number of train examples.

    Returns:
      ``(num_active, step_of)``: ``[]`` int32 number of steps at which the
      client trains, and ``step_of(k)`` mapping the ``k``-th of them
      (``0 <= k < num_active``, int32, any shape) to its step index ``t``.
      Programs with a custom ``active_fn`` run every step (``num_active =
      num_steps``, ``step_of(k) = k``): always correct, since steps without a
      batch are no-ops.
    """
    if self.active_fn is not None:
      return jnp.int32(self.num_steps), lambda k: k
    spe, b = self.steps_per_epoch, self.batch_size
    count = jnp.asarray(count, jnp.int32)
    per_epoch = jnp.minimum(count // b + (count % b >= MIN_BATCH).astype(jnp.int32), spe)
    epochs = self.num_steps // spe
    safe = jnp.maximum(per_epoch, 1)
    return epochs * per_epoch, lambda k: (k // safe) * spe + k % safe


MIN_BATCH = 2  # FL-bench skips batches of one example (BatchNorm needs two)


def batch_active(size: jax.Array) -> jax.Array:
  """Whether a batch of ``size`` real examples trains (``>= MIN_BATCH``; traced)."""
  return size >= MIN_BATCH


def steps_per_epoch(num_slots: int, batch_size: int) -> int:
  """Static batches per epoch ``ceil(M / B)`` (at least 1) for ``M`` padded
  example slots per client."""
  return max(1, -(-int(num_slots) // int(batch_size)))


def num_batches(count: int, batch_size: int) -> int:
  """Batches per epoch with at least ``MIN_BATCH`` examples for ``count`` examples."""
  full, rest = divmod(int(count), batch_size)
  return full + (1 if rest >= MIN_BATCH else 0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array):
  """Mean cross-entropy over the ``mask``-ed entries (0 when none)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  n = jnp.sum(mask)
  return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(n, 1)


class SGDCarry(NamedTuple):
  params: Params
  context: Any
  opt_state: Any
  perms: jax.Array      # [E, S_e * B] int32 example order per epoch
  key: jax.Array
  loss_sum: jax.Array   # [] float32, sum over trained examples
  seen: jax.Array       # [] float32, examples trained on


def make_optimizer(lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                   nesterov: bool = False) -> optax.GradientTransformation:
  """PyTorch-equivalent SGD: decay added to the gradient before momentum."""
  sgd = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
  return sgd


def epoch_permutations(key: jax.Array, count, epochs: int, num_slots: int,
                       padded_len: int) -> jax.Array:
  """``[epochs, padded_len]`` int32: per epoch, a uniform random order of the
  first ``count`` slots followed by the padding slots (then zeros)."""
  u = jax.random.uniform(key, (epochs, num_slots))
  u = jnp.where(jnp.arange(num_slots) < count, u, 2.0)
  perms = jnp.argsort(u, axis=1).astype(jnp.int32)
  return jnp.pad(perms, ((0, 0), (0, padded_len - num_slots)))


def gather_batch(data: ClientData, perm: jax.Array, s, batch_size: int) -> Batch:
  """The ``s``-th minibatch of an epoch with example order ``perm``."""
  pos = s * batch_size + jnp.arange(batch_size)
  slots = jax.lax.dynamic_slice(perm, (s * batch_size,), (batch_size,))
  examples = data.idx[slots]
  return Batch(data.x[examples], data.y[examples], pos < data.count)


def sgd_program(loss_fn: Callable[..., jax.Array], optimizer: optax.GradientTransformation,
                *, epochs: int, batch_size: int, num_slots: int,
                trainable: Callable[[jax.Array], Any] | None = None,
                state_mask: Any = None) -> LocalProgram:
  """E epochs of minibatch SGD (optax) on ``loss_fn(params, batch, key, context)``.

  The optimizer state is created fresh at ``init`` (reset every round, as in
  FL-bench's ``reset_optimizer_on_global_epoch``). ``init`` takes a params
  pytree or a :class:`LocalInput` (params + frozen loss context).

  Args:
    loss_fn: ``(params, Batch, key, context) -> scalar`` mean loss over
      ``batch.mask``.
    optimizer: an optax transformation.
    epochs: local epochs ``E >= 1``.
    batch_size: ``B >= 1``.
    num_slots: padded examples per client ``M`` (static).
    trainable: optional ``epoch -> bool pytree`` (a prefix of params is
      fine): entries False at that epoch keep their value and their optimizer
      state (true freezing, unlike zeroing gradients under momentum). Used by
      FedRep-style phases.
    state_mask: for models with BatchNorm (``Model.state_mask``): the loss
      returns ``(loss, params_with_new_statistics)`` and the leaves marked
      True take the new statistics after each active step (they are never
      moved by the optimizer).

  Returns:
    A :class:`LocalProgram` whose params are the trained pytree; metrics
    ``train_loss`` (mean over trained examples) and ``train_examples``.
  """
  spe = steps_per_epoch(num_slots, batch_size)
  padded_len = spe * batch_size
  grad_fn = jax.value_and_grad(loss_fn, has_aux=state_mask is not None)

  def init(inputs, data: ClientData, key):
    params, context = inputs if isinstance(inputs, LocalInput) else (inputs, ())
    perm_key, step_key = jax.random.split(key)
    perms = epoch_permutations(perm_key, data.count, epochs, num_slots, padded_len)
    zero = jnp.zeros((), jnp.float32)
    return SGDCarry(params, context, optimizer.init(params), perms, step_key, zero, zero)

  def step(carry: SGDCarry, t, data: ClientData) -> SGDCarry:
    epoch, s = t // spe, t % spe
    batch = gather_batch(data, carry.perms[epoch], s, batch_size)
    size = jnp.sum(batch.mask)
    active = batch_active(size)
    loss, grads = grad_fn(carry.params, batch, jax.random.fold_in(carry.key, t), carry.context)
    updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
    params = optax.apply_updates(carry.params, updates)
    if state_mask is not None:
      loss, with_stats = loss
      params = jax.tree.map(lambda m, p, s: s if m else p, state_mask, params, with_stats)
    keep = lambda new, old: jnp.where(active, new, old)
    params = jax.tree.map(keep, params, carry.params)
    opt_state = jax.tree.map(keep, opt_state, carry.opt_state)
    if trainable is not None:
      params, opt_state = _freeze(trainable(epoch), params, carry.params, opt_state,
                                  carry.opt_state)
    return carry._replace(
        params=params, opt_state=opt_state,
        loss_sum=carry.loss_sum + jnp.where(active, loss * size, 0.0),
        seen=carry.seen + jnp.where(active, size, 0).astype(jnp.float32))

  def finish(carry: SGDCarry):
    metrics = {"train_loss": carry.loss_sum / jnp.maximum(carry.seen, 1.0),
               "train_examples": carry.seen}
    return carry.params, metrics

  return LocalProgram(init, step, finish, epochs * spe, spe, batch_size)


def _freeze(mask, new_params, old_params, new_opt, old_opt):
  """Keeps old values (params and same-shaped optimizer leaves) where ``mask``
  is False. ``mask`` may be a prefix pytree of params with bool leaves."""
  full = jax.tree.map(
      lambda m, sub: jax.tree.map(lambda p: jnp.broadcast_to(jnp.asarray(m), p.shape), sub),
      mask, new_params)
  params = jax.tree.map(lambda m, n, o: jnp.where(m, n, o), full, new_params, old_params)
  # Optimizer states hold params-shaped trees (e.g. momentum): freeze those too.
  structure = jax.tree.structure(new_params)
  is_params_like = lambda x: jax.tree.structure(x) == structure

  def fix(n, o):
    if is_params_like(n):
      return jax.tree.map(lambda m, a, b: jnp.where(m, a, b), full, n, o)
    return n
  return params, jax.tree.map(fix, new_opt, old_opt, is_leaf=is_params_like)


class LocalSpec(NamedTuple):
  """Everything an algorithm builder needs to make its local training.

  Attributes:
    apply: the model's ``(params, x) -> logits`` (eval mode).
    optimizer: the client optimizer (fresh state every round).
    epochs: local epochs ``E``.
    batch_size: ``B``.
    num_slots: padded train examples per client ``M``.
    apply_train: ``Model.apply_train`` for models with BatchNorm, else None.
    state_mask: ``Model.state_mask`` (True on BN running statistics), else None.
    lr: the client learning rate (for algorithms whose own updates use it,
      e.g. APFL's alpha step, pFedMe's eta), or None if unknown.
    model_init: the model's ``init(key) -> params`` (for algorithms that draw
      further models, e.g. Separate's per-client initial models), or None.
  """
  apply: Callable[..., jax.Array]
  optimizer: optax.GradientTransformation
  epochs: int
  batch_size: int
  num_slots: int
  apply_train: Callable[..., Any] | None = None
  state_mask: Any = None
  lr: float | None = None
  model_init: Callable[[jax.Array], Any] | None = None

  def forward(self, params, batch: Batch) -> tuple[jax.Array, Params]:
    """Train-mode logits and the params with updated BN statistics (the same
    params for stateless models). Custom losses of algorithms that support
    BatchNorm models return ``(loss, forward(...)[1])``."""
    if self.apply_train is None:
      return self.apply(params, batch.x), params
    return self.apply_train(params, batch.x, batch.mask)

  def ce_loss(self, params, batch: Batch, key=None, context=()):
    """Mean cross-entropy on a padded batch; with BatchNorm, ``(loss, params
    with new statistics)`` (see :func:`sgd_program`'s ``state_mask``)."""
    del key, context
    logits, new = self.forward(params, batch)
    loss = softmax_cross_entropy(logits, batch.y, batch.mask)
    return loss if self.state_mask is None else (loss, new)

  def program(self, loss_fn: Callable[..., jax.Array] | None = None, *,
              epochs: int | None = None, trainable=None,
              optimizer: optax.GradientTransformation | None = None) -> LocalProgram:
    """An SGD :class:`LocalProgram` (default loss: cross-entropy)."""
    return sgd_program(loss_fn or self.ce_loss, optimizer or self.optimizer,
                       epochs=self.epochs if epochs is None else epochs,
                       batch_size=self.batch_size,
                       num_slots=self.num_slots, trainable=trainable,
                       state_mask=self.state_mask)
