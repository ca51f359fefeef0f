"""Command line: ``fedjax-pfl run | compare | report | sweep | memory | list``.

Run ``fedjax-pfl <command> --help`` for every option with its default and allowed values.

Invalid values, unusable paths and corrupt files stop with one line
``error: <field or file> ...; allowed: ...`` and exit status 2 before any
compute; a diverged run exits 3; Ctrl-C exits 130 naming the resume command.
"""

import argparse
import dataclasses
import os
import sys

from fedjax_pfl import algorithms, io, protocols, runinfo
from fedjax_pfl import config as config_lib
from fedjax_pfl.errors import CorruptFileError, DivergenceError
from fedjax_pfl.tables import format_table  # noqa: F401  (re-exported)

# flag -> (section, field)
_FLAGS = {
    "dataset": ("data", "dataset", str), "data_dir": ("data", "data_dir", str),
    "source": ("data", "source", str), "partition": ("data", "partition", str),
    "alpha": ("data", "alpha", float), "clients": ("data", "num_clients", int),
    "test_ratio": ("data", "test_ratio", float),
    "max_examples": ("data", "max_examples", int),
    "train_per_client": ("data", "train_per_client", int),
    "test_per_client": ("data", "test_per_client", int),
    "participation": ("train", "participation", float), "rounds": ("train", "rounds", int),
    "local_epochs": ("train", "local_epochs", int), "batch_size": ("train", "batch_size", int),
    "lr": ("train", "lr", float), "momentum": ("train", "momentum", float),
    "weight_decay": ("train", "weight_decay", float), "seed": ("train", "seed", int),
    "eval_every": ("train", "eval_every", int), "model": ("model", "name", str),
    "step_loop": ("system", "step_loop", str), "chunk_size": ("system", "chunk_size", int),
    "num_devices": ("system", "num_devices", int), "lanes": ("system", "lanes", int),
}
_FEDOBP_FLAGS = {"quantile": float, "norm": str, "scope": str, "score": str}


def _add_common(p: argparse.ArgumentParser) -> None:
  from fedjax_pfl.cli_help import flag_help
  for flag, (section, field, typ) in _FLAGS.items():
    p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None,
                   help=flag_help(flag, section, field))
  for flag, typ in _FEDOBP_FLAGS.items():
    p.add_argument("--" + flag, dest=flag, type=typ, default=None, help=flag_help(flag))
  p.add_argument("--protocol", default=None, choices=["none", *protocols.PROTOCOLS],
                 help="reference protocol preset: flbench = FL-bench's partition, client "
                 "stream and normalization; fling = Fling's (fedjax_pfl/protocols.py); "
                 "explicit flags and --set win over it (default: none)")
  p.add_argument("--strategy", default=None, choices=["auto", "vmap", "sequential"],
                 help="client parallelism (default: auto, measured per backend; allowed: "
                 "auto, vmap, sequential) [system.parallelism]")
  p.add_argument("--set", dest="overrides", action="append", default=[],
                 metavar="SECTION.FIELD=VALUE", help="any other config field, applied last "
                 "(repeatable; e.g. train.weight_decay=5e-4, fedobp.ema=true)")
  p.add_argument("--config", dest="config_file", metavar="FILE", default=None,
                 help="start from this config instead of the defaults: a .json/.yaml of the "
                 "config sections (like config.json) or a .py defining get_config() or "
                 "get_sweep(smoke) (a sweep config; --cell picks its cell); flags and --set "
                 "apply on top")
  p.add_argument("--cell", default=None, metavar="NAME",
                 help="with a sweep --config: the cell to run (name or fnmatch pattern)")
  p.add_argument("--print-config", action="store_true",
                 help="print the resolved config as JSON and exit without running")
  p.add_argument("--workdir", default=None, help="output folder (default: runs/<name>)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a run already in the workdir (default: refuse it)")
  p.add_argument("--no-progress", action="store_true",
                 help="no progress bar: one log line per evaluation instead (also without "
                 "a terminal)")
  g = p.add_argument_group("multi-process (jax.distributed)")
  g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                 help="coordinator address; starts jax.distributed with the two flags below")
  g.add_argument("--num-processes", type=int, default=None,
                 help="number of processes (with --coordinator)")
  g.add_argument("--process-id", type=int, default=None,
                 help="this process's id, 0..num-processes-1 (with --coordinator)")
  g.add_argument("--distributed", action="store_true",
                 help="jax.distributed.initialize() from the environment (SLURM, TPU, ...)")


