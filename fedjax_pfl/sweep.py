"""Sweeps: many experiment cells, resumable, one results file, paper tables.

A sweep config is a Python file defining ``get_sweep(smoke: bool) -> Sweep``
(see ``experiments/configs/``). :func:`run_sweep` runs the cells in sequence;
a cell whose ``summary.json`` exists is skipped, and an interrupted cell
resumes from its last checkpoint, so re-running the same command continues a
sweep. Results go to ``<out>/results.jsonl`` (one line per finished cell).
:func:`render_report` groups cells into the paper's table (mean ± std over
seeds, the paper's number and the difference) as Markdown and a PNG.
"""

import dataclasses
import fnmatch
import importlib.util
import os
import sys
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from fedjax_pfl import config as config_lib
from fedjax_pfl import io


class Cell(NamedTuple):
  """One run of a sweep: a unique ``name``, its config, and the labels that
  place it in the table (``row``, ``column``; seeds are averaged)."""
  name: str
  config: config_lib.ExperimentConfig
  row: str
  column: str


class Sweep(NamedTuple):
  """A published table or figure to reproduce.

  Attributes:
    name: file stem of the results.
    title: what it reproduces (paper, table/figure).
    cells: the runs.
    metric: summary key reported (e.g. ``best_accuracy``, FL-bench's "Max
      Accuracy"; ``best_client_mean_accuracy`` for Fling's protocol).
    paper: ``{(row, column): value in %}`` published numbers, or empty.
    plot: optional ``(results, sweep_out_dir, out_png)`` function for figures
      (it may read each cell's ``cells/<name>/metrics.jsonl``).
    scale: factor applied to the metric in the table (100: fractions as %).
  """
  name: str
  title: str
  cells: Sequence[Cell]
  metric: str = "best_accuracy"
  paper: dict = {}
  plot: Callable[..., None] | None = None
  scale: float = 100.0


