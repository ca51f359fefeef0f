"""How a cohort's clients run: the execution settings and their measured defaults.

:class:`Execution` is plain configuration; :func:`fedjax_pfl.core.backend.make_backend`
turns it into the backend that maps clients.

Why the defaults differ per backend: on XLA:CPU, stepping one client at a time
from Python measured 33 ms per batch-32 CNN step, ``lax.scan`` over the same
steps 137 ms and a vmap over 10 clients 184 ms per client-step (2-core machine,
jax 0.10). On accelerators one compiled round (vmap + scan) is the fast path.
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
    step_loop: ``"scan"`` (local steps inside one compiled loop) or
      ``"python"`` (each step a jitted call; steps that are no-ops for every
      client of a chunk are skipped).
    chunk_size: with ``vmap``, clients per chunk (``None``: whole cohort).
    num_devices: with ``vmap`` + ``scan``, shard the cohort axis over the first
      ``num_devices`` local devices (``None`` or 1: no sharding).
  """
  parallelism: str = "sequential"
  step_loop: str = "python"
  chunk_size: int | None = None
  num_devices: int | None = None

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
    if self.num_devices is not None:
      have = jax.device_count()
      if not 1 <= self.num_devices <= have:
        raise ValueError(f"system.num_devices={self.num_devices}; allowed: 1..{have}")
    if jax.process_count() > 1 and not self.fused:
      raise ValueError(f"system.parallelism={self.parallelism!r}, system.step_loop="
                       f"{self.step_loop!r} with {jax.process_count()} processes; allowed: "
                       "vmap + scan (the whole round is one program over the global mesh)")


def default_execution(backend: str | None = None) -> Execution:
  """Measured default per JAX backend: CPU one client at a time, Python-stepped;
  accelerators (and any multi-process run) vmap + scan with the cohort sharded
  over every device of every process."""
  backend = backend or jax.default_backend()
  if backend == "cpu" and jax.process_count() == 1:
    return Execution(parallelism="sequential", step_loop="python")
  return Execution(parallelism="vmap", step_loop="scan", num_devices=jax.device_count())
