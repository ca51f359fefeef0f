"""experiment.run with the compiled multi-round loop equals the host loop."""

import pytest

from fedjax_pfl import config, experiment
from fedjax_pfl.errors import ConfigError


def _config(round_loop):
  return config.apply_overrides(config.ExperimentConfig(algorithm="fedobp"), [
      "data.num_clients=6", "train.rounds=5", "train.local_epochs=1", "train.eval_every=2",
      "train.checkpoint_every=3", "algo.quantile=0.9", "model.name=mlp",
      "system.parallelism=vmap", "system.step_loop=scan", f"system.round_loop={round_loop}"])


def test_compiled_round_loop_equals_host_loop(tmp_path):
  rounds = {}
  host = experiment.run(_config("host"), str(tmp_path / "host"), progress=False)
  compiled = experiment.run(_config("compiled"), str(tmp_path / "compiled"), progress=False,
                            on_round=lambda r: rounds.setdefault("seen", []).append(r))
  assert rounds["seen"] == [1, 2, 3, 4, 5]  # every round reported, in order
  # Sync points: evaluations at 2, 4, 5 and a checkpoint at 3.
  for key in ("final_accuracy", "best_accuracy", "final_loss"):
    assert compiled[key] == pytest.approx(host[key], rel=1e-4, abs=1e-6), key
  for key in ("total_uplink_MiB", "total_downlink_MiB"):
    assert compiled[key] == pytest.approx(host[key], rel=1e-6), key
  assert experiment._next_sync(0, _config("host").train) == 2
  assert experiment._next_sync(2, _config("host").train) == 3
  assert experiment._next_sync(4, _config("host").train) == 5


def test_compiled_round_loop_needs_vmap_and_scan():
  bad = config.apply_overrides(config.ExperimentConfig(algorithm="fedavg"), [
      "system.round_loop=compiled", "system.parallelism=sequential"])
  with pytest.raises(ConfigError, match="system.round_loop"):
    config.validate(bad)
  with pytest.raises(ConfigError, match="system.round_loop"):
    config.validate(config.apply_overrides(config.ExperimentConfig(), [
        "system.round_loop=fast"]))
