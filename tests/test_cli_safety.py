"""Run safety (issue 18): a workdir never continues another run, results are
never lost, and bad input, unusable paths and corrupt files are one-line
errors (exit 2) before any compute; Ctrl-C exits 130 naming the resume command."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fedjax_pfl import cli, experiment, io
from fedjax_pfl.data import idx

TINY = ["--dataset", "digits", "--clients", "4", "--eval-every", "1", "--local-epochs", "1",
        "--participation", "0.5", "--no-progress"]
RUN = ["run", "--algorithm", "fedavg", *TINY]


def _records(workdir):
  records = io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  for r in records:
    r.pop("seconds")
  return records


def _json(path):
  with open(path) as f:
    return json.load(f)  # strict: fails on anything but valid JSON


def _error(capsys) -> str:
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "Traceback" not in err
  return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 2-round run with a checkpoint every round (copied per test)."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  assert cli.main([*RUN, "--rounds", "2", "--set", "train.checkpoint_every=1",
                   "--workdir", workdir]) == 0
  return workdir


@pytest.fixture
def run_copy(finished, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished, workdir)
  return workdir


# -- a workdir holds one run -----------------------------------------------------------------
def test_new_run_refuses_a_workdir_holding_a_different_run(run_copy, capsys):
  before = _records(run_copy)
  assert cli.main([*RUN, "--rounds", "2", "--alpha", "0.5", "--workdir", run_copy]) == 2
  line = _error(capsys)
  assert "different run" in line and "data.alpha (0.1 -> 0.5)" in line
  assert "--workdir" in line and "--overwrite" in line and f"--resume {run_copy}" in line
  assert _records(run_copy) == before  # nothing touched


def test_new_run_refuses_a_workdir_holding_the_same_run(run_copy, capsys):
  assert cli.main([*RUN, "--rounds", "2", "--workdir", run_copy]) == 2
  assert "holds a run of this config" in _error(capsys)


def test_overwrite_replaces_the_old_run_and_its_checkpoints(run_copy, capsys):
  assert cli.main([*RUN, "--rounds", "1", "--alpha", "0.5", "--workdir", run_copy,
                   "--overwrite"]) == 0
  assert sorted(os.listdir(os.path.join(run_copy, "checkpoints"))) == ["1"]
  assert _json(os.path.join(run_copy, "config.json"))["data"]["alpha"] == 0.5
  # The new run is what a later resume continues.
  capsys.readouterr()
  assert cli.main(["run", "--resume", run_copy, "--rounds", "2", "--no-progress"]) == 0
  assert _json(os.path.join(run_copy, "config.json"))["data"]["alpha"] == 0.5
  assert [r["round"] for r in _records(run_copy)] == [1, 2]


def test_resume_refuses_a_checkpoint_written_by_a_different_config(run_copy, capsys):
  # What the old behaviour left behind: run B's config.json over run A's checkpoints.
  path = os.path.join(run_copy, "config.json")
  config = _json(path)
  config["data"]["alpha"] = 0.5
  config["train"]["rounds"] = 3
  io.write_json_atomic(path, config)
  assert cli.main(["run", "--resume", run_copy, "--no-progress"]) == 2
  line = _error(capsys)
  assert "different run" in line and "data.alpha (0.1 -> 0.5)" in line
  assert "train.rounds" not in line  # a resume-safe field is not a difference


@pytest.mark.parametrize("flags,needle", [
    (["--alpha", "0.5"], "--alpha"),
    (["--lr", "0.1"], "--lr"),
    (["--algorithm", "fedobp"], "--algorithm"),
    (["--workdir", "elsewhere"], "--workdir"),
    (["--overwrite"], "--overwrite"),
    (["--set", "data.alpha=0.5"], "data.alpha"),
    (["--set", "train.lr=0.5"], "train.lr"),
    (["--set", "fedavg.nope=1"], "fedavg.nope"),
    (["--rounds", "1"], "train.rounds=1 is below the 2 rounds already run"),
    (["--set", "train.rounds=1"], "train.rounds=1 is below the 2 rounds already run"),
])
def test_resume_refuses_changes_to_the_run(run_copy, flags, needle, capsys):
  before = _records(run_copy)
  assert cli.main(["run", "--resume", run_copy, *flags, "--no-progress"]) == 2
  assert needle in _error(capsys)
  assert _records(run_copy) == before
  assert _json(os.path.join(run_copy, "config.json"))["train"]["rounds"] == 2


def test_resume_with_more_rounds_equals_a_longer_run(run_copy, tmp_path):
  assert cli.main(["run", "--resume", run_copy, "--rounds", "3", "--eval-every", "1",
                   "--set", "train.keep_checkpoints=2", "--no-progress"]) == 0
  ref = str(tmp_path / "ref")
  assert cli.main([*RUN, "--rounds", "3", "--workdir", ref]) == 0
  assert _records(run_copy) == _records(ref)
  summary, config = (_json(os.path.join(run_copy, n)) for n in ("summary.json", "config.json"))
  assert summary["rounds"] == config["train"]["rounds"] == 3


# -- what config.json records ----------------------------------------------------------------
def test_config_json_records_what_ran(finished):
  import jax
  run = _json(os.path.join(finished, "config.json"))["run"]
  assert run["jax"] == jax.__version__ and run["jaxlib"]
  assert run["device_count"] == jax.device_count() and run["device_kind"]
  assert run["resolved"]["parallelism"] in ("vmap", "sequential")
  assert run["resolved"]["step_loop"] in ("scan", "python")
  assert run["resolved"]["round_loop"] in ("compiled", "host")
  assert run["resolved"]["model"] == "mlp" and run["resolved"]["source"] == "sklearn"
  # train.eval_batch_size = None (auto): CPU's 32, capped at the widest client test set.
  assert _json(os.path.join(finished, "config.json"))["train"]["eval_batch_size"] is None
  assert 1 <= run["resolved"]["eval_batch_size"] <= 32
  assert "git_commit" in run
  assert set(run["fingerprint"]) == {"data", "partition", "code"}


# -- corrupt files ---------------------------------------------------------------------------
def _damage_checkpoint(workdir, step):
  """Overwrites every data file of one checkpoint's state with garbage."""
  folder = os.path.join(workdir, "checkpoints", str(step), "state")
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(run_copy, tmp_path,
                                                                      capsys):
  _damage_checkpoint(run_copy, 2)
  capsys.readouterr()
  assert cli.main(["run", "--resume", run_copy, "--rounds", "3", "--no-progress"]) == 0
  err = capsys.readouterr().err
  assert "checkpoint of round 2" in err and "corrupt" in err and "from round 1" in err
  assert "Traceback" not in err
  assert os.path.isdir(os.path.join(run_copy, "checkpoints", "corrupt-2"))
  ref = str(tmp_path / "ref")
  assert cli.main([*RUN, "--rounds", "3", "--workdir", ref]) == 0
  assert _records(run_copy) == _records(ref)  # rounds 2-3 recomputed exactly


