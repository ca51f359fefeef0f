"""The researcher's view: help texts with defaults and choices, --version,
--config / --print-config, log lines, metrics.csv, TensorBoard events,
summary.md in %, plots, report over compare folders, sweep smoke tables."""

import csv
import dataclasses
import json
import math
import os

import pytest

import fedjax_pfl
from fedjax_pfl import cli, config, outputs, plots, sweep
from fedjax_pfl.algorithms import REGISTRY

SMALL = ["--dataset", "digits", "--clients", "5", "--rounds", "2", "--eval-every", "1",
         "--local-epochs", "1", "--no-progress"]


def _subparsers():
  parser = cli.make_parser()
  action = next(a for a in parser._actions if a.dest == "command")
  return parser, action.choices


# -- help ------------------------------------------------------------------------
def test_every_option_has_a_help_line():
  _, subs = _subparsers()
  for name, sub in subs.items():
    for action in sub._actions:
      if action.dest != "help":
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_run_help_shows_config_defaults_and_registry_choices():
  _, subs = _subparsers()
  helps = {a.dest: a.help for a in subs["run"]._actions}
  sections = {"data": config.DataConfig(), "model": config.ModelConfig(),
              "train": config.TrainConfig(), "system": config.SystemConfig()}
  for flag, (section, field, _) in cli._FLAGS.items():
    default = getattr(sections[section], field)
    assert f"default: {default}" in helps[flag], (flag, helps[flag])
    assert f"[{section}.{field}]" in helps[flag]
  obp = REGISTRY["fedobp"].config_cls()
  for flag in cli._FEDOBP_FLAGS:
    assert f"default: {getattr(obp, flag)}" in helps[flag], helps[flag]
  from fedjax_pfl.algorithms.fedobp import SCORES
  from fedjax_pfl.data import KNOWN_DATASETS, PARTITIONS
  from fedjax_pfl.models import MODELS
  from fedjax_pfl.ops.threshold import NORMS
  for flag, values in (("dataset", KNOWN_DATASETS), ("partition", PARTITIONS),
                       ("model", ["auto", *MODELS]), ("norm", NORMS), ("score", SCORES),
                       ("scope", ["all", "classifier"]), ("step_loop", ["scan", "python"]),
                       ("algorithm", REGISTRY), ("strategy", ["vmap", "sequential"])):
    for value in values:
      assert value in helps[flag], (flag, value)


