"""Sweeps: every config loads and runs at smoke size; resumable; table arithmetic."""

import dataclasses
import glob
import json
import os

import jax
import pytest

from fedjax_pfl import cli, config
from fedjax_pfl.sweep import Cell, Sweep, load_sweep, run_sweep, table

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
CONFIGS = sorted(p for p in glob.glob("experiments/configs/*.py")
                 if not os.path.basename(p).startswith("_"))


def test_there_are_configs():
  assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_full_size_config_is_valid(path):
  sweep = load_sweep(path, smoke=False)   # validates every cell
  assert sweep.cells and sweep.title
  with open(path) as f:
    doc = f.read()
  assert "Command" in doc and "fedjax-pfl sweep" in doc


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_smoke_size_runs_and_reports(path, tmp_path):
  if "fedpurin" in path and not os.path.isdir(FMNIST_DIR):
    pytest.skip("the Fling partition needs Fashion-MNIST's official splits")
  out = str(tmp_path / "sweep")
  assert cli.main(["sweep", path, "--smoke", "--out", out, "--no-progress"]) == 0
  with open(os.path.join(out, "report.md")) as f:
    report = f.read()
  sweep = load_sweep(path, smoke=True)
  for cell in sweep.cells:
    assert f"| {cell.row} |" in report
  if sweep.plot is not None:
    assert os.path.getsize(os.path.join(out, "report.png")) > 1000


def test_sweep_is_resumable(tmp_path):
  cfg = config.apply_overrides(config.ExperimentConfig(algorithm="fedavg"), [
      "data.num_clients=5", "train.rounds=1", "train.local_epochs=1", "train.eval_every=1"])
  sweep = Sweep("t", "t", [Cell("a", cfg, "FedAvg", "x")])
  out = str(tmp_path)
  first = run_sweep(sweep, out, log=lambda s: None)
  logs = []
  second = run_sweep(sweep, out, log=logs.append)
  assert logs == ["[1/1] a: done, skipped"] and first == second
  with open(os.path.join(out, "results.jsonl")) as f:
    assert [json.loads(line)["cell"] for line in f] == ["a"]


def test_table_mean_std_and_difference():
  sweep = Sweep("t", "t", [], "best_accuracy", {("A", "c"): 50.0})
  results = [{"row": "A", "column": "c", "best_accuracy": 0.4, "protocol": "flbench"},
             {"row": "A", "column": "c", "best_accuracy": 0.6, "protocol": "flbench"},
             {"row": "B", "column": "c", "best_accuracy": 0.7}]
  text, stats = table(sweep, results)
  assert stats[("A", "c")] == pytest.approx((50.0, 10.0, 2))
  assert "| A | flbench | 50.00 (10.00, n=2) | 50.00 | +0.00 |" in text
  assert "| B | ? | 70.00 (n=1) | – | – |" in text  # recorded without a protocol


