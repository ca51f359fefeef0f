"""Shared benchmark helpers: environment record, timing, AOT compile, data.

Every benchmark prints ONE JSON line (:func:`emit`) holding :func:`env_info`,
its settings and its results. Compile time is ``jax.jit(f).lower(...).compile()``
timed (:func:`timed_compile`); steady state is the median of several calls
after warm-up, each ended by ``jax.block_until_ready`` (:func:`time_calls`).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.core import backend, cohort
from fedjax_pfl.data import FederatedData, pad_indices

# Execution strategies by benchmark name (``parallelism+step_loop``).
STRATEGIES = {
    "vmap+scan": ("vmap", "scan"),
    "vmap+python": ("vmap", "python"),
    "sequential+python": ("sequential", "python"),
    "sequential+scan": ("sequential", "scan"),
}


def execution(strategy: str, chunk_size: int | None = None) -> backend.Execution:
  """The :class:`~fedjax_pfl.core.backend.Execution` named ``strategy``."""
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy={strategy!r}; allowed: {sorted(STRATEGIES)}")
  parallelism, step_loop = STRATEGIES[strategy]
  return backend.Execution(parallelism=parallelism, step_loop=step_loop,
                          chunk_size=chunk_size if parallelism == "vmap" else None)


def env_info() -> dict[str, Any]:
  """Device, backend, versions, host load and XLA flags of this process."""
  dev = jax.devices()[0]
  try:
    load = [round(v, 2) for v in os.getloadavg()]
  except OSError:
    load = None
  import jaxlib
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "backend": jax.default_backend(),
      "device_kind": dev.device_kind,
      "num_devices": jax.local_device_count(),
      "jax_version": jax.__version__,
      "jaxlib_version": jaxlib.__version__,
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
      "loadavg": load,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def block(tree):
  return jax.block_until_ready(tree)


def timed_compile(jitted, *args) -> tuple[Any, float]:
  """``jitted.lower(*args).compile()``; returns ``(compiled, seconds)``."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1,
               budget_s: float | None = None) -> dict[str, Any]:
  """Runs ``fn`` ``warmup`` times, then up to ``repeats`` timed times.

  Args:
    fn: the call to time; its result is passed to ``jax.block_until_ready``.
    repeats: timed calls (at least 1).
    warmup: untimed calls first (the first may trace and compile).
    budget_s: stop repeating once the timed calls add up to this (slow
      configurations on CPU); at least one timed call is always made.

  Returns:
    ``{"median_s", "min_s", "times_s", "first_s"}``; ``first_s`` is the first
    warm-up call, which may include tracing and compilation.
  """
  first = None
  for i in range(warmup):
    t0 = time.perf_counter()
    block(fn())
    if i == 0:
      first = time.perf_counter() - t0
  times: list[float] = []
  while len(times) < max(1, repeats):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
    if budget_s is not None and sum(times) >= budget_s:
      break
  return {"median_s": statistics.median(times), "min_s": min(times),
          "times_s": [round(t, 6) for t in times], "first_s": first}


def log(message: str) -> None:
  """Progress line on stderr (stdout carries only the JSON line)."""
  print(f"# {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any], out: str | None = None) -> dict[str, Any]:
  """Prints ``record`` as ONE JSON line (and appends it to ``out`` if set)."""
  line = json.dumps(record, default=_json_default)
  print(line, flush=True)
  if out:
    with open(out, "a") as f:
      f.write(line + "\n")
  return record


def _json_default(v):
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating,)):
    return float(v)
  if isinstance(v, np.ndarray):
    return v.tolist()
  return str(v)