def load_sweep(path: str, smoke: bool = False) -> Sweep:
  """Imports a sweep config file and calls its ``get_sweep(smoke)``.

  Raises:
    ConfigError: a missing file, a module that raises (named with the error),
      no ``get_sweep``, duplicate cell names or an invalid cell config.
  """
  if not os.path.exists(path):
    raise config_lib.ConfigError(f"sweep config {path!r} does not exist")
  folder = os.path.dirname(os.path.abspath(path))
  if folder not in sys.path:
    sys.path.insert(0, folder)  # configs import their sibling `_common.py`
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  if spec is None or spec.loader is None:
    raise config_lib.ConfigError(f"sweep config {path!r} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
      raise config_lib.ConfigError(f"sweep config {path!r} defines no get_sweep(smoke)")
    sweep = module.get_sweep(smoke=smoke)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"sweep config {path!r}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  (any error of user code)
    raise config_lib.ConfigError(f"sweep config {path!r} raised {type(e).__name__}: "
                                 f"{' '.join(str(e).split())}") from None
  if not isinstance(sweep, Sweep):
    raise config_lib.ConfigError(f"sweep config {path!r}: get_sweep returned "
                                 f"{type(sweep).__name__}; allowed: a Sweep")
  names = [c.name for c in sweep.cells]
  if len(set(names)) != len(names):
    raise config_lib.ConfigError(f"sweep {sweep.name}: duplicate cell names")
  for cell in sweep.cells:
    config_lib.validate(cell.config)  # every cell checked before any compute
  return sweep


def customize(sweep: Sweep, overrides: Sequence[str] = (),
              cells: Sequence[str] = ()) -> Sweep:
  """A reduced or modified sweep from the same config.

  Args:
    sweep: the loaded sweep.
    overrides: ``section.field=value`` items (``config.apply_overrides``)
      applied to every cell; an item addressed to an algorithm by name (e.g.
      ``fedobp.quantile=0.999``) only to that algorithm's cells.
    cells: ``fnmatch`` patterns on cell names; only matching cells are kept
      (all when empty).

  Returns:
    The sweep with the kept cells, each re-validated.

  Raises:
    ConfigError: a bad override, or patterns that match no cell.
  """
  from fedjax_pfl import algorithms
  kept = [c for c in sweep.cells
          if not cells or any(fnmatch.fnmatchcase(c.name, p) for p in cells)]
  if not kept:
    raise config_lib.ConfigError(f"--cells {list(cells)} match no cell of sweep {sweep.name}; "
                                 f"cells are e.g. {[c.name for c in sweep.cells[:3]]}")
  out = []
  for c in kept:
    mine = [o for o in overrides if not (
        o.split(".", 1)[0] in algorithms.REGISTRY and o.split(".", 1)[0] != c.config.algorithm)]
    cfg = config_lib.validate(config_lib.apply_overrides(c.config, mine))
    out.append(c._replace(config=cfg))
  return sweep._replace(cells=out)


def check_out_folder(out: str, settings: dict) -> None:
  """Refuses to mix runs of different settings (overrides, smoke) in one
  sweep folder: the first run records them in ``<out>/sweep.json``.

  Raises:
    ConfigError: ``out`` holds a sweep run with other settings.
  """
  path = os.path.join(out, "sweep.json")
  if os.path.exists(path):
    before = io.read_json(path)
    if before != settings:
      raise config_lib.ConfigError(
          f"{out} holds a sweep run with settings {before}, not {settings}; use another --out")
    return
  os.makedirs(out, exist_ok=True)
  io.write_json_atomic(path, settings)


def run_sweep(sweep: Sweep, out: str, *, progress: bool = False,
              log: Callable[[str], None] = print, batch: bool = True) -> list[dict]:
  """Runs every unfinished cell; returns all results (one dict per cell).

  With ``batch`` (default), fresh cells that differ only in ``train.seed``,
  ``train.lr`` and the algorithm's batchable fields (FedOBP's quantile) run as
  ONE compiled program (``experiment.run_batch``) when their execution allows
  it (vmap + scan on one device: accelerators, or set explicitly); otherwise,
  and for cells that resume from a checkpoint, one cell at a time."""
  from fedjax_pfl import experiment
  summaries: dict[int, dict] = {}
  groups: dict[str, list[int]] = {}
  for i, cell in enumerate(sweep.cells):
    workdir = os.path.join(out, "cells", cell.name)
    summary_path = os.path.join(workdir, "summary.json")
    if os.path.exists(summary_path):
      summaries[i] = io.read_json(summary_path)
    elif batch and not os.path.exists(workdir):
      key = experiment.batch_key(cell.config)
      if key is not None:
        groups.setdefault(key, []).append(i)
  batch_of = {i: g for g in groups.values() if len(g) > 1 for i in g}
  results, batched = [], set()
  for i, cell in enumerate(sweep.cells):
    tag = f"[{i + 1}/{len(sweep.cells)}] {cell.name}"
    if i in summaries:
      log(f"{tag}: done" + (" (in a batch)" if i in batched else ", skipped"))
    elif i in batch_of:
      group = batch_of[i]
      log(f"{tag}: running with {[sweep.cells[j].name for j in group[1:]]} "
          f"({len(group)} runs in one program)")
      done = experiment.run_batch([sweep.cells[j].config for j in group],
                                  [os.path.join(out, "cells", sweep.cells[j].name)
                                   for j in group], progress=progress)
      summaries.update(zip(group, done))
      batched.update(group)
    else:
      log(f"{tag}: running")
      summaries[i] = experiment.run(cell.config, os.path.join(out, "cells", cell.name),
                                    progress=progress, resume=True)
    results.append({"cell": cell.name, "row": cell.row, "column": cell.column,
                    "seed": cell.config.train.seed, "protocol": cell.config.protocol,
                    **summaries[i]})
    io.write_jsonl_atomic(os.path.join(out, "results.jsonl"), results)
  return results


def table(sweep: Sweep, results: Sequence[dict], *, smoke: bool = False) -> tuple[str, dict]:
  """Markdown table: per (row, column) mean ± std over seeds (population std,
  ``np.std``; shown from 2 seeds on) of ``sweep.scale * sweep.metric``, the
  paper's value and the difference. The ``protocol`` column states the
  reference protocol(s) the row's runs used (``ExperimentConfig.protocol``;
  ``none``: our defaults; ``?`` for results recorded without it).

  With ``smoke`` (the CI size, other data than the paper's), columns are
  labelled with the datasets actually run and neither the paper's numbers
  nor a difference to them are shown."""
  groups: dict[tuple[str, str], list[float]] = {}
  for r in results:
    groups.setdefault((r["row"], r["column"]), []).append(sweep.scale * r[sweep.metric])
  rows = list(dict.fromkeys(r["row"] for r in results))
  cols = list(dict.fromkeys(r["column"] for r in results))
  protocols = {row: ", ".join(dict.fromkeys(r.get("protocol", "?") for r in results
                                            if r["row"] == row)) for row in rows}
  if smoke:
    ran = {col: sorted({r.get("dataset", "?") for r in results if r["column"] == col})
           for col in cols}
    head = ("| method | protocol | " + " | ".join(
        f"ours, smoke run on {', '.join(ran[c])} (stands for: {c})" for c in cols) + " |")
    sep = "|---|---|" + "---|" * len(cols)
  else:
    head = ("| method | protocol | "
            + " | ".join(f"{c} (ours) | {c} (paper) | Δ" for c in cols) + " |")
    sep = "|---|---|" + "---|---|---|" * len(cols)
  lines, stats = [head, sep], {}
  for row in rows:
    cells = []
    for col in cols:
      vals = groups.get((row, col))
      paper = sweep.paper.get((row, col))
      if not vals:
        cells.append("–" if smoke else "– | – | –")
        continue
      mean, std = float(np.mean(vals)), float(np.std(vals))
      stats[(row, col)] = (mean, std, len(vals))
      ours = (f"{mean:.2f} ({std:.2f}, n={len(vals)})" if len(vals) > 1
              else f"{mean:.2f} (n=1)")  # no spread to report from one seed
      if smoke:
        cells.append(ours)
      else:
        cells.append(f"{ours} | {paper:.2f} | {mean - paper:+.2f}" if paper is not None
                     else f"{ours} | – | –")
    lines.append(f"| {row} | {protocols[row]} | " + " | ".join(cells) + " |")
  return "\n".join(lines), stats


def render_report(sweep: Sweep, results: Sequence[dict], out_md: str, sweep_out: str,
                  note: str = "", *, smoke: bool = False) -> str:
  """Writes the Markdown report (and the sweep's PNG, if it has a plot).

  ``smoke``: the CI size; the report says so and leaves the paper's numbers out
  (:func:`table`)."""
  text, _ = table(sweep, results, smoke=smoke)
  if smoke:
    note = ("Smoke size (CI): tiny runs on other data than the paper's; not comparable to "
            "the published numbers, which are left out." + (f"\n\n{note}" if note else ""))
  sizes = sorted({(r["dataset"], r["rounds"]) for r in results})
  unit = "%" if sweep.scale == 100.0 else f"x{sweep.scale:g}"
  body = (f"# {sweep.title}\n\n{note}\n\nMetric: `{sweep.metric}` ({unit}), mean (std, n seeds; "
          "the std from 2 seeds on). "
          f"Runs: {', '.join(f'{d}, {n} rounds' for d, n in sizes)}.\n\n{text}\n")
  io.write_text_atomic(out_md, body)
  if sweep.plot is not None:
    sweep.plot(list(results), sweep_out, os.path.splitext(out_md)[0] + ".png")
  return body


def with_fields(config: config_lib.ExperimentConfig, **sections: dict[str, Any]):
  """``config`` with ``section={field: value}`` replaced (helper for configs)."""
  for section, fields in sections.items():
    config = dataclasses.replace(config, **{section: dataclasses.replace(
        getattr(config, section), **fields)})
  return config
