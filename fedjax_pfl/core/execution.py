"""How a cohort's clients run: the execution settings and their measured defaults.

:class:`Execution` is plain configuration; :func:`fedjax_pfl.core.backend.make_backend`
turns it into the backend that maps clients.

Why the defaults differ per backend: on XLA:CPU one client at a time is the
fastest (a vmap over clients runs batched GEMMs far below the plain GEMM rate:
FedAvgCNN 15.9 ms per client step as a 2-lane vmap against 5.8 ms alone, 2-core
machine, jax 0.10.2), and each client's active steps inside one compiled loop
(``step_loop="scan"``) match stepping it from Python for FedAvgCNN (workload W,
same cohorts, alternating rounds: 6.9 vs 7.2 ms per client step) and beat it for
ResNet-8 (20.6 vs 27.2 ms at batch 32; 44 vs 72 ms at batch 100), so the CPU
default is sequential + scan (benchmarks/README.md). On accelerators one
compiled round (vmap + scan) is the fast path.

Evaluation batches (:func:`default_eval_batch_size`, for ``train.eval_batch_size
= None``): on XLA:CPU a forward pass costs 4x more per example once its im2col
patch matrices outgrow the cache (FedAvgCNN: 57 us per example at batch 32, 67
at 64, 230 at 128 and 227 at 256; conv2's patches take 205 KB per example), so
the CPU default is 32: evaluating workload W's 100 clients (17,461 test
examples) took 1.09 s at 32 against 7.65 s at 256, ResNet-8's 2.02 s against
7.90 s (same accuracy; benchmarks/README.md). Accelerators keep 256 until the
device report measures them. Under vmap, passes over every client
(evaluation, ``personalize_with_data``) map ``eval_chunk_size`` clients at once
(:meth:`Execution.eval_chunk`): on CPU one (W's evaluation as vmap + scan, batch
32: 1.2 s one client at a time, each running only its own batches, against 10.7 s
for all 100 vmapped), elsewhere the chunk size (or every client).
"""

import dataclasses

import jax

PARALLELISM = ("vmap", "sequential")
STEP_LOOPS = ("scan", "python")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Execution:
  """How a cohort's clients run.

  Attributes:
    parallelism: ``"vmap"`` (clients stacked on a leading axis) or
      ``"sequential"`` (one client at a time, no client axis).
    step_loop: ``"scan"`` (local steps inside one compiled loop: one client's
      active steps, or every step of a vmapped chunk) or ``"python"`` (each
      step a jitted call; steps that are no-ops for every client of a chunk
      are skipped).
    chunk_size: with ``vmap``, clients per chunk (``None``: whole cohort).
    num_devices: with ``vmap`` + ``scan``, shard the cohort axis over the first
      ``num_devices`` local devices (``None`` or 1: no sharding).
    lanes: with ``vmap`` + ``scan``, pack the cohort's clients onto this many
      vmapped lanes (:mod:`fedjax_pfl.core.lanes`: a lane that finishes its
      client takes the next one, longest first) instead of padding every
      client to the cohort's longest; ``None``: no packing. Same results.
    eval_chunk_size: with ``vmap``, clients mapped at once by the passes over
      every client (evaluation, ``personalize_with_data``); ``None``: the
      backend's measured default (:meth:`eval_chunk`). Same results.
  """
  parallelism: str = "sequential"
  step_loop: str = "python"
  chunk_size: int | None = None
  num_devices: int | None = None
  lanes: int | None = None
  eval_chunk_size: int | None = None

  def eval_chunk(self, num_clients: int, backend: str | None = None) -> int:
    """Clients mapped at once by a pass over ``num_clients`` clients under
    vmap: ``eval_chunk_size``; if ``None``, 1 on the CPU backend (module
    docstring), else ``chunk_size`` or all ``num_clients``."""
    if self.eval_chunk_size is not None:
      return min(self.eval_chunk_size, num_clients)
    if (backend or jax.default_backend()) == "cpu":
      return 1
    return min(self.chunk_size or num_clients, num_clients)

  @property
  def fused(self) -> bool:
    """True when a whole round is one traced program (vmap + scan)."""
    return self.parallelism == "vmap" and self.step_loop == "scan"

  @property
  def supports_run_batching(self) -> bool:
    """True when several runs can be vmapped into one program: vmap + scan on
    one device of one process."""
    return self.fused and (self.num_devices or 1) == 1 and jax.process_count() == 1

  def validate(self) -> None:
    """Raises ValueError naming the field and its allowed values."""
    if self.parallelism not in PARALLELISM:
      raise ValueError(f"system.parallelism={self.parallelism!r}; allowed: {PARALLELISM}")
    if self.step_loop not in STEP_LOOPS:
      raise ValueError(f"system.step_loop={self.step_loop!r}; allowed: {STEP_LOOPS}")
    if self.chunk_size is not None and self.chunk_size < 1:
      raise ValueError(f"system.chunk_size={self.chunk_size}; allowed: >= 1 or None")
    if self.eval_chunk_size is not None and self.eval_chunk_size < 1:
      raise ValueError(f"system.eval_chunk_size={self.eval_chunk_size}; allowed: >= 1 or None")
    if self.lanes is not None:
      if self.lanes < 1:
        raise ValueError(f"system.lanes={self.lanes}; allowed: >= 1 or None")
      if not self.fused:
        raise ValueError(f"system.lanes={self.lanes} with system.parallelism="
                         f"{self.parallelism!r}, system.step_loop={self.step_loop!r}; allowed: "
                         "lanes only with vmap + scan")
      if self.chunk_size is not None:
        raise ValueError(f"system.lanes={self.lanes} with system.chunk_size="
                         f"{self.chunk_size}; allowed: one of the two (lanes bound the "
                         "clients vmapped at once)")
    if self.num_devices is not None:
      have = jax.device_count()
      if not 1 <= self.num_devices <= have:
        raise ValueError(f"system.num_devices={self.num_devices}; allowed: 1..{have}")
    if jax.process_count() > 1 and not self.fused:
      raise ValueError(f"system.parallelism={self.parallelism!r}, system.step_loop="
                       f"{self.step_loop!r} with {jax.process_count()} processes; allowed: "
                       "vmap + scan (the whole round is one program over the global mesh)")


EVAL_BATCH_SIZES = {"cpu": 32}  # measured (module docstring); other backends: 256


def default_eval_batch_size(backend: str | None = None) -> int:
  """Test examples per evaluation forward pass when ``train.eval_batch_size``
  is ``None`` (auto): 32 on the CPU backend, 256 elsewhere (module docstring).

  Args:
    backend: a JAX backend name (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None``:
      ``jax.default_backend()``.
  """
  return EVAL_BATCH_SIZES.get(backend or jax.default_backend(), 256)


def default_execution(backend: str | None = None) -> Execution:
  """Measured default per JAX backend: CPU one client at a time, its active
  steps in one compiled loop; accelerators (and any multi-process run) vmap +
  scan with the cohort sharded over every device of every process."""
  backend = backend or jax.default_backend()
  if backend == "cpu" and jax.process_count() == 1:
    return Execution(parallelism="sequential", step_loop="scan")
  return Execution(parallelism="vmap", step_loop="scan", num_devices=jax.device_count())