def build_config(args: argparse.Namespace, algorithm: str) -> config_lib.ExperimentConfig:
  """Config from the defaults (or ``--config FILE``), the protocol preset, the
  named flags, then ``--set``."""
  from fedjax_pfl import config_files
  config = config_files.base_config(getattr(args, "config_file", None), algorithm,
                                    getattr(args, "cell", None))
  config = protocols.apply_protocol(config, getattr(args, "protocol", None))
  sections: dict[str, dict] = {}
  for flag, (section, field, _) in _FLAGS.items():
    value = getattr(args, flag)
    if value is not None:
      sections.setdefault(section, {})[field] = value
  if args.strategy is not None:
    sections.setdefault("system", {})["parallelism"] = args.strategy
  for section, fields in sections.items():
    config = dataclasses.replace(
        config, **{section: dataclasses.replace(getattr(config, section), **fields)})
  obp = {f: getattr(args, f) for f in _FEDOBP_FLAGS if getattr(args, f) is not None}
  if obp:
    if config.algorithm != "fedobp":
      raise config_lib.ConfigError(
          f"--{next(iter(obp))} applies to fedobp only (algorithm={config.algorithm})")
    config = dataclasses.replace(config, algo=dataclasses.replace(config.algo, **obp))
  return config_lib.validate(config_lib.apply_overrides(config, args.overrides))


# Flags a resumed run accepts (they cannot change what has been computed).
_RESUME_FLAGS = {"rounds": "train.rounds", "eval_every": "train.eval_every"}


def resume_overrides(args: argparse.Namespace) -> list[str]:
  """The ``--set`` items of ``run --resume``: ``--rounds`` / ``--eval-every``
  as overrides, then ``--set``.

  Raises:
    ConfigError: a flag that would change the run being resumed (named).
  """
  allowed = ("allowed with --resume: --rounds (not below the rounds run), --eval-every, "
             f"--no-progress, --set {'|'.join(config_lib.RESUME_SAFE_FIELDS)}")
  given = [f for f in (*_FLAGS, *_FEDOBP_FLAGS) if getattr(args, f) is not None]
  given += [f for f in ("algorithm", "strategy", "workdir") if getattr(args, f) is not None]
  given += ["overwrite"] if args.overwrite else []
  out = []
  for flag in given:
    if flag not in _RESUME_FLAGS:
      raise config_lib.ConfigError(
          f"--resume with --{flag.replace('_', '-')}: it would change or replace the run "
          f"being resumed; {allowed}")
    out.append(f"{_RESUME_FLAGS[flag]}={getattr(args, flag)}")
  return out + list(args.overrides)


def _run(args) -> int:
  if args.resume:
    config = runinfo.load_run_config(args.resume, resume_overrides(args))
    workdir = args.resume
  else:
    if not args.algorithm and not args.config_file:
      raise config_lib.ConfigError("--algorithm is required (or --config FILE, or --resume "
                                   "WORKDIR)")
    config = build_config(args, args.algorithm)
    workdir = args.workdir or os.path.join("runs", f"{config.data.dataset}-{config.algorithm}")
  if args.print_config:
    print(config_lib.dumps(config))
    return 0
  io.ensure_writable_dir(workdir)  # before JAX and the data load
  if not args.resume:
    runinfo.check_new_workdir(workdir, config, overwrite=args.overwrite)
  args.interrupt_hint = _resume_hint(workdir)
  from fedjax_pfl import experiment
  summary = experiment.run(config, workdir, progress=not args.no_progress,
                           resume=bool(args.resume), overwrite=args.overwrite)
  print(format_table([summary]))
  print(f"results: {workdir}")
  return 0


