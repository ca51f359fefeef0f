"""CLI: a two-round smoke run, and clear errors for bad input before compute."""

import json
import os

import pytest

from fedjax_pfl import cli

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
SMALL = ["--dataset", "digits", "--clients", "6", "--rounds", "2", "--eval-every", "1",
         "--local-epochs", "1", "--no-progress"]


def test_two_round_smoke_run(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  assert cli.main(["run", "--algorithm", "fedobp", *SMALL, "--quantile", "0.99",
                   "--workdir", workdir]) == 0
  for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["round"] for r in records] == [1, 2]
  for key in ("accuracy", "client_mean_accuracy", "loss", "client_accuracy", "train_loss",
              "personalized_fraction"):
    assert key in records[-1]
  assert len(records[-1]["client_accuracy"]) == 6
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["algo"]["quantile"] == 0.99 and config["data"]["num_clients"] == 6
  out = capsys.readouterr().out
  assert "| fedobp | 2 |" in out


def test_compare_prints_table(tmp_path, capsys):
  assert cli.main(["compare", "--algorithms", "fedavg,local", *SMALL, "--rounds", "1",
                   "--workdir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| fedavg |" in out and "| local |" in out
  assert os.path.exists(tmp_path / "comparison.md")


def test_set_overrides_reach_the_config(tmp_path):
  workdir = str(tmp_path / "run")
  assert cli.main(["run", "--algorithm", "fedobp", *SMALL, "--rounds", "1", "--workdir",
                   workdir, "--set", "fedobp.norm=layer", "--set", "train.weight_decay=0.001",
                   "--set", "fedobp.ema=true"]) == 0
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["algo"]["norm"] == "layer" and config["algo"]["ema"] is True
  assert config["train"]["weight_decay"] == 0.001


BAD = [
    (["--algorithm", "fedobp", "--quantile", "1.5"], "quantile"),
    (["--algorithm", "fedobp", "--quantile", "-0.1"], "quantile"),
    (["--algorithm", "fedavg", "--alpha", "0"], "alpha"),
    (["--algorithm", "fedavg", "--alpha", "-1"], "alpha"),
    (["--algorithm", "fedavg", "--participation", "0"], "participation"),
    (["--algorithm", "fedavg", "--participation", "1.5"], "participation"),
    (["--algorithm", "nope"], "algorithm"),
    (["--algorithm", "fedavg", "--dataset", "nope"], "dataset"),
    (["--algorithm", "fedavg", "--rounds", "0"], "rounds"),
    (["--algorithm", "fedavg", "--batch-size", "1"], "batch_size"),
    (["--algorithm", "fedavg", "--lr", "0"], "lr"),
    (["--algorithm", "fedavg", "--momentum", "1.0"], "momentum"),
    (["--algorithm", "fedavg", "--test-ratio", "1.0"], "test_ratio"),
    (["--algorithm", "fedavg", "--clients", "0"], "num_clients"),
    (["--algorithm", "fedavg", "--local-epochs", "0"], "local_epochs"),
    (["--algorithm", "fedavg", "--eval-every", "0"], "eval_every"),
    (["--algorithm", "fedobp", "--norm", "bogus"], "norm"),
    (["--algorithm", "fedobp", "--scope", "bogus"], "scope"),
    (["--algorithm", "fedobp", "--score", "bogus"], "score"),
    (["--algorithm", "fedavg", "--quantile", "0.9"], "fedobp only"),
    (["--algorithm", "fedavg", "--set", "train.nope=1"], "nope"),
    (["--algorithm", "fedavg", "--set", "train.lr=abc"], "train.lr"),
    (["--algorithm", "fedavg", "--set", "trainlr"], "section.field=value"),
    (["--algorithm", "fedobp", "--set", "fedobp.ema_alpha=1.0"], "ema_alpha"),
    (["--algorithm", "fedavg", "--partition", "bogus"], "partition"),
    (["--algorithm", "fedavg", "--model", "bogus"], "model"),
    (["--algorithm", "fedavg", "--set", "data.max_examples=3"], "max_examples"),
    (["--algorithm", "fedavg", "--set", "system.chunk_size=0"], "chunk_size"),
    (["--algorithm", "fedavg", "--dataset", "fashion_mnist", "--source", "idx",
      "--data-dir", "/nonexistent-dir"], "/nonexistent-dir"),
    (["--algorithm", "fedavg", "--clients", "5000"], "num_clients"),
    (["--algorithm", "fedavg", "--alpha", "inf"], "data.alpha=inf"),
    (["--algorithm", "fedavg", "--lr", "inf"], "train.lr=inf"),
    (["--algorithm", "fedavg", "--momentum", "nan"], "train.momentum=nan"),
    (["--algorithm", "fedavg", "--set", "train.weight_decay=inf"], "train.weight_decay=inf"),
    (["--algorithm", "fedobp", "--set", "fedobp.quantile=nan"], "algo.quantile=nan"),
    (["--algorithm", "fedavg", "--test-ratio", "0"], "data.test_ratio=0.0"),
    (["--algorithm", "fedavg", "--set", "data.max_examples=-1"], "max_examples"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a[2:]) or a[1] for a, _ in BAD])
def test_bad_input_is_a_clear_error(argv, needle, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  assert cli.main(["run", *argv, "--workdir", workdir, "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and needle in err, err
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))


@pytest.mark.skipif(not os.path.isdir(FMNIST_DIR), reason="dataset-fashion-mnist not installed")
def test_short_fashion_mnist_run(tmp_path):
  workdir = str(tmp_path / "fm")
  assert cli.main(["run", "--algorithm", "fedobp", "--dataset", "fashion_mnist", "--clients",
                   "10", "--set", "data.max_examples=2000", "--rounds", "2",
                   "--local-epochs", "1", "--participation", "0.2", "--eval-every", "2",
                   "--quantile", "0.999", "--workdir", workdir, "--no-progress"]) == 0
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["dataset"] == "fashion_mnist" and 0.0 < summary["final_accuracy"] <= 1.0
