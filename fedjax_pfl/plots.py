"""PNG plots of runs (matplotlib, Agg backend) and the multi-run report.

Every plot over rounds has integer round ticks, a title that names the run
(algorithm, dataset, partition α, N clients, seed) or the runs' common
settings, and a legend. Curves of several runs cycle through line styles and
markers and are drawn thinner on top of thicker ones, so identical runs stay
visible; a curve equal to an earlier one says so in the legend.
"""

import json
import os
import sys
from typing import Sequence

from fedjax_pfl import io, outputs

_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def integer_rounds(ax, rounds: Sequence[int] | None = None) -> None:
  """Integer ticks on the x axis (rounds): the evaluated ``rounds`` themselves
  when there are at most 12, else round numbers (steps of 1, 2, 5, 10)."""
  from matplotlib.ticker import MaxNLocator
  if rounds is not None and 0 < len(set(rounds)) <= 12:
    ax.set_xticks(sorted(set(rounds)))
  else:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def new_figure(xlabel: str, ylabel: str, title: str, size=(6, 4)):
  """``(fig, ax)`` with labels, title and a light grid (Agg backend); an x axis
  labelled ``round`` gets integer ticks."""
  fig, ax = _plt().subplots(figsize=size)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(alpha=0.3)
  if xlabel == "round":
    integer_rounds(ax)
  return fig, ax


def save_figure(fig, path: str, *, legend: bool = True) -> str:
  """Writes ``fig`` to ``path`` atomically (write, then rename), closes it,
  and returns ``path``. ``legend``: draw the legend of every axis that has
  labelled artists."""
  if legend:
    for ax in fig.axes:
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110, bbox_inches="tight")
  os.replace(tmp, path)
  _plt().close(fig)
  return path


def _read_config(workdir: str) -> dict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def plot_run(workdir: str) -> list[str]:
  """Writes ``accuracy.png`` (pooled and client-mean), ``loss.png`` and
  ``client_accuracy_hist.png`` from ``workdir/metrics.jsonl``; returns the
  paths written. Titles name the run (``config.json``)."""
  records = io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if not records:
    return []
  name = outputs.run_title(_read_config(workdir))
  rounds = [r["round"] for r in records]
  fig, ax = new_figure("round", "test accuracy (%)", f"Accuracy: {name}", size=(7, 4.2))
  ax.plot(rounds, [100 * r["accuracy"] for r in records], marker="o", lw=2.2,
          label="pooled (all test examples)")
  ax.plot(rounds, [100 * r["client_mean_accuracy"] for r in records], marker="s", ls="--",
          label="client mean")
  if "finetuned/accuracy" in records[0]:
    ax.plot(rounds, [100 * r["finetuned/accuracy"] for r in records], marker="^", ls=":",
            label="pooled, after fine-tuning")
  integer_rounds(ax, rounds)
  paths = [save_figure(fig, os.path.join(workdir, "accuracy.png"))]
  fig, ax = new_figure("round", "cross-entropy", f"Loss: {name}", size=(7, 4.2))
  ax.plot(rounds, [r["loss"] for r in records], marker="o", label="test loss (pooled)")
  if "client_mean_loss" in records[0]:
    ax.plot(rounds, [r["client_mean_loss"] for r in records], marker="^", ls="--",
            label="test loss (client mean)")
  if "train_loss" in records[0]:
    ax.plot(rounds, [r["train_loss"] for r in records], marker="s", ls=":",
            label="train loss (cohort)")
  integer_rounds(ax, rounds)
  paths.append(save_figure(fig, os.path.join(workdir, "loss.png")))
  per_client = records[-1].get("client_accuracy", [])
  accs = [100 * a for a in per_client if a is not None]
  empty = len(per_client) - len(accs)
  fig, ax = new_figure("test accuracy (%)", "clients",
                       f"Per-client accuracy at round {records[-1]['round']}\n{name}",
                       size=(7, 4.2))
  ax.hist(accs, bins=20, range=(0, 100), edgecolor="white",
          label=f"{len(accs)} clients with test data; {empty} without"
          + (" (not shown)" if empty else ""))
  from matplotlib.ticker import MaxNLocator
  ax.yaxis.set_major_locator(MaxNLocator(integer=True))
  paths.append(save_figure(fig, os.path.join(workdir, "client_accuracy_hist.png")))
  return paths