def _resume_hint(workdir: str):
  def hint() -> str:
    if os.path.exists(os.path.join(workdir, "config.json")):
      return f"continue the run in {workdir} with: fedjax-pfl run --resume {workdir}"
    return f"nothing was written to {workdir} yet; run the same command again"
  return hint


def _compare(args) -> int:
  names = [algorithms.canonical_name(a) for a in args.algorithms.split(",")]
  configs = [build_config(args, name) for name in names]  # validate all before compute
  if args.print_config:
    print("[" + ",\n".join(config_lib.dumps(c) for c in configs) + "]")
    return 0
  root = args.workdir or os.path.join("runs", f"{configs[0].data.dataset}-compare")
  for config in configs:
    workdir = os.path.join(root, config.algorithm)
    io.ensure_writable_dir(workdir)
    runinfo.check_new_workdir(workdir, config, overwrite=args.overwrite)
  from fedjax_pfl import experiment
  summaries = []
  for config in configs:
    workdir = os.path.join(root, config.algorithm)
    args.interrupt_hint = _resume_hint(workdir)
    summaries.append(experiment.run(config, workdir, progress=not args.no_progress,
                                    overwrite=args.overwrite))
  table = format_table(summaries)
  io.write_text_atomic(os.path.join(root, "comparison.md"), table + "\n")
  from fedjax_pfl.plots import comparison_plot
  comparison_plot([os.path.join(root, c.algorithm) for c in configs],
                  os.path.join(root, "comparison.png"))
  print(table)
  print(f"results: {root}")
  return 0


def _report(args) -> int:
  from fedjax_pfl.plots import find_runs, report
  try:
    find_runs(args.workdirs)  # every input holds a finished run, before --out is created
    io.ensure_writable_dir(args.out, "--out")
    table = report(args.workdirs, args.out)
  except FileNotFoundError as e:
    raise config_lib.ConfigError(str(e)) from None
  print(table)
  print(f"report: {os.path.join(args.out, 'report.md')}, {os.path.join(args.out, 'report.png')}")
  return 0


def _sweep(args) -> int:
  from fedjax_pfl import sweep as sweep_lib
  sw = sweep_lib.load_sweep(args.config, smoke=args.smoke)
  total = len(sw.cells)
  sw = sweep_lib.customize(sw, args.overrides, args.cells)
  out = args.out or os.path.join("runs", sw.name + ("-smoke" if args.smoke else ""))
  note = args.note
  if args.overrides or args.cells:
    note = (f"{note}\n\n" if note else "") + (
        f"Reduced/modified run: {len(sw.cells)} of {total} cells"
        + (f" (cells {', '.join(args.cells)})" if args.cells else "")
        + (f"; overrides: {', '.join(f'`{o}`' for o in args.overrides)}" if args.overrides
           else "") + ".")
  report = args.report or os.path.join(out, "report.md")
  io.ensure_writable_dir(os.path.dirname(os.path.abspath(report)), "--report folder")
  if not args.report_only:
    io.ensure_writable_dir(out, "--out")
    sweep_lib.check_out_folder(out, {"config": os.path.basename(args.config),
                                     "smoke": args.smoke, "overrides": list(args.overrides)})
  if args.report_only:
    path = os.path.join(out, "results.jsonl")
    if not os.path.isfile(path):
      raise config_lib.ConfigError(f"--report-only: no {path}; allowed: the --out folder of a "
                                   "sweep that has run")
    results = io.read_jsonl(path)
  else:
    args.interrupt_hint = lambda: f"continue the sweep in {out} by running the same command again"
    results = sweep_lib.run_sweep(sw, out, progress=not args.no_progress,
                                  batch=not args.no_batch)
  body = sweep_lib.render_report(sw, results, report, out, note=note, smoke=args.smoke)
  print(body)
  print(f"report: {report}")
  return 0


