"""Key derivation: every random draw depends on (seed, stream, round, client id).

The key of client ``i`` in round ``t`` is ``fold_in(fold_in(train_key, t), i)``:
it depends on the client's *id*, never on its position in the cohort, so results
do not depend on cohort order, padding, chunk size or device count.
"""

import jax
import jax.numpy as jnp

STREAMS = {"init": 0, "sample": 1, "train": 2, "eval": 3, "algorithm": 4, "aggregate": 5,
           "algorithm_init": 6}


def root_key(seed: int) -> jax.Array:
  """Typed root key for ``seed`` (``jax.random.key``)."""
  return jax.random.key(seed)


def stream_key(root: jax.Array, name: str) -> jax.Array:
  """Named stream derived from the root key; ``name`` in :data:`STREAMS`."""
  if name not in STREAMS:
    raise ValueError(f"unknown key stream {name!r}; allowed: {sorted(STREAMS)}")
  return jax.random.fold_in(root, STREAMS[name])


def client_key(train_key: jax.Array, round_idx, client_id) -> jax.Array:
  """Training key of one client in one round (scalar key; traceable ints)."""
  round_key = jax.random.fold_in(train_key, round_idx)
  return jax.random.fold_in(round_key, client_id)


def sample_cohort(sample_key: jax.Array, round_idx, num_clients: int,
                  cohort_size: int) -> jax.Array:
  """Clients of round ``round_idx``: uniform without replacement, sorted ids.

  Args:
    sample_key: the ``"sample"`` stream key.
    round_idx: round number (Python int or int32 scalar; traceable).
    num_clients: ``N``.
    cohort_size: ``C = max(1, floor(rho * N))``, at most ``N``.

  Returns:
    int32 ``[C]`` sorted client ids.
  """
  key = jax.random.fold_in(sample_key, round_idx)
  ids = jax.random.choice(key, num_clients, (cohort_size,), replace=False)
  return jnp.sort(ids).astype(jnp.int32)