# -- several runs ------------------------------------------------------------------
def find_runs(paths: Sequence[str]) -> list[str]:
  """Run folders under ``paths``: a run's workdir (it has ``summary.json``), a
  ``compare`` folder (runs one level down) or a ``sweep`` folder (runs in
  ``cells/``); in the given order, a sweep's cells in ``results.jsonl``
  order, a compare folder's runs in the order they finished.

  Raises:
    FileNotFoundError: a path that holds no finished run.
    CorruptFileError: an unreadable ``summary.json`` or ``metrics.jsonl``.
  """
  found = []
  for p in paths:
    if os.path.exists(os.path.join(p, "summary.json")):
      found.append(p)
      continue
    subs = []
    for base in (p, os.path.join(p, "cells")):
      if os.path.isdir(base):
        subs += [os.path.join(base, n) for n in sorted(os.listdir(base))
                 if os.path.exists(os.path.join(base, n, "summary.json"))]
    results = os.path.join(p, "results.jsonl")
    order = ({r["cell"]: i for i, r in enumerate(io.read_jsonl(results))}
             if os.path.exists(results) else {})
    subs.sort(key=lambda d: (order.get(os.path.basename(d), len(order)),
                             os.path.getmtime(os.path.join(d, "summary.json")), d))
    if not subs:
      raise FileNotFoundError(
          f"{p}: no summary.json here, in its subfolders or in cells/ (run not finished or "
          "not a run, compare or sweep folder)")
    found += subs
  return found


# Fields that never change results or only say where things are; ``run.*`` is
# config.json's record of how a run ran (versions, digests), not a setting.
_IGNORED = ("system.", "data.data_dir", "run.")


def differing_settings(configs: Sequence[dict]) -> list[str]:
  """Flattened config fields (``data.alpha``, ``algo.quantile``, ...) whose
  values differ between runs; ``algorithm`` first. ``algo.*`` fields count
  only between runs of the same algorithm; ``system.*`` (execution, same
  results) and ``data.data_dir`` are ignored."""
  flat = [outputs.flatten_config(c) for c in configs]
  keys = list(dict.fromkeys(k for f in flat for k in f))
  out = []
  for key in keys:
    if key.startswith(_IGNORED):
      continue
    if key.startswith("algo."):
      by_alg: dict[str, set] = {}
      for f in flat:
        if key in f:
          by_alg.setdefault(f.get("algorithm"), set()).add(json.dumps(f[key]))
      if any(len(v) > 1 for v in by_alg.values()):
        out.append(key)
    elif len({json.dumps(f.get(key)) for f in flat}) > 1:
      out.append(key)
  return sorted(out, key=lambda k: (k != "algorithm", k))


def _short(key: str) -> str:
  return key.split(".", 1)[1] if key.startswith(("data.", "train.", "model.", "algo.")) else key


def run_labels(configs: Sequence[dict], keys: Sequence[str]) -> list[str]:
  """One label per run from the settings that differ (``algorithm`` always),
  e.g. ``fedobp, quantile=0.99, seed=1``."""
  labels = []
  for c in configs:
    f = outputs.flatten_config(c)
    parts = [str(c.get("algorithm", "?"))]
    parts += [f"{_short(k)}={f[k]}" for k in keys if k != "algorithm" and k in f]
    labels.append(", ".join(parts))
  return labels


def mixing_warning(keys: Sequence[str]) -> str | None:
  """The warning for runs that differ in more than the algorithm, its own
  fields and the seed (different data, model or training: not a like-for-like
  comparison), or None."""
  mixed = [k for k in keys if k != "algorithm" and not k.startswith("algo.")
           and k != "train.seed"]
  if not mixed:
    return None
  return ("runs differ in " + ", ".join(mixed) + "; rows and curves are keyed by these "
          "settings, and the accuracies are not a like-for-like comparison")


def _common_title(configs: Sequence[dict], keys: Sequence[str]) -> str:
  """What all runs share: dataset, partition α, N, seed (those that agree)."""
  c = outputs.flatten_config(configs[0])
  parts = []
  if "data.partition" not in keys and c.get("data.partition", "dirichlet") != "dirichlet":
    parts.append(f"partition={c['data.partition']}")
  for key, text in (("data.dataset", "{}"), ("data.alpha", "Dir(α={})"),
                    ("data.num_clients", "N={}"), ("train.seed", "seed={}")):
    if key not in keys and key in c:
      parts.append(text.format(c[key]))
  return ", ".join(parts)


def legend_labels(runs: Sequence[tuple[str, list[dict]]]) -> list[str]:
  """Legend entries of ``(label, records)`` runs: a run whose accuracy curves
  equal an earlier run's gets ``(= <earlier label>)``, so a hidden line is
  still accounted for."""
  seen: dict[tuple, str] = {}
  out = []
  for label, recs in runs:
    curve = tuple((r["round"], r["accuracy"], r["client_mean_accuracy"]) for r in recs)
    out.append(f"{label} (= {seen[curve]})" if curve in seen else label)
    seen.setdefault(curve, label)
  return out