def test_bad_sweep_path_is_a_clear_error(capsys):
  assert cli.main(["sweep", "experiments/configs/nope.py"]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_common_setups_refuse_unknown_algorithm_arguments():
  import sys
  sys.path.insert(0, os.path.abspath("experiments/configs"))
  try:
    import _common
  finally:
    sys.path.pop(0)
  from fedjax_pfl.errors import ConfigError
  assert _common.fedobp_setup("fedobp", "mnist", 0.1, 0, quantile=0.5).algo.quantile == 0.5
  with pytest.raises(ConfigError, match=r"fedobp: unknown algorithm argument\(s\) "
                     r"\['quantil'\]; allowed: \[.*'quantile'"):
    _common.fedobp_setup("fedobp", "mnist", 0.1, 0, quantil=0.5)
  with pytest.raises(ConfigError, match=r"fedavg: unknown algorithm argument\(s\) \['beta'\]"):
    _common.fling_setup("fedavg", "cifar10", 0.1, 0, beta=0.3)


TFDS_NAMES = ("cifar10", "cifar100", "emnist/byclass", "svhn_cropped", "mnist")


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_full_size_tfds_data_and_model_build_with_mocked_tfds(path, tmp_path):
  # The full-size cells of the CIFAR/EMNIST/SVHN/MNIST configs load through the
  # real tfds path (mock_data, no network), and their model builds for the data.
  from fedjax_pfl import experiment
  from fedjax_pfl.models import get_model
  tfds = pytest.importorskip("tensorflow_datasets")
  sweep = load_sweep(path, smoke=False)
  datas = {(c.config.data.dataset, c.config.data.partition): c.config
           for c in sweep.cells if c.config.data.dataset in TFDS_NAMES}
  if not datas:
    pytest.skip("no tfds dataset in this config")
  for (name, partition), cfg in datas.items():
    d = cfg.data
    # Same partition and client count; fewer examples so that the mock stays small.
    small = dataclasses.replace(d, source="tfds", data_dir=str(tmp_path / "tfds"),
                                train_per_client=min(d.train_per_client or 20, 20),
                                test_per_client=min(d.test_per_client or 5, 5))
    with tfds.testing.mock_data(num_examples=20 * d.num_clients):
      fd = experiment.load_data(small)
    assert fd.train_idx.shape[0] == d.num_clients, name
    assert fd.train_counts.min() >= 1 and fd.test_counts.min() >= 1, name
    assert fd.num_classes == {"cifar100": 100, "emnist/byclass": 62}.get(name, 10)
    model = get_model(cfg.model.name, fd.x.shape[1:], fd.num_classes)
    logits = model.apply(model.init(jax.random.key(0)), fd.x[:2])
    assert logits.shape == (2, fd.num_classes), (name, partition)


def test_reduced_run_of_a_config_with_overrides_and_cell_patterns(tmp_path, capsys):
  from fedjax_pfl.errors import ConfigError
  from fedjax_pfl.sweep import customize
  path = "experiments/configs/fedobp_table4.py"
  full = load_sweep(path, smoke=False)
  sw = customize(full, ["train.rounds=7", "fedobp.quantile=0.5", "data.num_clients=20"],
                 ["fedobp-a0.1-*", "fedavg-a0.5-s0"])
  assert [c.name for c in sw.cells] == ["fedavg-a0.5-s0"] + [      # the config's order
      f"fedobp-a0.1-s{s}" for s in range(4)]
  assert all(c.config.train.rounds == 7 and c.config.data.num_clients == 20 for c in sw.cells)
  assert sw.cells[1].config.algo.quantile == 0.5     # fedobp.* reaches FedOBP cells only
  with pytest.raises(ConfigError, match="match no cell"):
    customize(full, [], ["nothing-*"])
  with pytest.raises(ConfigError, match="train.rounds"):
    customize(full, ["train.rounds=0"], ["fedavg-a0.5-s0"])
  # One folder, one set of settings: a second run with other overrides is refused.
  out = str(tmp_path / "sweep")
  args = ["sweep", path, "--smoke", "--out", out, "--no-progress", "--cells", "fedavg-*",
          "--set", "train.local_epochs=2"]
  assert cli.main(args) == 0
  with open(os.path.join(out, "report.md")) as f:
    report = f.read()
  assert "1 of 17 cells" in report  # 13 methods, 4 with a published row and "`train.local_epochs=2`" in report
  assert "| FedAvg |" in report and "| FedOBP |" not in report
  with open(os.path.join(out, "cells", "fedavg-a0.1-s0", "config.json")) as f:
    assert json.load(f)["train"]["local_epochs"] == 2
  capsys.readouterr()
  assert cli.main(args[:-1] + ["train.local_epochs=3"]) == 2
  assert "use another --out" in capsys.readouterr().err


def test_cells_differing_in_seed_lr_and_quantile_run_as_one_program(tmp_path):
  # vmap + scan on one device: cells that differ only in the seed, the
  # learning rate and FedOBP's quantile share one compiled program, and give
  # the same results as separate runs.
  base = config.apply_overrides(config.ExperimentConfig(algorithm="fedobp"), [
      "data.num_clients=6", "train.rounds=3", "train.local_epochs=1", "train.eval_every=2",
      "algo.quantile=0.9", "model.name=mlp", "system.parallelism=vmap",
      "system.step_loop=scan", "system.num_devices=1"])
  runs = {"s0": (0, 0.01, 0.9), "s1": (1, 0.01, 0.9), "q5": (0, 0.03, 0.5)}
  cells = [Cell(name, config.apply_overrides(base, [
      f"train.seed={seed}", f"train.lr={lr}", f"algo.quantile={q}"]), "FedOBP", name)
           for name, (seed, lr, q) in runs.items()]
  from fedjax_pfl import experiment
  assert len({experiment.batch_key(c.config) for c in cells}) == 1
  assert experiment.batch_key(config.apply_overrides(base, ["train.momentum=0.5"])) != (
      experiment.batch_key(base))
  sweep = Sweep("t", "t", cells)
  logs = []
  batched = run_sweep(sweep, str(tmp_path / "batched"), log=logs.append)
  assert "3 runs in one program" in logs[0] and logs[1] == "[2/3] s1: done (in a batch)"
  single = run_sweep(sweep, str(tmp_path / "single"), log=lambda s: None, batch=False)
  for b, s in zip(batched, single):
    for key in ("final_accuracy", "final_loss", "best_accuracy", "total_uplink_MiB"):
      assert b[key] == pytest.approx(s[key], rel=1e-4, abs=1e-6), key
    assert b["rounds"] == 3
  assert batched[0]["final_loss"] != batched[1]["final_loss"]
  assert batched[0]["final_loss"] != batched[2]["final_loss"]
  for name in runs:  # each cell's own outputs and checkpoint, as a single run's
    cell = tmp_path / "batched" / "cells" / name
    assert (cell / "summary.json").exists() and (cell / "metrics.jsonl").exists()
    assert (cell / "checkpoints").is_dir()
  with pytest.raises(config.ConfigError, match="differ only in train.seed"):
    experiment.run_batch([base, dataclasses.replace(base, algorithm="fedavg",
                                                    algo=None)], ["a", "b"])
  with pytest.raises(config.ConfigError, match="repeat"):
    experiment.run_batch([base, base], ["a", "b"])


def test_algorithm_builder_rejects_fields_that_are_not_batchable():
  from fedjax_pfl import experiment
  from fedjax_pfl.models import get_model
  cfg = config.ExperimentConfig(algorithm="fedobp")
  assert experiment.batchable_fields(cfg) == ["train.lr", "algo.quantile"]
  assert experiment.batchable_fields(dataclasses.replace(cfg, algorithm="fedavg", algo=None)) == [
      "train.lr"]
  model = get_model("mlp", (8, 8, 1), 10)
  build = experiment.algorithm_builder(cfg, model, experiment.initial_params(model, 0), 16)
  alg, spec = build({"train.lr": 0.5, "algo.quantile": 0.9})
  assert alg.name == "fedobp" and spec.lr == 0.5
  with pytest.raises(config.ConfigError, match=r"not batchable for fedobp: \['algo.norm'\]"):
    build({"algo.norm": "layer"})
