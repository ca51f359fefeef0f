"""Resume: a run killed with SIGKILL at random points, then resumed, ends with
exactly the metrics of an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from fedjax_pfl import cli
from fedjax_pfl.checkpoint import Checkpointer

ARGS = ["--algorithm", "fedobp", "--dataset", "digits", "--clients", "8", "--rounds", "14",
        "--eval-every", "2", "--local-epochs", "1", "--participation", "0.25",
        "--quantile", "0.99", "--set", "train.checkpoint_every=1", "--no-progress"]


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r.pop("seconds")
  return records


def _latest(workdir):
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return -1
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()]
  return max(steps, default=-1)


def _start(cmd):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
  ref = str(tmp_path / "ref")
  assert cli.main(["run", *ARGS, "--workdir", ref]) == 0
  work = str(tmp_path / "killed")
  first = [sys.executable, "-m", "fedjax_pfl.cli", "run", *ARGS, "--workdir", work]
  resume = [sys.executable, "-m", "fedjax_pfl.cli", "run", "--resume", work, "--no-progress"]
  rng = random.Random(1234)
  kills, deadline = 0, time.time() + 240
  for attempt in range(3):
    before = _latest(work)
    proc = _start(first if attempt == 0 else resume)
    while proc.poll() is None and _latest(work) <= before and time.time() < deadline:
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.4))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills += 1
    proc.wait(timeout=60)
  assert kills >= 2, "the run finished before it could be killed; lengthen it"
  assert 0 <= _latest(work) < 14
  done = subprocess.run(resume, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=240)
  assert done.returncode == 0, done.stderr
  assert _records(work) == _records(ref)
  with open(os.path.join(ref, "summary.json")) as f, open(os.path.join(work, "summary.json")) as g:
    a, b = json.load(f), json.load(g)
  a.pop("seconds"), b.pop("seconds")
  assert a == b


def test_checkpoints_are_bounded_and_restorable(tmp_path):
  workdir = str(tmp_path / "run")
  assert cli.main(["run", *ARGS[:-3], "--rounds", "5", "--set", "train.checkpoint_every=1",
                   "--set", "train.keep_checkpoints=2", "--workdir", workdir,
                   "--no-progress"]) == 0
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps == [4, 5]
  assert Checkpointer(workdir).latest_round() == 5


def test_resume_without_run_is_a_clear_error(tmp_path, capsys):
  assert cli.main(["run", "--resume", str(tmp_path / "nothing")]) == 2
  assert "config.json" in capsys.readouterr().err


def test_divergence_stops_with_a_clear_error(tmp_path, capsys):
  workdir = str(tmp_path / "nan")
  code = cli.main(["run", "--algorithm", "fedavg", "--dataset", "digits", "--clients", "4",
                   "--rounds", "3", "--eval-every", "1", "--lr", "1e30", "--momentum", "0.9",
                   "--workdir", workdir, "--no-progress"])
  assert code == 3
  assert "diverged" in capsys.readouterr().err
