"""The README's examples run and do what they claim."""

import importlib

from fedjax_pfl import algorithms


def test_obp_in_optax_loop_personalizes_the_differing_entry():
  example = importlib.import_module("examples.obp_in_optax_loop")
  out = example.main(rounds=30)
  # Only w[2] differs between the clients' true models: it is the personal entry.
  assert out["keep_w"] == [[False, False, True, False]] * 2
  assert max(out["personal_losses"]) < 1e-6 < min(out["global_losses"])


def test_new_algorithm_in_one_file_runs(tmp_path):
  try:
    example = importlib.import_module("examples.new_algorithm")
    summary = example.main(workdir=str(tmp_path / "fedavgm"), rounds=2)
    assert summary["algorithm"] == "fedavgm" and summary["rounds"] == 2
    assert 0.0 < summary["final_accuracy"] <= 1.0
  finally:
    algorithms.REGISTRY.pop("fedavgm", None)