def test_top_level_help_has_no_rest_markup(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "``" not in out and "`" not in out and "run, compare, report" in out


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--version"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == f"fedjax-pfl {fedjax_pfl.__version__}"


# -- config files ----------------------------------------------------------------
def test_print_config_shows_flags_and_overrides_without_running(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  assert cli.main(["run", "--algorithm", "fedobp", *SMALL, "--quantile", "0.9",
                   "--set", "train.lr=0.05", "--workdir", workdir, "--print-config"]) == 0
  cfg = json.loads(capsys.readouterr().out)
  assert cfg["algo"]["quantile"] == 0.9 and cfg["train"]["lr"] == 0.05
  assert cfg["data"]["num_clients"] == 5 and cfg["data"]["test_ratio"] == 0.25  # a default
  assert not os.path.exists(workdir)


def test_config_files_json_yaml_and_sweep_cell(tmp_path, capsys):
  base = config.apply_overrides(config.ExperimentConfig(algorithm="fedobp"),
                                ["data.num_clients=7", "fedobp.norm=layer"])
  path = tmp_path / "c.json"
  path.write_text(config.dumps(base))
  assert cli.main(["run", "--config", str(path), "--print-config"]) == 0
  assert config.from_dict(json.loads(capsys.readouterr().out)) == base
  # Flags, then --set, go on top of the file.
  assert cli.main(["run", "--config", str(path), "--clients", "9", "--set",
                   "data.num_clients=11", "--alpha", "0.5", "--print-config"]) == 0
  cfg = json.loads(capsys.readouterr().out)
  assert (cfg["data"]["num_clients"], cfg["data"]["alpha"], cfg["algo"]["norm"]) == (11, 0.5,
                                                                                   "layer")
  yml = tmp_path / "c.yaml"
  yml.write_text("algorithm: fedavg\ntrain:\n  rounds: 3\ndata:\n  num_clients: 7\n")
  assert cli.main(["compare", "--algorithms", "fedavg,fedobp", "--config", str(yml),
                   "--print-config"]) == 0
  cfgs = json.loads(capsys.readouterr().out)
  assert [(c["algorithm"], c["train"]["rounds"], c["data"]["num_clients"]) for c in cfgs] == [
      ("fedavg", 3, 7), ("fedobp", 3, 7)]
  assert cfgs[1]["algo"] == dataclasses.asdict(REGISTRY["fedobp"].config_cls())
  table4 = "experiments/configs/fedobp_table4.py"
  assert cli.main(["run", "--config", table4, "--cell", "fedobp-a0.5-s2",
                   "--print-config"]) == 0
  cfg = json.loads(capsys.readouterr().out)
  assert (cfg["algorithm"], cfg["data"]["alpha"], cfg["train"]["seed"]) == ("fedobp", 0.5, 2)
  assert cfg["algo"]["quantile"] == 0.9999 and cfg["train"]["rounds"] == 400


@pytest.mark.parametrize("argv,needle", [
    (["--config", "experiments/configs/fedobp_table4.py"], "--cell NAME is required"),
    (["--config", "experiments/configs/fedobp_table4.py", "--cell", "nope"], "matches 0"),
    (["--config", "/nonexistent.json"], "does not exist"),
    (["--config", "pyproject.toml"], "allowed: a .json"),
    (["--algorithm", "fedavg", "--cell", "x"], "without --config"),
])
def test_bad_config_file_is_a_clear_error(argv, needle, capsys):
  assert cli.main(["run", *argv, "--print-config"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and needle in err, err


def test_unknown_field_in_config_file(tmp_path, capsys):
  path = tmp_path / "c.json"
  path.write_text(json.dumps({"algorithm": "fedavg", "train": {"roundz": 3}}))
  assert cli.main(["run", "--config", str(path), "--print-config"]) == 2
  assert "train.roundz is unknown" in capsys.readouterr().err


# -- error texts -----------------------------------------------------------------
def test_error_texts(capsys, tmp_path):
  # digits: 1797 examples, every Dirichlet client needs min_samples_per_client=10.
  assert cli.main(["run", "--algorithm", "fedavg", "--clients", "2000", "--no-progress",
                   "--workdir", str(tmp_path / "a")]) == 2
  assert "allowed: 1..179 " in capsys.readouterr().err
  assert cli.main(["run", "--algorithm", "fedobp", "--quantile", "2", "--no-progress",
                   "--workdir", str(tmp_path / "b")]) == 2
  assert "fedobp.quantile=2.0 is invalid; allowed: [0, 1]" in capsys.readouterr().err
  assert cli.main(["run", "--algorithm", "fedavg", "--set", "train.eval_batch_size=0",
                   "--no-progress", "--workdir", str(tmp_path / "c")]) == 2
  assert ("train.eval_batch_size=0 is invalid; allowed: >= 1 or None"
          in capsys.readouterr().err)
  assert cli.main(["run", "--algorithm", "fedavg", "--set", "system.eval_chunk_size=0",
                   "--no-progress", "--workdir", str(tmp_path / "d")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
  assert "system.eval_chunk_size=0 is invalid; allowed: None or >= 1" in err


def test_resume_help_lists_every_resume_safe_field():
  from fedjax_pfl import config as config_lib
  run = next(a for a in cli.make_parser()._subparsers._group_actions[0].choices.values()
             if a.prog.endswith(" run"))
  text = " ".join(next(a.help for a in run._actions if "--resume" in a.option_strings).split())
  assert "|".join(config_lib.RESUME_SAFE_FIELDS) in text


def test_tfds_error_suggests_only_what_the_cli_can_do(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  del tfds
  from fedjax_pfl import data
  from fedjax_pfl.data import tfds_source
  with pytest.raises(data.DataError) as e:
    tfds_source.load_tfds("cifar10", data_dir=str(tmp_path / "empty"))
  assert "download=True" not in str(e.value) and "--data-dir" in str(e.value)


# -- per-run outputs -------------------------------------------------------------
@pytest.fixture(scope="module")
def fedobp_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("obp") / "run")
  assert cli.main(["run", "--algorithm", "fedobp", *SMALL, "--quantile", "0.99",
                   "--workdir", workdir]) == 0
  return workdir


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_metrics_csv_equals_jsonl_without_lists(fedobp_run):
  records = _records(fedobp_run)
  with open(os.path.join(fedobp_run, "metrics.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(records) == 2
  assert list(rows[0])[:2] == ["round", "seconds"]
  assert "client_accuracy" not in rows[0]
  for row, rec in zip(rows, records):
    assert int(row["round"]) == rec["round"]
    assert float(row["accuracy"]) == rec["accuracy"]
    assert float(row["personalized_fraction/fc1"]) == rec["personalized_fraction/fc1"]
    assert float(row["comm_totals/uplink_MiB"]) == rec["comm_totals"]["uplink_MiB"]


def test_tensorboard_events_hold_the_metrics(fedobp_run):
  files = outputs.event_files(fedobp_run)
  assert len(files) == 1
  scalars = outputs.read_event_scalars(files[0])
  records = _records(fedobp_run)
  for tag, key in (("accuracy/pooled", "accuracy"), ("accuracy/client_mean",
                                                      "client_mean_accuracy"),
                   ("loss/test_pooled", "loss"), ("loss/train_cohort", "train_loss"),
                   ("comm/round_uplink_bytes", "round_uplink_bytes"),
                   ("algorithm/personalized_fraction/fc1", "personalized_fraction/fc1"),
                   ("algorithm/personalized_fraction/classifier",
                    "personalized_fraction/classifier")):
    assert [s for s, _ in scalars[tag]] == [1, 2], tag
    assert [v for _, v in scalars[tag]] == pytest.approx([r[key] for r in records],
                                                         rel=1e-6), tag
  assert [v for _, v in scalars["comm/total_uplink_MiB"]] == pytest.approx(
      [r["comm_totals"]["uplink_MiB"] for r in records], rel=1e-6)


def test_tensorboard_resume_purges_rerun_rounds(tmp_path):
  log = outputs.TensorBoardLog(str(tmp_path), first_new_round=1)
  for r in (1, 2, 3):
    log.add({"round": r, "accuracy": 0.1 * r})
  log.close()
  # A crash after round 3 with the last checkpoint at round 2: rounds 3.. run again.
  log = outputs.TensorBoardLog(str(tmp_path), first_new_round=3)
  for r in (3, 4):
    log.add({"round": r, "accuracy": 0.5 + 0.1 * r})
  log.close()
  assert len(outputs.event_files(str(tmp_path))) == 2
  got = outputs.read_run_scalars(str(tmp_path))["accuracy/pooled"]
  assert [s for s, _ in got] == [1, 2, 3, 4]
  assert [v for _, v in got] == pytest.approx([0.1, 0.2, 0.8, 0.9])


def test_resumed_run_extends_its_event_files(tmp_path):
  workdir = str(tmp_path / "r")
  assert cli.main(["run", "--algorithm", "fedavg", *SMALL, "--workdir", workdir]) == 0
  # train.eval_batch_size is resume-safe: it batches evaluation, not training.
  assert cli.main(["run", "--resume", workdir, "--set", "train.rounds=3",
                   "--set", "train.eval_batch_size=4", "--no-progress"]) == 0
  assert len(outputs.event_files(workdir)) == 2
  got = outputs.read_run_scalars(workdir)["accuracy/pooled"]
  assert got == [(r["round"], pytest.approx(r["accuracy"], rel=1e-6)) for r in _records(workdir)]
  assert [s for s, _ in got] == [1, 2, 3]


def test_summary_md_shows_percentages(fedobp_run):
  with open(os.path.join(fedobp_run, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(fedobp_run, "summary.md")) as f:
    text = f.read()
  assert f"| final_accuracy | {100 * summary['final_accuracy']:.2f} % |" in text
  assert f"| best_round | {summary['best_round']} |" in text
  assert text.startswith("# Run summary: fedobp on digits, Dir(α=0.1), N=5, seed=0\n")
  assert not any(len(tok) > 12 and tok.replace(".", "").isdigit() for tok in text.split())


def test_no_progress_logs_one_line_per_evaluation(tmp_path, capsys):
  assert cli.main(["run", "--algorithm", "fedavg", *SMALL, "--workdir",
                   str(tmp_path / "r")]) == 0
  lines = [ln for ln in capsys.readouterr().err.splitlines() if "round " in ln]
  records = _records(str(tmp_path / "r"))
  assert len(lines) == 2
  for line, rec in zip(lines, records):
    assert line.startswith(f"r: round {rec['round']}/2, acc {100 * rec['accuracy']:.2f}%")
    assert f"loss {rec['loss']:.4f}" in line and line.endswith(" s")


def test_run_plots_name_the_run_and_count_clients_without_test_data(fedobp_run):
  with open(os.path.join(fedobp_run, "config.json")) as f:
    title = outputs.run_title(json.load(f))
  assert title == "fedobp on digits, Dir(α=0.1), N=5, seed=0"
  for name in ("accuracy.png", "loss.png", "client_accuracy_hist.png"):
    with open(os.path.join(fedobp_run, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_round_axes_have_integer_ticks():
  fig, ax = plots.new_figure("round", "y", "t")
  ax.plot([1, 2, 3], [0, 1, 0])
  fig.canvas.draw()
  ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
  assert ticks and all(float(t).is_integer() for t in ticks)
  plots._plt().close(fig)


# -- compare and report ----------------------------------------------------------
@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("cmp") / "compare")
  assert cli.main(["compare", "--algorithms", "fedavg,local", *SMALL, "--workdir", root]) == 0
  return root


def test_compare_writes_one_combined_plot(compare_dir):
  path = os.path.join(compare_dir, "comparison.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 20000


def test_report_over_a_compare_folder(compare_dir, tmp_path, capsys):
  out = str(tmp_path / "rep")
  assert cli.main(["report", compare_dir, "--out", out]) == 0
  captured = capsys.readouterr()
  assert "| fedavg | 2 |" in captured.out and "| local | 2 |" in captured.out
  assert "warning" not in captured.err
  with open(os.path.join(out, "report.md")) as f:
    text = f.read()
  assert "Common settings: digits, Dir(α=0.1), N=5, seed=0" in text
  assert os.path.getsize(os.path.join(out, "report.png")) > 20000


def test_report_keys_rows_by_differing_settings_and_warns(compare_dir, tmp_path, capsys):
  other = str(tmp_path / "a05")
  assert cli.main(["run", "--algorithm", "fedavg", *SMALL, "--alpha", "0.5",
                   "--workdir", other]) == 0
  capsys.readouterr()
  out = str(tmp_path / "rep")
  assert cli.main(["report", compare_dir, other, "--out", out]) == 0
  captured = capsys.readouterr()
  assert "| fedavg, alpha=0.1 | 2 |" in captured.out
  assert "| fedavg, alpha=0.5 | 2 |" in captured.out
  assert "| local, alpha=0.1 | 2 |" in captured.out
  assert captured.err.startswith("warning: runs differ in data.alpha")
  with open(os.path.join(out, "report.md")) as f:
    assert "**Warning:** runs differ in data.alpha" in f.read()


def test_identical_runs_stay_apart(compare_dir, tmp_path, capsys):
  twin = str(tmp_path / "twin")
  assert cli.main(["run", "--algorithm", "fedavg", *SMALL, "--workdir", twin]) == 0
  capsys.readouterr()
  assert cli.main(["report", os.path.join(compare_dir, "fedavg"), twin, "--out",
                   str(tmp_path / "rep")]) == 0
  out = capsys.readouterr().out
  assert "| fedavg (fedavg) | 2 |" in out and "| fedavg (twin) | 2 |" in out
  runs = [(name, _records(w)) for name, w in (("a", os.path.join(compare_dir, "fedavg")),
                                               ("b", twin))]
  assert plots.legend_labels(runs) == ["a", "b (= a)"]  # same seed, same curves


def test_settings_that_differ():
  a = config.to_dict(config.ExperimentConfig(algorithm="fedobp"))
  b = config.to_dict(config.apply_overrides(config.ExperimentConfig(algorithm="fedobp"),
                                            ["fedobp.quantile=0.5", "system.chunk_size=2"]))
  c = config.to_dict(config.ExperimentConfig(algorithm="fedavg"))
  assert plots.differing_settings([a, b]) == ["algo.quantile"]
  assert plots.differing_settings([a, c]) == ["algorithm"]
  assert plots.mixing_warning(["algorithm", "algo.quantile", "train.seed"]) is None
  assert "train.rounds" in plots.mixing_warning(["train.rounds"])


def test_report_over_a_sweep_folder(tmp_path, capsys):
  cfg = config.apply_overrides(config.ExperimentConfig(algorithm="fedavg"), [
      "data.num_clients=5", "train.rounds=1", "train.local_epochs=1", "train.eval_every=1"])
  cells = [sweep.Cell(f"s{s}", dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, seed=s)), "FedAvg", "x") for s in (0, 1)]
  out = str(tmp_path / "sw")
  sweep.run_sweep(sweep.Sweep("t", "t", cells), out, log=lambda s: None)
  capsys.readouterr()
  assert cli.main(["report", out, "--out", str(tmp_path / "rep")]) == 0
  captured = capsys.readouterr()
  assert "| fedavg, seed=0 | 1 |" in captured.out and "| fedavg, seed=1 | 1 |" in captured.out
  assert "warning" not in captured.err


# -- sweep smoke tables ----------------------------------------------------------
def test_smoke_table_names_the_data_and_leaves_the_paper_out(tmp_path):
  sw = sweep.Sweep("t", "FedOBP Table IV (Fashion-MNIST)", [], "best_accuracy",
                   {("FedAvg", "α=0.1"): 87.29})
  results = [{"row": "FedAvg", "column": "α=0.1", "best_accuracy": 0.5, "dataset": "digits",
              "rounds": 1}]
  text, _ = sweep.table(sw, results, smoke=True)
  assert "| ours, smoke run on digits (stands for: α=0.1) |" in text
  assert "| FedAvg | ? | 50.00 (n=1) |" in text  # protocol unknown: results without one
  assert "paper" not in text and "Δ" not in text and "87.29" not in text
  full, _ = sweep.table(sw, results)
  assert "| 87.29 | -37.29 |" in full
  body = sweep.render_report(sw, results, str(tmp_path / "r.md"), str(tmp_path), smoke=True)
  assert "not comparable" in body and "87.29" not in body


def test_flat_scalars_skips_lists_and_flattens_dicts():
  got = outputs.flat_scalars({"round": 3, "a": 0.5, "client_accuracy": [0.1, None],
                              "comm_totals": {"uplink_MiB": 2.0}, "x": None, "s": "text"})
  assert got["a"] == 0.5 and got["comm_totals/uplink_MiB"] == 2.0
  assert "client_accuracy" not in got and "s" not in got and math.isnan(got["x"])
