"""Per-run output files beside ``metrics.jsonl``: CSV, TensorBoard events,
``summary.md``, and the one-line log of an evaluation.

* ``metrics.csv``: one row per evaluation, every scalar of the record
  (per-client lists such as ``client_accuracy`` are left out; ``comm_totals``
  becomes ``comm_totals/<key>`` columns). Rewritten atomically from all records
  at each evaluation, so it always equals ``metrics.jsonl``.
* ``tb/events.out.tfevents.*``: TensorBoard scalars through ``tensorboardX``
  (protobuf + numpy, no TensorFlow), step = round. Tags are grouped
  (``accuracy/pooled``, ``loss/test_pooled``, ``comm/round_uplink_MiB``,
  ``algorithm/personalized_fraction/fc1``, ...; :func:`tensorboard_tag`). A
  resumed run reopens the writer with ``purge_step`` = the first round not yet
  recorded, so TensorBoard drops the events of rounds that are run again.
  :func:`read_event_scalars` reads a file back without TensorFlow.
* ``summary.md``: the summary with fractions as percentages (2 decimals), as in
  the tables.
"""

import csv
import glob
import io as _io
import math
import os
import struct
import sys
from typing import Any

from fedjax_pfl import io

# Record keys that are bookkeeping or per-client lists, not per-round scalars.
_NOT_SCALARS = ("round", "seconds")
# Summary fields that are fractions in [0, 1] (shown as %).
_PERCENT_KEYS = ("accuracy",)

# Fixed TensorBoard tags of the common metrics (record key -> tag).
_TAGS = {
    "accuracy": "accuracy/pooled",
    "client_mean_accuracy": "accuracy/client_mean",
    "loss": "loss/test_pooled",
    "client_mean_loss": "loss/test_client_mean",
    "train_loss": "loss/train_cohort",
    "finetuned/accuracy": "accuracy/finetuned_pooled",
    "finetuned/client_mean_accuracy": "accuracy/finetuned_client_mean",
    "finetuned/loss": "loss/finetuned_pooled",
    "round_uplink_bytes": "comm/round_uplink_bytes",
    "round_downlink_bytes": "comm/round_downlink_bytes",
    "round_clients": "comm/round_clients",
    "uplink_bytes": "comm/uplink_bytes_per_client",
    "downlink_bytes": "comm/downlink_bytes_per_client",
    "uplink_values": "comm/uplink_values_per_client",
    "downlink_values": "comm/downlink_values_per_client",
    "comm_totals/uplink_MiB": "comm/total_uplink_MiB",
    "comm_totals/downlink_MiB": "comm/total_downlink_MiB",
    "comm_totals/client_rounds": "comm/total_client_rounds",
    "train_examples": "train/examples",
    "seconds": "time/seconds",
}


def flat_scalars(record: dict) -> dict[str, float]:
  """The scalars of one evaluation record, nested dicts flattened with ``/``.

  Args:
    record: a ``metrics.jsonl`` record.

  Returns:
    ``{name: float}`` in the record's key order; lists (per-client values)
    and non-numeric values are left out; ``None`` becomes NaN.
  """
  out: dict[str, float] = {}
  for key, value in record.items():
    if isinstance(value, dict):
      for k, v in flat_scalars(value).items():
        out[f"{key}/{k}"] = v
    elif isinstance(value, bool):
      out[key] = float(value)
    elif isinstance(value, (int, float)):
      out[key] = float(value)
    elif value is None:
      out[key] = math.nan
  return out


def csv_text(records: list[dict]) -> str:
  """``metrics.csv``: header ``round, seconds, <scalars sorted>``, one row per
  record (empty cell where a record lacks a column)."""
  rows = [flat_scalars(r) for r in records]
  names = sorted({k for row in rows for k in row} - set(_NOT_SCALARS))
  cols = [c for c in _NOT_SCALARS if any(c in row for row in rows)] + names
  buf = _io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(cols)
  for r, row in zip(records, rows):
    writer.writerow([r["round"] if c == "round" else _fmt_csv(row.get(c)) for c in cols])
  return buf.getvalue()


def _fmt_csv(value: float | None) -> str:
  if value is None:
    return ""
  return repr(value) if not float(value).is_integer() else str(int(value))


def write_csv(workdir: str, records: list[dict]) -> str:
  """Writes ``workdir/metrics.csv`` atomically; returns its path."""
  path = os.path.join(workdir, "metrics.csv")
  io.write_text_atomic(path, csv_text(records))
  return path


def tensorboard_tag(key: str) -> str:
  """TensorBoard tag of a flattened record key: the common metrics get fixed
  group names (``accuracy/pooled``, ``loss/train_cohort``, ``comm/...``);
  every other scalar is an algorithm metric, ``algorithm/<key>``."""
  return _TAGS.get(key, f"algorithm/{key}")