def _curves_plot(runs: Sequence[tuple[str, list[dict]]], title: str, out_png: str) -> str:
  """Pooled and client-mean accuracy of several runs side by side."""
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
  labels = legend_labels(runs)
  for i, ((_, recs), label) in enumerate(zip(runs, labels)):
    style = dict(ls=_STYLES[i % len(_STYLES)], marker=_MARKERS[i % len(_MARKERS)],
                 lw=max(2.8 - 0.5 * i, 1.0), ms=max(7 - i, 3), alpha=0.85)
    rounds = [r["round"] for r in recs]
    axes[0].plot(rounds, [100 * r["accuracy"] for r in recs], label=label, **style)
    axes[1].plot(rounds, [100 * r["client_mean_accuracy"] for r in recs], label=label, **style)
  all_rounds = [r["round"] for _, recs in runs for r in recs]
  for ax, name in zip(axes, ("pooled (all test examples)", "client mean")):
    ax.set(xlabel="round", title=f"Test accuracy, {name}")
    ax.grid(alpha=0.3)
    integer_rounds(ax, all_rounds)
  axes[0].set_ylabel("test accuracy (%)")
  fig.suptitle(title)
  # One legend under both panels, so long labels never cover a curve.
  handles, names = axes[0].get_legend_handles_labels()
  ncol = 1 if max(len(n) for n in names) > 45 else min(len(names), 3)
  fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
             fontsize=8, frameon=False)
  fig.tight_layout()
  return save_figure(fig, out_png, legend=False)


def _table(summaries: Sequence[dict], labels: Sequence[str]) -> str:
  head = ("| run | rounds | final acc (pooled) | final acc (client mean) | best acc (pooled) | "
          "best round | time (s) |\n|---|---|---|---|---|---|---|")
  rows = [f"| {label} | {s['rounds']} | {100 * s['final_accuracy']:.2f} | "
          f"{100 * s['final_client_mean_accuracy']:.2f} | {100 * s['best_accuracy']:.2f} | "
          f"{s['best_round']} | {s['seconds']:.1f} |" for s, label in zip(summaries, labels)]
  return "\n".join([head, *rows])


def report(workdirs: Sequence[str], out: str, *, warn=None) -> str:
  """Compares runs: ``out/report.md`` (one table) and ``out/report.png``
  (pooled and client-mean accuracy over rounds). Returns the Markdown table.

  Args:
    workdirs: run workdirs, ``compare`` folders or ``sweep`` folders
      (:func:`find_runs`).
    out: output folder.
    warn: called with the warning text when the runs differ in data, model or
      training settings (default: print ``warning: ...`` to stderr).

  Rows and curves are labelled by the settings that differ between the runs
  (:func:`differing_settings`).

  Raises:
    FileNotFoundError: a path without a finished run.
  """
  runs = find_runs(workdirs)
  summaries, curves, configs = [], [], []
  for w in runs:
    summaries.append({**io.read_json(os.path.join(w, "summary.json")), "workdir": w})
    curves.append(io.read_jsonl(os.path.join(w, "metrics.jsonl")))
    configs.append(_read_config(w) or {"algorithm": summaries[-1]["algorithm"]})
  keys = differing_settings(configs)
  labels = run_labels(configs, keys)
  if len(set(labels)) < len(labels):  # identical settings: tell them apart by folder
    labels = [f"{lab} ({os.path.basename(os.path.normpath(w))})"
              for lab, w in zip(labels, runs)]
  warning = mixing_warning(keys)
  if warning:
    (warn or (lambda s: print(f"warning: {s}", file=sys.stderr)))(warning)
  table = _table(summaries, labels)
  common = _common_title(configs, keys)
  rows = "\n".join(f"| {label} | `{s['workdir']}` |" for label, s in zip(labels, summaries))
  os.makedirs(out, exist_ok=True)
  io.write_text_atomic(os.path.join(out, "report.md"),
                       f"# Report\n\n{'Common settings: ' + common if common else ''}\n\n"
                       + (f"**Warning:** {warning}.\n\n" if warning else "")
                       + f"{table}\n\n| run | workdir |\n|---|---|\n{rows}\n")
  _curves_plot(list(zip(labels, curves)), f"Accuracy by run ({common})" if common
               else "Accuracy by run", os.path.join(out, "report.png"))
  return table


def comparison_plot(workdirs: Sequence[str], out_png: str) -> str:
  """One combined plot of a ``compare`` run (pooled and client-mean accuracy of
  every algorithm); returns ``out_png``."""
  configs = [_read_config(w) for w in workdirs]
  keys = differing_settings(configs)
  runs = [(label, io.read_jsonl(os.path.join(w, "metrics.jsonl")))
          for label, w in zip(run_labels(configs, keys), workdirs)]
  common = _common_title(configs, keys)
  return _curves_plot(runs, f"Comparison ({common})" if common else "Comparison", out_png)