def _memory(args) -> int:
  from fedjax_pfl.scaling import check_memory_args, format_bytes, memory_estimate
  check_memory_args(algorithm=args.algorithm, dataset=args.dataset, num_clients=args.clients,
                    devices=args.devices, participation=args.participation,
                    batch_size=args.batch_size, model=args.model,
                    max_client_examples=args.max_client_examples)
  try:
    est = memory_estimate(algorithm=args.algorithm, dataset=args.dataset,
                          num_clients=args.clients, devices=args.devices,
                          participation=args.participation, batch_size=args.batch_size,
                          model=args.model, data_placement=args.data_placement,
                          max_client_examples=args.max_client_examples)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  print(f"{est['algorithm']} on {est['dataset']} ({est['model']}, {est['params']:,} params), "
        f"N={est['num_clients']:,} clients, {est['devices']} device(s)")
  for key in ("server_bytes", "client_state_bytes", "client_state_per_device", "data_bytes",
              "data_per_device", "step_working_bytes", "total_per_device"):
    print(f"  {key:24s} {format_bytes(est[key])}")
  print(f"  client state split over devices: {est['client_state_sharded']}; clients in "
        f"flight per device: {est['cohort_per_device']}")
  return 0


def _list(args) -> int:
  del args
  for name, spec in sorted(algorithms.REGISTRY.items()):
    print(f"{name:10s} {spec.description}")
  return 0


