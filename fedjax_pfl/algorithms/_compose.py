"""Building blocks shared by the baseline zoo (FedPer ... FedALA).

* :class:`Partition`: a static split of a params pytree into a *selected*
  tuple of leaves (e.g. the personal head) and the *rest*, built once from
  :func:`fedjax_pfl.models.base.label_params` path rules.
* :func:`layer_names` / :func:`last_leaves_rules`: model layers and tensors in
  **definition order**. Flax creates the params dict in the order the
  submodules are defined (``conv1, conv2, fc1, classifier``; inside a Dense
  ``kernel, bias``), and Python dicts keep insertion order; any ``jax.tree``
  map re-creates dicts with *sorted* keys, so these helpers must be given the
  params exactly as returned by ``model.init`` (what builders receive).
* :func:`chain_programs`: runs several :class:`LocalProgram` one after the
  other as one program (Ditto: global model, then personal model).
* :func:`batch_program`: the minibatch loop of ``sgd_program`` (same example
  order for the same key) around an arbitrary per-batch update.
* :func:`client_lr`: the client learning rate of a :class:`LocalSpec`.
"""

import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms.spec import is_traced
from fedjax_pfl.core.local import (
  LocalProgram,
  batch_active,
  epoch_permutations,
  gather_batch,
)
from fedjax_pfl.core.local import (
  steps_per_epoch as local_steps_per_epoch,
)
from fedjax_pfl.models.base import HEAD, label_params
from fedjax_pfl.types import Params, PyTree


class Partition(NamedTuple):
  """Static split of a params pytree: ``flags[k]`` marks leaf ``k`` (in
  ``jax.tree`` order) as selected. Selected and rest are tuples of leaves."""
  treedef: Any
  flags: tuple[bool, ...]

  @property
  def num_selected(self) -> int:
    return sum(self.flags)

  def select(self, params: Params) -> tuple:
    """The selected leaves, in tree order."""
    return tuple(x for x, f in zip(self.treedef.flatten_up_to(params), self.flags) if f)

  def rest(self, params: Params) -> tuple:
    """The leaves that are not selected, in tree order."""
    return tuple(x for x, f in zip(self.treedef.flatten_up_to(params), self.flags) if not f)

  def merge(self, selected: Sequence, rest: Sequence) -> Params:
    """Params from selected leaves and the rest (inverse of select/rest)."""
    sel, oth = iter(selected), iter(rest)
    return self.treedef.unflatten([next(sel) if f else next(oth) for f in self.flags])

  def replace(self, params: Params, selected: Sequence) -> Params:
    """``params`` with its selected leaves replaced by ``selected``."""
    return self.merge(selected, self.rest(params))

  def mask(self) -> PyTree:
    """Bool pytree (Python bools) shaped like params: True where selected."""
    return self.treedef.unflatten(list(self.flags))


def partition(params: Params, rules: dict[str, str], label: str) -> Partition:
  """Selects the leaves whose :func:`label_params` label is ``label``."""
  labels = label_params(params, rules)
  leaves, treedef = jax.tree.flatten(labels)
  return Partition(treedef, tuple(lab == label for lab in leaves))


def layer_names(params: Params) -> list[str]:
  """Top-level param groups (layers) in definition order (see module doc).

  Raises:
    ValueError: if a ``classifier`` layer is not last, i.e. the dict lost its
      definition order (it went through a ``jax.tree`` map or a jit).
  """
  names = list(params.keys())
  if HEAD in names and names[-1] != HEAD:
    raise ValueError(f"params layers {names} are not in definition order; pass the params "
                     "exactly as returned by model.init")
  return names


def layer_rules(names: Sequence[str], label: str) -> dict[str, str]:
  """Path rules labelling every leaf under the layers ``names``."""
  return {f"^{re.escape(n)}(/|$)": label for n in names}


def last_leaves_rules(params: Params, k: int, label: str) -> dict[str, str]:
  """Path rules labelling the last ``k`` tensors in definition order (FedALA's
  ``layer_idx``: ``k = 2`` is the classifier kernel and bias)."""
  paths: list[str] = []

  def walk(tree, prefix):
    if isinstance(tree, dict):
      for key, sub in tree.items():
        walk(sub, f"{prefix}/{key}" if prefix else str(key))
    else:
      paths.append(prefix)
  layer_names(params)  # checks the definition order
  walk(params, "")
  return {f"^{re.escape(p)}$": label for p in paths[len(paths) - k:]} if k else {}


def client_lr(spec) -> float | jax.Array:
  """The client learning rate: ``spec.lr`` when the spec carries it (a float,
  or a traced scalar when learning rates are batched into one program), else
  read off the optimizer as ``-update`` for a unit gradient at zero params
  with a fresh state (exact for ``make_optimizer`` SGD with or without
  momentum and weight decay; not for Nesterov)."""
  lr = getattr(spec, "lr", None)
  if is_traced(lr):
    return lr
  if lr is not None:
    return float(lr)
  p = {"p": jnp.zeros((), jnp.float32)}
  updates, _ = spec.optimizer.update({"p": jnp.ones((), jnp.float32)}, spec.optimizer.init(p), p)
  return -float(updates["p"])