def test_no_intact_checkpoint_is_a_clear_error(run_copy, capsys):
  _damage_checkpoint(run_copy, 1)
  _damage_checkpoint(run_copy, 2)
  assert cli.main(["run", "--resume", run_copy, "--no-progress"]) == 2
  line = _error(capsys)
  assert "no intact checkpoint" in line and "round 2" in line and "round 1" in line


def test_corrupt_config_json_is_named(run_copy, capsys):
  with open(os.path.join(run_copy, "config.json"), "w") as f:
    f.write('{"algorithm": "fedavg", "data": {')
  assert cli.main(["run", "--resume", run_copy]) == 2
  assert "config.json is corrupt" in _error(capsys)
  with open(os.path.join(run_copy, "config.json"), "w") as f:
    f.write('{"algorithm": "fedavg"}')
  assert cli.main(["run", "--resume", run_copy]) == 2
  assert "config.json is corrupt (not a run config" in _error(capsys)


def test_corrupt_metrics_jsonl_is_named_by_report(run_copy, tmp_path, capsys):
  with open(os.path.join(run_copy, "metrics.jsonl"), "a") as f:
    f.write('{"round": 3, "accur\n')
  assert cli.main(["report", run_copy, "--out", str(tmp_path / "rep")]) == 2
  line = _error(capsys)
  assert "metrics.jsonl is corrupt at line 3" in line


def test_sweep_config_that_raises_is_one_line(tmp_path, capsys):
  path = tmp_path / "broken.py"
  path.write_text("def get_sweep(smoke):\n  return {}['missing']\n")
  assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
  line = _error(capsys)
  assert "broken.py" in line and "raised KeyError" in line
  path.write_text("import nope_not_a_module\n")
  assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
  assert "raised ModuleNotFoundError" in _error(capsys)