def parser(description: str) -> argparse.ArgumentParser:
  """Argument parser with the flags every benchmark takes."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--smoke", action="store_true", help="tiny sizes; runs in seconds")
  p.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
  p.add_argument("--out", default=None, help="also append the JSON line to this file")
  return p


def ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def names(text: str) -> list[str]:
  return [v.strip() for v in text.split(",") if v.strip()]


# -- AOT compile of the project's own jitted programs ------------------------
def cohort_steps(sim, ids) -> int:
  """Useful client steps of cohort ``ids``: the local steps each client
  actually trains (its ``active_steps``), summed over the cohort."""
  return int(sum(len(sim.algorithm.local_train.active_steps([n]))
                 for n in sim.train_counts[ids]))


def lane_steps(sim, ids) -> int:
  """Lane steps the unpacked executions run for padded cohort ``ids``: one
  per useful step for sequential clients; ``chunk x`` the chunk's active
  steps (vmap + Python); ``C' x num_steps`` (vmap + scan: every client runs
  the static step count). Packed cohorts report their own count
  (``lane_utilization`` in the round metrics)."""
  ex = sim.backend.execution
  if ex.parallelism == "sequential":  # Python-stepped or one loop over its active steps
    return cohort_steps(sim, ids)
  if ex.step_loop == "scan":
    return len(ids) * sim.task.num_steps
  counts = sim.train_counts[np.minimum(ids, sim.num_clients - 1)]
  active = sim.algorithm.local_train.active_steps
  size = ex.chunk_size or len(ids)
  return sum(len(counts[i:i + size]) * len(active(counts[i:i + size]))
             for i in range(0, len(ids), size))


def compile_round(sim, state) -> dict[str, float]:
  """AOT-compiles and installs the programs ``Simulation.run_round(state)``
  runs (``Simulation.compile_round``); later rounds compile nothing.

  Returns:
    ``{piece: seconds, ..., "total": seconds}``.
  """
  return sim.compile_round(state)


# -- data --------------------------------------------------------------------
def synthetic_federated(train_sizes, *, input_shape=(28, 28, 1), num_classes: int = 10,
                        test_sizes=None, seed: int = 0, name: str = "synthetic") -> FederatedData:
  """Random ``FederatedData`` with the given per-client train (and test) sizes.

  Pixels are standard normal, labels uniform; only shapes matter for timing.
  """
  rng = np.random.default_rng(seed)
  train_sizes = [int(s) for s in train_sizes]
  test_sizes = [int(s) for s in (test_sizes if test_sizes is not None else
                                 [max(1, s // 3) for s in train_sizes])]
  total = sum(train_sizes) + sum(test_sizes)
  x = rng.standard_normal((total,) + tuple(input_shape), dtype=np.float32)
  y = rng.integers(0, num_classes, total).astype(np.int32)
  train_lists, test_lists, start = [], [], 0
  for n_tr, n_te in zip(train_sizes, test_sizes):
    train_lists.append(np.arange(start, start + n_tr))
    test_lists.append(np.arange(start + n_tr, start + n_tr + n_te))
    start += n_tr + n_te
  train_idx, train_counts = pad_indices(train_lists)
  test_idx, test_counts = pad_indices(test_lists)
  return FederatedData(x, y, train_idx, train_counts, test_idx, test_counts, num_classes, name)


def device_data(fd: FederatedData) -> cohort.DeviceData:
  """The resident ``DeviceData`` of host ``FederatedData``."""
  return cohort.DeviceData(*(jnp.asarray(a) for a in (
      fd.x, fd.y, fd.train_idx, fd.train_counts, fd.test_idx, fd.test_counts)))


def tree_bytes(tree) -> int:
  """Total bytes of the arrays in ``tree``."""
  return int(sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in jax.tree.leaves(tree)))


def num_params(tree) -> int:
  return int(sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree)))


def rss_bytes() -> int | None:
  """Current resident set size of this process (Linux), else None."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def main_guard(main: Callable[[list[str] | None], Any]) -> None:
  """``sys.exit(0)`` after ``main(sys.argv[1:])``; exceptions propagate."""
  main(sys.argv[1:])
  sys.exit(0)
