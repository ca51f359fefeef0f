"""PNG plots of runs (matplotlib, Agg backend) and the multi-run report."""

import os
from typing import Sequence

from fedjax_pfl import io


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def new_figure(xlabel: str, ylabel: str, title: str, size=(6, 4)):
  """``(fig, ax)`` with labels, title and a light grid (Agg backend)."""
  fig, ax = _plt().subplots(figsize=size)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3)
  return fig, ax


def save_figure(fig, path: str, *, legend: bool = True) -> str:
  """Writes ``fig`` to ``path`` atomically (write, then rename), closes it,
  and returns ``path``."""
  if legend:
    fig.axes[0].legend()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110, bbox_inches="tight")
  os.replace(tmp, path)
  _plt().close(fig)
  return path


def plot_run(workdir: str) -> list[str]:
  """Writes ``accuracy.png``, ``loss.png`` and ``client_accuracy_hist.png``
  from ``workdir/metrics.jsonl``; returns the paths written."""
  records = io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if not records:
    return []
  rounds = [r["round"] for r in records]
  fig, ax = new_figure("round", "test accuracy (%)", "Accuracy")
  ax.plot(rounds, [100 * r["accuracy"] for r in records], marker="o", label="pooled")
  ax.plot(rounds, [100 * r["client_mean_accuracy"] for r in records], marker="s",
          label="client mean")
  paths = [save_figure(fig, os.path.join(workdir, "accuracy.png"))]
  fig, ax = new_figure("round", "cross-entropy", "Loss")
  ax.plot(rounds, [r["loss"] for r in records], marker="o", label="test loss (pooled)")
  if "client_mean_loss" in records[0]:
    ax.plot(rounds, [r["client_mean_loss"] for r in records], marker="^",
            label="test loss (client mean)")
  if "train_loss" in records[0]:
    ax.plot(rounds, [r["train_loss"] for r in records], marker="s", label="train loss (cohort)")
  paths.append(save_figure(fig, os.path.join(workdir, "loss.png")))
  accs = [100 * a for a in records[-1]["client_accuracy"] if a is not None]
  fig, ax = new_figure("test accuracy (%)", "clients",
                       f"Per-client accuracy at round {records[-1]['round']}")
  ax.hist(accs, bins=20, range=(0, 100))
  paths.append(save_figure(fig, os.path.join(workdir, "client_accuracy_hist.png"),
                           legend=False))
  return paths


def report(workdirs: Sequence[str], out: str) -> str:
  """Compares runs: ``out/report.md`` (one table) and ``out/report.png``
  (pooled accuracy over rounds). Returns the Markdown table.

  Raises:
    FileNotFoundError: a workdir without ``summary.json`` (not finished).
    CorruptFileError: an unreadable ``summary.json`` or ``metrics.jsonl``.
  """
  from fedjax_pfl.tables import format_table
  summaries, curves = [], []
  for w in workdirs:
    path = os.path.join(w, "summary.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{w}: no summary.json (run not finished or not a workdir)")
    summaries.append({**io.read_json(path), "workdir": w})
    curves.append(io.read_jsonl(os.path.join(w, "metrics.jsonl")))
  table = format_table(summaries)
  rows = "\n".join(f"| {s['algorithm']} | `{s['workdir']}` |" for s in summaries)
  os.makedirs(out, exist_ok=True)
  io.write_text_atomic(os.path.join(out, "report.md"),
                       f"# Report\n\n{table}\n\n| algorithm | workdir |\n|---|---|\n{rows}\n")
  fig, ax = new_figure("round", "pooled test accuracy (%)", "Accuracy by run", size=(7, 4.5))
  for s, recs in zip(summaries, curves):
    name = os.path.basename(os.path.normpath(s["workdir"]))
    label = s["algorithm"] if name == s["algorithm"] else f"{s['algorithm']} ({name})"
    ax.plot([r["round"] for r in recs], [100 * r["accuracy"] for r in recs], marker="o",
            label=label)
  save_figure(fig, os.path.join(out, "report.png"))
  return table