# -- paths that cannot be used: refused before any data is loaded --------------------------
@pytest.fixture
def no_data(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("data loaded before the path was checked")
  monkeypatch.setattr(experiment, "load_data", fail)


def test_workdir_that_cannot_be_created(tmp_path, capsys, no_data):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert cli.main([*RUN, "--workdir", str(blocker / "run")]) == 2
  line = _error(capsys)
  assert str(blocker / "run") in line and "cannot be created" in line
  assert cli.main(["compare", "--algorithms", "fedavg", *TINY, "--workdir",
                   str(blocker / "cmp")]) == 2
  assert "cannot be created" in _error(capsys)


def test_report_path_that_cannot_be_created(finished, tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert cli.main(["report", finished, "--out", str(blocker / "rep")]) == 2
  assert "--out" in _error(capsys)


# -- values ----------------------------------------------------------------------------------
def test_client_without_test_data_is_refused(tmp_path, capsys):
  # digits over 20 Dirichlet(0.1) clients: many hold < 100 examples -> int(n * 0.01) = 0.
  assert cli.main([*RUN, "--clients", "20", "--test-ratio", "0.01", "--rounds", "1",
                   "--workdir", str(tmp_path / "run")]) == 2
  line = _error(capsys)
  assert "data.test_ratio=0.01 leaves" in line and "of 20 clients without test data" in line
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_written_json_is_valid_even_with_non_finite_numbers(tmp_path):
  path = str(tmp_path / "x.json")
  io.write_json_atomic(path, {"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
  assert _json(path) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
  io.write_jsonl_atomic(path, [{"loss": math.nan}])
  assert io.read_jsonl(path) == [{"loss": None}]


@pytest.mark.parametrize("flags,needle", [
    (["--participation", "2"], "--participation=2.0"),
    (["--participation", "nan"], "--participation=nan"),
    (["--max-client-examples", "-5", "--data-placement", "by_client"],
     "--max-client-examples=-5"),
    (["--batch-size", "0"], "--batch-size=0"),
    (["--clients", "0"], "--clients=0"),
    (["--devices", "0"], "--devices=0"),
    (["--model", "bogus"], "--model='bogus'"),
    (["--dataset", "bogus"], "--dataset='bogus'"),
    (["--algorithm", "bogus"], "algorithm='bogus'"),
])
def test_memory_flags_are_checked(flags, needle, capsys):
  assert cli.main(["memory", *flags]) == 2
  assert needle in _error(capsys)


def test_missing_idx_file_is_named(tmp_path, capsys):
  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("test", 10)):
    images, labels = idx.IDX_FILES[split]
    idx.write_idx(str(tmp_path / images), rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
    if split == "train":
      idx.write_idx(str(tmp_path / labels), rng.integers(0, 10, (n,), dtype=np.uint8))
  assert cli.main(["run", "--algorithm", "fedavg", "--dataset", "fashion_mnist", "--data-dir",
                   str(tmp_path), "--workdir", str(tmp_path / "run"), "--no-progress"]) == 2
  line = _error(capsys)
  assert "t10k-labels-idx1-ubyte" in line and "missing" in line


def test_divergence_does_not_promise_a_missing_checkpoint(tmp_path, capsys):
  workdir = str(tmp_path / "nan")
  assert cli.main([*RUN, "--rounds", "3", "--lr", "1e30", "--momentum", "0.9",
                   "--workdir", workdir]) == 3
  line = _error(capsys)
  assert "diverged" in line and "no checkpoint was written" in line
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "1"))


# -- interruption ----------------------------------------------------------------------------
def test_keyboard_interrupt_exits_130_naming_the_resume_command(tmp_path, monkeypatch, capsys):
  workdir = str(tmp_path / "run")
  real = experiment._RunLog.add_eval

  def interrupt_after_round_2(self, record):
    out = real(self, record)
    if record["round"] == 2:
      raise KeyboardInterrupt
    return out
  monkeypatch.setattr(experiment._RunLog, "add_eval", interrupt_after_round_2)
  assert cli.main([*RUN, "--rounds", "4", "--set", "train.checkpoint_every=1",
                   "--workdir", workdir]) == 130
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1] == (f"interrupted: continue the run in {workdir} with: "
                                          f"fedjax-pfl run --resume {workdir}")
  monkeypatch.setattr(experiment._RunLog, "add_eval", real)
  assert cli.main(["run", "--resume", workdir, "--no-progress"]) == 0
  ref = str(tmp_path / "ref")
  assert cli.main([*RUN, "--rounds", "4", "--workdir", ref]) == 0
  assert _records(workdir) == _records(ref)


@pytest.mark.slow
def test_sigint_exits_130_without_traceback(tmp_path):
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "fedjax_pfl.cli", *RUN, "--rounds", "400", "--set",
         "train.checkpoint_every=1", "--workdir", workdir]
  proc = subprocess.Popen(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while (proc.poll() is None and time.time() < deadline
         and not os.path.isdir(os.path.join(workdir, "checkpoints", "1"))):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  assert "Traceback" not in err and f"fedjax-pfl run --resume {workdir}" in err


@pytest.mark.parametrize("flags,needle", [
    (["--lanes", "0"], "system.lanes=0"),
    (["--lanes", "2", "--strategy", "sequential"], "system.lanes=2"),
    (["--lanes", "2", "--chunk-size", "3"], "system.lanes=2"),
])
def test_bad_lanes_is_one_line_before_any_compute(flags, needle, tmp_path, capsys):
  assert cli.main([*RUN, *flags, "--workdir", str(tmp_path / "run")]) == 2
  assert needle in _error(capsys)
  assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
