"""Checkpoints of a run (the only module importing orbax).

A checkpoint at a round boundary holds the full simulation state: server
state, the stacked per-client state ``[N, ...]`` and the evaluation records so
far. Optimizer states are re-created every round and every key is derived from
(seed, stream, round, client id), so nothing else is needed to continue a run
exactly. Orbax writes each step to a temporary folder and renames it when
complete, so a run killed mid-write leaves the previous checkpoint intact.
"""

import os

import jax
import orbax.checkpoint as ocp

from fedjax_pfl.core.rounds import SimState


class Checkpointer:
  """Saves and restores :class:`SimState` plus metrics records under ``workdir/checkpoints``.

  Args:
    workdir: run folder.
    keep: number of most recent checkpoints kept (>= 1).
  """

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, state: SimState, records: list[dict], totals: dict | None = None) -> None:
    """Saves ``state`` at step ``state.round`` with the evaluation ``records``
    and running ``totals`` (e.g. communication) accumulated up to that round."""
    tree = {"server": state.server, "clients": state.clients}
    self._manager.save(state.round, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        metrics=ocp.args.JsonSave({"records": records, "totals": totals or {}})))
    self._manager.wait_until_finished()

  def latest_round(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, like: SimState) -> tuple[SimState, list[dict], dict] | None:
    """Latest checkpoint ``(state, records, totals)``, shaped like ``like``
    (e.g. the initial state); None if there is none."""
    step = self._manager.latest_step()
    if step is None:
      return None
    tree = {"server": like.server, "clients": like.clients}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), metrics=ocp.args.JsonRestore()))
    state = SimState(restored.state["server"], restored.state["clients"], int(step))
    return state, list(restored.metrics["records"]), dict(restored.metrics.get("totals", {}))

  def close(self) -> None:
    self._manager.close()


def has_checkpoint(workdir: str) -> bool:
  """True when ``workdir/checkpoints`` holds at least one finished checkpoint."""
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(name.isdigit() for name in os.listdir(folder))


__all__ = ["Checkpointer", "has_checkpoint"]
