"""Client streams of reference codes: which clients each round samples, drawn up front.

Our default cohort sampling (``train.client_stream="uniform"``) derives each
round's cohort from the run's JAX key (``core/rounds.py``). A reference stream
instead reproduces the exact client ids a reference code trained, so that every
algorithm of a comparison sees the same, published stream.
"""

from __future__ import annotations

import random

import numpy as np

__all__ = ["CLIENT_STREAMS", "flbench_client_stream"]

# Values of ``train.client_stream``.
CLIENT_STREAMS: tuple[str, ...] = ("uniform", "flbench")


def flbench_client_stream(seed: int, num_clients: int, join_ratio: float,
                          num_rounds: int) -> np.ndarray:
  """FL-bench's client sample stream (reference-protocols spec §1 "Client stream").

  Follows FL-bench's ``FedAvgServer.__init__`` (``client_sample_stream``): ``random.seed(seed)``,
  then for each round ``random.sample(range(N), max(1, int(N * join_ratio)))``.
  Drawn here with a private ``random.Random(seed)`` (the global ``random``
  state is untouched); the draws are identical. Seed 42, ``N = 100``, ratio 0.1:
  round 1 is 81, 14, 3, 94, 35, 31, 28, 17, 13, 86.

  Args:
    seed: FL-bench's ``common.seed`` (an integer).
    num_clients: ``N >= 1``.
    join_ratio: fraction of clients per round, in ``(0, 1]``.
    num_rounds: ``>= 0`` rounds.

  Returns:
    ``[num_rounds, C]`` int32 client ids, ``C = max(1, int(N * join_ratio))``;
    row ``t`` is round ``t + 1``'s cohort, in FL-bench's (sampling) order.

  Raises:
    ValueError: an argument out of range.
  """
  if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
    raise ValueError(f"num_clients={num_clients!r}; allowed: an integer >= 1")
  if not 0 < join_ratio <= 1:
    raise ValueError(f"join_ratio={join_ratio!r}; allowed: (0, 1]")
  if not isinstance(num_rounds, (int, np.integer)) or num_rounds < 0:
    raise ValueError(f"num_rounds={num_rounds!r}; allowed: an integer >= 0")
  cohort = max(1, int(num_clients * join_ratio))
  draw = random.Random(seed)
  stream = [draw.sample(range(num_clients), cohort) for _ in range(num_rounds)]
  return np.array(stream, dtype=np.int32).reshape(num_rounds, cohort)