def make_parser() -> argparse.ArgumentParser:
  from fedjax_pfl import __version__
  parser = argparse.ArgumentParser(
      prog="fedjax-pfl", description="fedjax-pfl: a vectorized JAX simulator for personalized "
      "federated learning. Commands: run, compare, report, sweep, memory, list; "
      "'fedjax-pfl COMMAND --help' lists each option with its default and allowed values.")
  parser.add_argument("--version", action="version", version=f"fedjax-pfl {__version__}")
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="run one algorithm",
                       description="Run one algorithm; writes config.json, metrics.jsonl, "
                       "metrics.csv, tb/ (TensorBoard), summary.json/.md, PNG plots and "
                       "checkpoints/ into --workdir.")
  run.add_argument("--algorithm", help="algorithm name (required unless --config or --resume "
                   "gives it; allowed: " + ", ".join(sorted(algorithms.REGISTRY))
                   + "; `fedjax-pfl list` describes them)")
  run.add_argument("--resume", metavar="WORKDIR", default=None,
                   help="continue the run in WORKDIR from its latest intact checkpoint (with "
                        "its config.json); only --rounds (upward), --eval-every and --set "
                        f"{'|'.join(config_lib.RESUME_SAFE_FIELDS)} may change")
  _add_common(run)
  run.set_defaults(func=_run)
  cmp = sub.add_parser("compare", help="run several algorithms on the same data",
                       description="Run several algorithms on the same data and settings; "
                       "writes one run folder per algorithm, comparison.md and "
                       "comparison.png (pooled and client-mean accuracy) into --workdir.")
  cmp.add_argument("--algorithms", default="fedobp,fedavg,local",
                   help="comma-separated algorithm names (default: fedobp,fedavg,local; "
                   "allowed: see `fedjax-pfl list`)")
  _add_common(cmp)
  cmp.set_defaults(func=_compare)
  rep = sub.add_parser("report", help="compare finished runs: one table and one plot",
                       description="Compare finished runs: report.md (one row per run, "
                       "keyed by the settings that differ) and report.png (pooled and "
                       "client-mean accuracy). Warns when the runs differ in data, model or "
                       "training settings.")
  rep.add_argument("workdirs", nargs="+", metavar="FOLDER",
                   help="run workdirs, compare folders or sweep folders")
  rep.add_argument("--out", default="runs/report", help="output folder (default runs/report)")
  rep.set_defaults(func=_report)
  swp = sub.add_parser("sweep", help="run a published table/figure config (resumable)")
  swp.add_argument("config", help="e.g. experiments/configs/fedobp_table4.py")
  swp.add_argument("--out", default=None, help="sweep folder (default runs/<name>)")
  swp.add_argument("--smoke", action="store_true", help="the tiny CI size of every cell")
  swp.add_argument("--report", default=None, help="Markdown path (default <out>/report.md)")
  swp.add_argument("--report-only", action="store_true", help="render from results.jsonl")
  swp.add_argument("--note", default="", help="text put under the report's title")
  swp.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override for every cell (e.g. train.rounds=20); "
                   "<algorithm>.<field> only for that algorithm's cells")
  swp.add_argument("--cells", action="append", default=[], metavar="PATTERN",
                   help="run only cells whose name matches (fnmatch, e.g. '*-a0.1-s0')")
  swp.add_argument("--no-batch", "--no-batch-seeds", dest="no_batch", action="store_true",
                   help="run every cell on its own (by default cells that differ only in "
                   "the seed, learning rate or batchable algorithm fields such as FedOBP's "
                   "quantile share one program where the execution is vmap + scan)")
  swp.add_argument("--no-progress", action="store_true",
                   help="no progress bar: one log line per evaluation instead")
  swp.set_defaults(func=_sweep)
  mem = sub.add_parser("memory", help="memory needed per device for N clients")
  mem.add_argument("--algorithm", default="fedobp",
                   help="algorithm (default: %(default)s; allowed: see `fedjax-pfl list`)")
  mem.add_argument("--dataset", default="fashion_mnist",
                   help="dataset (default: %(default)s; allowed: "
                   + _choices_text("datasets") + ")")
  mem.add_argument("--clients", type=int, default=100,
                   help="number of clients N (default: %(default)s; allowed: >= 1)")
  mem.add_argument("--devices", type=int, default=1,
                   help="devices of the clients mesh axis (default: %(default)s)")
  mem.add_argument("--participation", type=float, default=0.1,
                   help="share of clients per round (default: %(default)s; allowed: (0, 1])")
  mem.add_argument("--batch-size", type=int, default=32,
                   help="local batch size (default: %(default)s)")
  mem.add_argument("--model", default="auto",
                   help="model (default: %(default)s; allowed: " + _choices_text("models") + ")")
  mem.add_argument("--data-placement", default="replicated", choices=["replicated", "by_client"],
                   help="dataset layout (default: %(default)s; allowed: replicated, by_client)")
  mem.add_argument("--max-client-examples", type=int, default=None,
                   help="train + test examples of the largest client (by_client layout)")
  mem.set_defaults(func=_memory)
  lst = sub.add_parser("list", help="list algorithms")
  lst.set_defaults(func=_list)
  return parser


def _choices_text(name: str) -> str:
  from fedjax_pfl.cli_help import choices_text
  return choices_text(name)


def init_distributed(args) -> None:
  """Starts JAX's distributed runtime when asked (before any other JAX call)."""
  if getattr(args, "coordinator", None):
    if args.num_processes is None or args.process_id is None:
      raise config_lib.ConfigError("--coordinator needs --num-processes and --process-id")
    if not 0 <= args.process_id < args.num_processes:
      raise config_lib.ConfigError(f"--process-id={args.process_id}; allowed: "
                                   f"0..{args.num_processes - 1}")
    import jax
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)
  elif getattr(args, "distributed", False):
    import jax
    jax.distributed.initialize()


def main(argv: list[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0 ok, 2 bad input or
  files, 3 diverged, 130 interrupted)."""
  args = make_parser().parse_args(argv)
  from fedjax_pfl.data import DataError, PartitionError
  try:
    init_distributed(args)
    return args.func(args)
  except (config_lib.ConfigError, CorruptFileError, DataError, PartitionError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except DivergenceError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  except KeyboardInterrupt:
    hint = getattr(args, "interrupt_hint", None)
    print("interrupted" + (f": {hint()}" if hint else ""), file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
