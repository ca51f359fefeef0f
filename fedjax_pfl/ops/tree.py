"""Small pytree helpers shared by the FedOBP ops.

The helpers here resolve the optional ``scope`` pytree (which parameter
entries take part in scoring) and name the top-level layers of a parameter
pytree. They never touch traced values with Python control flow: only static
information (Python/NumPy booleans, shapes, tree paths) is branched on.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
# A per-leaf mask is either a static Python bool (applies to the whole leaf)
# or a boolean array of the leaf's shape (NumPy when concrete, else jax).
LeafMask = bool | np.ndarray | jax.Array


def _static_or_array(mask: Any, shape: tuple[int, ...]) -> LeafMask:
  """Converts one scope leaf into a `LeafMask` broadcast to `shape`."""
  if isinstance(mask, (bool, np.bool_)):
    return bool(mask)
  if isinstance(mask, np.ndarray):
    if mask.dtype != np.bool_:
      raise ValueError(f"scope leaves must be booleans, got dtype {mask.dtype}.")
    if mask.size and mask.all():
      return True
    if not mask.any():
      return False
    return np.broadcast_to(mask, shape)
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise ValueError(f"scope leaves must be booleans, got dtype {mask.dtype}.")
  return jnp.broadcast_to(mask, shape)


def resolve_scope(scope: PyTree | None, tree: PyTree) -> list[LeafMask]:
  """Returns one `LeafMask` per leaf of `tree` (in `jax.tree.leaves` order).

  Args:
    scope: None (every entry is scored) or a pytree with the structure of
      `tree` (or a prefix of it, e.g. ``{'conv1': True, 'classifier': False}``)
      whose leaves are Python bools (whole leaf in/out of scope) or boolean
      arrays broadcastable to the corresponding leaf's shape.
    tree: the pytree of arrays the scope refers to.

  Returns:
    A list with, for each leaf of `tree`, either a Python bool (static) or a
    boolean array of the leaf's shape. Concrete NumPy masks that are all-True
    or all-False are turned into static bools so that they can be skipped.

  Raises:
    ValueError: if `scope` does not match the structure of `tree` or a leaf is
      not boolean.
  """
  leaves = jax.tree.leaves(tree)
  if scope is None:
    return [True] * len(leaves)
  try:
    full = jax.tree.map(
        lambda s, sub: jax.tree.map(lambda _: s, sub), scope, tree)
    treedef = jax.tree.structure(tree)
    masks = treedef.flatten_up_to(full)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "scope must have the pytree structure of the parameters (or a prefix "
        f"of it) with boolean leaves: {e}") from e
  return [_static_or_array(m, jnp.shape(x)) for m, x in zip(masks, leaves)]


def scored_count(masks: list[LeafMask], tree: PyTree) -> int | jax.Array:
  """Number of scored entries: a Python int when every mask is concrete."""
  total = 0
  traced = []
  for m, x in zip(masks, jax.tree.leaves(tree)):
    if m is True:
      total += int(np.prod(jnp.shape(x), dtype=np.int64))
    elif m is False:
      continue
    elif isinstance(m, np.ndarray):
      total += int(np.count_nonzero(m))
    else:
      traced.append(jnp.sum(m, dtype=jnp.int32))
  if traced:
    return total + sum(traced)
  return total


def _key_name(key: Any) -> str:
  """Readable name of one tree-path key (dict key, attribute or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def top_level_names(tree: PyTree) -> list[str]:
  """Returns the top-level layer name of every leaf, in leaf order.

  A leading ``'params'`` key (the flax variable collection) is skipped, so
  both ``{'conv1': ...}`` and ``{'params': {'conv1': ...}}`` give ``'conv1'``.
  A leaf at the root is named ``''``.
  """
  names = []
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    parts = [_key_name(k) for k in path]
    if len(parts) > 1 and parts[0] == "params":
      parts = parts[1:]
    names.append(parts[0] if parts else "")
  return names
