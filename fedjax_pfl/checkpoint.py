"""Checkpoints of a run (the only module importing orbax).

A checkpoint at a round boundary holds the full simulation state: server
state, the stacked per-client state ``[N, ...]``, the evaluation records so
far, running totals and the run's fingerprint (``runinfo.fingerprint``).
Optimizer states are re-created every round and every key is derived from
(seed, stream, round, client id), so nothing else is needed to continue a run
exactly. Orbax writes each step to a temporary folder and renames it when
complete, so a run killed mid-write leaves the previous checkpoint intact; a
checkpoint damaged on disk later is detected when restoring, moved aside to
``checkpoints/corrupt-<round>`` and the newest intact one is used.
"""

import contextlib
import os
import signal
import threading
from typing import Callable, NamedTuple

import jax
import orbax.checkpoint as ocp

from fedjax_pfl.core.rounds import SimState
from fedjax_pfl.errors import CorruptFileError


class Restored(NamedTuple):
  """A restored checkpoint.

  Attributes:
    state: the simulation state at round ``state.round``.
    records: evaluation records up to that round.
    totals: running totals (e.g. communication) up to that round.
    fingerprint: the run's fingerprint, or None (checkpoints of older versions).
    skipped: ``(round, reason)`` of newer checkpoints that were corrupt (moved
      to ``checkpoints/corrupt-<round>``).
  """
  state: SimState
  records: list
  totals: dict
  fingerprint: dict | None
  skipped: list


class Checkpointer:
  """Saves and restores :class:`SimState` plus metrics records under ``workdir/checkpoints``.

  Args:
    workdir: run folder.
    keep: number of most recent checkpoints kept (>= 1).
  """

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._keep = keep
    self._manager = self._new_manager()

  def _new_manager(self):
    options = ocp.CheckpointManagerOptions(max_to_keep=self._keep,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def save(self, state: SimState, records: list[dict], totals: dict | None = None,
           fingerprint: dict | None = None) -> None:
    """Saves ``state`` at step ``state.round`` with the evaluation ``records``,
    running ``totals`` (e.g. communication) accumulated up to that round and
    the run's ``fingerprint``."""
    tree = {"server": state.server, "clients": state.clients}
    meta = {"records": records, "totals": totals or {}}
    if fingerprint is not None:
      meta["fingerprint"] = fingerprint
    with _deferred_interrupt():
      self._manager.save(state.round, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), metrics=ocp.args.JsonSave(meta)))
      self._manager.wait_until_finished()

  def latest_round(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, like: SimState,
              check: Callable[[dict | None], None] | None = None) -> Restored | None:
    """The newest intact checkpoint, shaped like ``like`` (e.g. the initial state).

    Args:
      like: a state of the run's shapes and dtypes.
      check: called with the stored fingerprint before the state is read; it
        raises to refuse the checkpoint (e.g. written by another run).

    Returns:
      The :class:`Restored` checkpoint, or None if there is none. Corrupt newer
      checkpoints are moved to ``checkpoints/corrupt-<round>`` and listed in
      ``skipped``.

    Raises:
      CorruptFileError: every checkpoint is corrupt (names each and why).
      Whatever ``check`` raises.
    """
    tree = {"server": like.server, "clients": like.clients}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    skipped = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        meta = self._manager.restore(step, args=ocp.args.Composite(
            metrics=ocp.args.JsonRestore())).metrics
        records, totals = list(meta["records"]), dict(meta.get("totals", {}))
      except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
        skipped.append((int(step), _reason(e)))
        continue
      if check is not None:
        check(meta.get("fingerprint"))
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
      except Exception as e:  # pylint: disable=broad-except
        skipped.append((int(step), _reason(e)))
        continue
      self._set_aside([s for s, _ in skipped])
      state = SimState(restored.state["server"], restored.state["clients"], int(step))
      return Restored(state, records, totals, meta.get("fingerprint"), skipped)
    if skipped:
      raise CorruptFileError(f"no intact checkpoint in {self.directory}: " + "; ".join(
          f"round {s}: {r}" for s, r in skipped))
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves corrupt step folders out of the manager's view (kept for inspection)."""
    if not steps:
      return
    self._manager.close()
    for step in steps:
      src = os.path.join(self.directory, str(step))
      dst = os.path.join(self.directory, f"corrupt-{step}")
      n = 1
      while os.path.exists(dst):
        n += 1
        dst = os.path.join(self.directory, f"corrupt-{step}.{n}")
      if os.path.exists(src):
        os.replace(src, dst)
    self._manager = self._new_manager()

  def close(self) -> None:
    with _deferred_interrupt():
      self._manager.wait_until_finished()
      self._manager.close()


@contextlib.contextmanager
def _deferred_interrupt():
  """Holds back Ctrl-C (SIGINT) while a checkpoint is written and raises it
  afterwards: an interrupted orbax write leaves a half-written checkpoint and
  background threads that fail at interpreter exit. Main thread only."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if received:
    raise KeyboardInterrupt


def _reason(e: Exception) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:160]}"


def has_checkpoint(workdir: str) -> bool:
  """True when ``workdir/checkpoints`` holds at least one finished checkpoint."""
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


__all__ = ["Checkpointer", "Restored", "has_checkpoint"]