class TensorBoardLog:
  """TensorBoard scalars of one run (``workdir/tb``), step = round.

  Does nothing (``enabled`` False) when ``tensorboardX`` is not installed;
  the other outputs are unaffected.
  """

  def __init__(self, workdir: str, *, first_new_round: int | None = None):
    """Opens the writer.

    Args:
      workdir: the run's folder; events go to ``workdir/tb``.
      first_new_round: on resume, the first round not yet in ``metrics.jsonl``;
        TensorBoard purges older events from that step on (events of rounds
        logged before a crash and run again).
    """
    self.logdir = os.path.join(workdir, "tb")
    self.writer = None
    try:
      from tensorboardX import SummaryWriter
    except ImportError:  # optional at run time; a dependency of the package
      return
    # One new file per (re)start, numbered so that the order is known even
    # when two starts fall into the same second (tensorboardX names files by it).
    n = len(event_files(workdir))
    self.writer = SummaryWriter(logdir=self.logdir, purge_step=first_new_round,
                                flush_secs=10, filename_suffix=f".{n:04d}")

  @property
  def enabled(self) -> bool:
    """Whether event files are written (``tensorboardX`` is installed)."""
    return self.writer is not None

  def add(self, record: dict) -> None:
    """Writes every scalar of one evaluation record at step ``record["round"]``."""
    if self.writer is None:
      return
    step = int(record["round"])
    for key, value in flat_scalars(record).items():
      if key != "round" and math.isfinite(value):
        self.writer.add_scalar(tensorboard_tag(key), value, step)
    self.writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file (idempotent)."""
    if self.writer is not None:
      self.writer.close()
      self.writer = None


def event_files(workdir: str) -> list[str]:
  """The TensorBoard event files of a run, oldest first (by the start number
  that :class:`TensorBoardLog` appends)."""
  def start_number(path: str) -> int:
    tail = path.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else -1
  return sorted(glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*")),
                key=lambda p: (start_number(p), os.path.getmtime(p)))


def _events(path: str):
  """The ``Event`` protobufs of one event file (TFRecord framing: uint64
  length, uint32 CRC, payload, uint32 CRC), without TensorFlow; CRCs are not
  checked.

  Raises:
    ValueError: a truncated record.
  """
  from tensorboardX.proto import event_pb2
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    if pos + 12 > len(data):
      raise ValueError(f"{path}: truncated record header at byte {pos}")
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    start, end = pos + 12, pos + 12 + length
    if end + 4 > len(data):
      raise ValueError(f"{path}: truncated record at byte {pos}")
    yield event_pb2.Event.FromString(data[start:end])
    pos = end + 4


def read_event_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
  """The scalars of one TensorBoard event file: ``{tag: [(step, value), ...]}``
  in file order (no purging; see :func:`read_run_scalars`).

  Raises:
    ValueError: a truncated record.
  """
  out: dict[str, list[tuple[int, float]]] = {}
  for event in _events(path):
    for v in event.summary.value:
      if v.HasField("simple_value"):
        out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
  return out


def read_run_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """The scalars of a run as TensorBoard shows them: every event file of
  ``workdir/tb`` in start order, where a session start at step ``T`` (a
  resumed run's ``purge_step``) drops the earlier values from step ``T`` on.

  Returns:
    ``{tag: [(step, value), ...]}`` sorted by step.
  """
  out: dict[str, list[tuple[int, float]]] = {}
  for path in event_files(workdir):
    for event in _events(path):
      if event.HasField("session_log") and event.session_log.status == 1:  # START
        out = {tag: [(s, v) for s, v in vals if s < event.step] for tag, vals in out.items()}
      for v in event.summary.value:
        if v.HasField("simple_value"):
          out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
  return {tag: sorted(vals) for tag, vals in out.items()}


def format_summary_value(key: str, value: Any) -> str:
  """A summary value as shown in ``summary.md``: accuracies (fractions) as
  percentages with 2 decimals, other floats with at most 4 significant
  decimals, everything else as is."""
  if isinstance(value, float) and any(p in key for p in _PERCENT_KEYS):
    return f"{100 * value:.2f} %"
  if isinstance(value, float):
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.1f}"
  return str(value)


def summary_markdown(summary: dict, title: str = "Run summary") -> str:
  """``summary.md``: a two-column table, accuracies in % (as the tables)."""
  rows = "\n".join(f"| {k} | {format_summary_value(k, v)} |" for k, v in summary.items())
  return f"# {title}\n\n| field | value |\n|---|---|\n{rows}\n"


def run_title(config: dict) -> str:
  """One line naming a run: algorithm, dataset, partition (α), N, seed.

  Args:
    config: ``config.json`` as a dict (``config.to_dict``).
  """
  d, t = config.get("data", {}), config.get("train", {})
  part = d.get("partition", "dirichlet")
  part_text = {"dirichlet": f"Dir(α={d.get('alpha')})",
               "fling": f"Fling Dir(α={d.get('alpha')})"}.get(part, part)
  return (f"{config.get('algorithm', '?')} on {d.get('dataset', '?')}, {part_text}, "
          f"N={d.get('num_clients', '?')}, seed={t.get('seed', '?')}")


def eval_line(record: dict, *, prefix: str = "", total_rounds: int | None = None) -> str:
  """One log line per evaluation: round, pooled and client-mean accuracy (%),
  test loss, seconds since the start."""
  rounds = f"{record['round']}/{total_rounds}" if total_rounds else str(record["round"])
  parts = [f"round {rounds}", f"acc {100 * record['accuracy']:.2f}%"]
  if "client_mean_accuracy" in record:
    parts.append(f"client-mean acc {100 * record['client_mean_accuracy']:.2f}%")
  parts.append(f"loss {record['loss']:.4f}")
  if "train_loss" in record:
    parts.append(f"train loss {record['train_loss']:.4f}")
  parts.append(f"{record['seconds']:.1f} s")
  return (f"{prefix}: " if prefix else "") + ", ".join(parts)


def log_line(text: str) -> None:
  """Prints one progress line to stderr (stdout keeps the result tables)."""
  print(text, file=sys.stderr, flush=True)


def flatten_config(d: dict, prefix: str = "") -> dict[str, Any]:
  """``{"data": {"alpha": 0.1}}`` -> ``{"data.alpha": 0.1}`` (config.json)."""
  out: dict[str, Any] = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten_config(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