def _prefixed(metrics: dict, prefix: str) -> dict:
  return {f"{prefix}{k}": v for k, v in metrics.items()}


def chain_programs(programs: Sequence[LocalProgram], prefixes: Sequence[str]) -> LocalProgram:
  """Runs ``programs`` one after the other as one :class:`LocalProgram`.

  ``init`` takes a tuple with one input per program; program 0 gets the
  client key unchanged, program ``j >= 1`` gets ``fold_in(key, j)``. Step
  ``t`` advances the program whose step range contains ``t`` (``lax.switch``
  on the unbatched step index). ``finish`` returns the tuple of trained
  params and the merged metrics, program ``j``'s keys prefixed with
  ``prefixes[j]``. All programs must share batch size and steps per epoch.
  """
  if len({(p.batch_size, p.steps_per_epoch) for p in programs}) != 1:
    raise ValueError("chain_programs: programs must share batch_size and steps_per_epoch")
  starts = [0]
  for p in programs:
    starts.append(starts[-1] + p.num_steps)

  def init(inputs, data, key):
    keys = [key] + [jax.random.fold_in(key, j) for j in range(1, len(programs))]
    return tuple(p.init(x, data, k) for p, x, k in zip(programs, inputs, keys))

  def branch(j):
    def run(carries, t, data):
      out = list(carries)
      out[j] = programs[j].step(carries[j], t - starts[j], data)
      return tuple(out)
    return run

  def step(carries, t, data):
    index = jnp.sum(t >= jnp.asarray(starts[1:-1], jnp.int32)) if len(programs) > 1 else 0
    return jax.lax.switch(index, [branch(j) for j in range(len(programs))], carries, t, data)

  def finish(carries):
    results = [p.finish(c) for p, c in zip(programs, carries)]
    metrics = {}
    for (_, m), prefix in zip(results, prefixes):
      metrics.update(_prefixed(m, prefix))
    return tuple(r[0] for r in results), metrics

  first = programs[0]
  return LocalProgram(init, step, finish, starts[-1], first.steps_per_epoch, first.batch_size)


class BatchCarry(NamedTuple):
  state: Any
  perms: jax.Array      # [E, S_e * B] int32 example order per epoch
  key: jax.Array
  loss_sum: jax.Array   # [] float32
  seen: jax.Array       # [] float32


def batch_program(init_state: Callable[[Any], Any],
                  update: Callable[..., tuple[Any, jax.Array]],
                  result: Callable[[Any], Any], *, epochs: int, batch_size: int,
                  num_slots: int) -> LocalProgram:
  """E epochs over a client's minibatches with a custom per-batch ``update``.

  Batches, example order and keys are exactly those of
  :func:`fedjax_pfl.core.local.sgd_program` for the same client key; batches
  with fewer than 2 examples leave the state unchanged.

  Args:
    init_state: ``inputs -> state`` (e.g. params plus optimizer states).
    update: ``(state, batch, epoch, key) -> (state, mean batch loss)``.
    result: ``state -> trained output`` handed to ``finalize``.
    epochs, batch_size, num_slots: as in ``sgd_program``.
  """
  steps_per_epoch = local_steps_per_epoch(num_slots, batch_size)
  padded_len = steps_per_epoch * batch_size

  def init(inputs, data, key):
    perm_key, step_key = jax.random.split(key)
    perms = epoch_permutations(perm_key, data.count, epochs, num_slots, padded_len)
    zero = jnp.zeros((), jnp.float32)
    return BatchCarry(init_state(inputs), perms, step_key, zero, zero)

  def step(carry: BatchCarry, t, data):
    epoch, s = t // steps_per_epoch, t % steps_per_epoch
    batch = gather_batch(data, carry.perms[epoch], s, batch_size)
    size = jnp.sum(batch.mask)
    active = batch_active(size)
    state, loss = update(carry.state, batch, epoch, jax.random.fold_in(carry.key, t))
    state = jax.tree.map(lambda new, old: jnp.where(active, new, old), state, carry.state)
    return carry._replace(
        state=state, loss_sum=carry.loss_sum + jnp.where(active, loss * size, 0.0),
        seen=carry.seen + jnp.where(active, size, 0).astype(jnp.float32))

  def finish(carry: BatchCarry):
    metrics = {"train_loss": carry.loss_sum / jnp.maximum(carry.seen, 1.0),
               "train_examples": carry.seen}
    return result(carry.state), metrics

  return LocalProgram(init, step, finish, epochs * steps_per_epoch, steps_per_epoch, batch_size)
