"""Smoke runs of every benchmark's ``main`` (in-process, tiny sizes, MLP).

Each must print exactly one JSON line with the environment, its settings and
positive timings. Sizes are cut below ``--smoke`` (fewer strategies, one
fused program per N) because XLA compile time dominates: the file needs about
35 s of CPU time on a 2-core machine.
"""

import json

import pytest

from benchmarks import bench_round, bench_scale, bench_seeds, bench_step, bench_throughput, run_all

ENV_KEYS = {"benchmark", "date", "backend", "device_kind", "num_devices", "jax_version",
            "cpu_count", "loadavg", "xla_flags", "settings"}


def _run(capsys, main, argv):
  record = main(argv)
  lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
  assert len(lines) == 1, lines
  assert json.loads(lines[0]) == json.loads(json.dumps(record))
  assert ENV_KEYS <= set(record)
  assert record["backend"] == "cpu"
  return record


def test_throughput_smoke(capsys):
  r = _run(capsys, bench_throughput.main,
           ["--smoke", "--cohorts", "2", "--strategies", "vmap+scan", "--repeats", "1"])
  assert r["benchmark"] == "throughput"
  rows = [x for x in r["results"] if "ratio" in x]
  assert [x["strategy"] for x in rows] == ["vmap+scan"]
  for x in rows:
    assert x["C"] == 2 and x["samples"] == 2 * 32
    assert x["compile_s"] > 0 and x["median_s"] > 0 and x["samples_per_s"] > 0
    assert x["ratio"] == pytest.approx(x["samples_per_s"] / x["central_samples_per_s"])
  assert {"parallelism", "step_loop", "chunk_size"} <= set(rows[0])
  assert r["best_ratio_per_C"]["2"]["ratio"] > 0
  central = r["results"][-1]["central_python"]  # the host-driven (sequential) path
  assert central["samples"] == 64 and central["samples_per_s"] > 0


def test_round_smoke(capsys):
  r = _run(capsys, bench_round.main, ["--smoke", "--algorithms", "fedavg"])
  (x,) = r["results"]
  assert r["settings"]["N"] == 6 and x["C"] == 2 and x["N"] == 6
  assert x["compile_s"]["total"] > 0 and x["first_round_s"] > 0
  assert x["median_ms_per_round"] > 0 and x["total_s"] > 0
  assert x["client_steps_per_round"][0] >= 1


def test_round_smoke_reports_lane_utilization(capsys):
  """The padded vmap + scan round runs every client for the static step count;
  packed on one lane, every lane step is a useful client step."""
  r = _run(capsys, bench_round.main, ["--smoke", "--algorithms", "fedavg", "--rounds", "2",
                                      "--parallelism", "vmap", "--step-loop", "scan"])
  (padded,) = r["results"]
  r = _run(capsys, bench_round.main, ["--smoke", "--algorithms", "fedavg", "--rounds", "2",
                                      "--parallelism", "vmap", "--step-loop", "scan",
                                      "--lanes", "1"])
  (packed,) = r["results"]
  assert packed["lanes"] == 1 and packed["lane_utilization"] == pytest.approx([1.0, 1.0])
  assert all(0.0 < u < 1.0 for u in padded["lane_utilization"])
  assert packed["client_steps_per_round"] == padded["client_steps_per_round"]
  assert packed["train_loss"] == pytest.approx(padded["train_loss"], rel=1e-5)


def test_flbench_side_by_side_reads_a_fake_flbench(tmp_path, capsys):
  """The FL-bench side's timing wrapper and parsing, against a stand-in with
  FL-bench's layout (``main.py``, ``src/server/fedavg.py``) and a stub torch."""
  import argparse
  import sys

  from benchmarks import flbench_side_by_side
  (tmp_path / "src" / "server").mkdir(parents=True)
  (tmp_path / "src" / "__init__.py").write_text("")
  (tmp_path / "src" / "server" / "__init__.py").write_text("")
  (tmp_path / "torch.py").write_text("def set_num_threads(n):\n  pass\n")
  (tmp_path / "src" / "server" / "fedavg.py").write_text(
      "class FedAvgServer:\n"
      "  def __init__(self, rounds):\n    self.rounds = rounds\n"
      "  def train_one_round(self):\n"
      "    self.selected_clients = [self.current_epoch + 3, 1]\n"
      "  def run(self):\n"
      "    for self.current_epoch in range(self.rounds):\n      self.train_one_round()\n")
  (tmp_path / "main.py").write_text(
      "import sys\nfrom src.server.fedavg import FedAvgServer\n"
      "n = int([a for a in sys.argv if a.startswith('common.global_epoch=')][0].split('=')[1])\n"
      "FedAvgServer(n).run()\n")
  args = argparse.Namespace(flbench=str(tmp_path), flbench_python=sys.executable, threads=1)
  rows = flbench_side_by_side.run_flbench(args, 3)
  assert [r["round"] for r in rows] == [0, 1, 2]
  assert [r["clients"] for r in rows] == [[1, 3], [1, 4], [1, 5]]
  assert all(r["s"] >= 0 for r in rows)
  for argv, needle in ((["--flbench", str(tmp_path / "missing"), "--flbench-python",
                         sys.executable], "no FL-bench checkout"),
                       (["--flbench", str(tmp_path), "--flbench-python",
                         str(tmp_path / "main.py")], "not an executable")):
    with pytest.raises(SystemExit) as exit_info:  # argparse: one usage line + one error line
      flbench_side_by_side.main(argv)
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err
  with pytest.raises(RuntimeError, match="FL-bench failed"):
    flbench_side_by_side.run_flbench(
        argparse.Namespace(flbench=str(tmp_path / "missing"), flbench_python=sys.executable,
                           threads=1), 2)


def test_seeds_smoke(capsys):
  r = _run(capsys, bench_seeds.main, ["--smoke", "--seeds", "2", "--repeats", "1"])
  assert r["one_run"]["median_s"] > 0 and r["one_run"]["compile_s"] > 0
  (x,) = r["results"]
  assert x["S"] == 2 and x["median_s"] > 0
  assert x["ratio"] == pytest.approx(x["median_s"] / r["one_run"]["median_s"])
  assert r["settings"]["C"] == 2


def test_scale_smoke(capsys):
  r = _run(capsys, bench_scale.main, ["--smoke", "--clients", "8,16", "--parallelism", "vmap",
                                      "--step-loop", "scan"])
  rows = r["results"]
  assert [x["N"] for x in rows] == [8, 16]
  for x in rows:
    # FedOBP's stacked client state is exactly one float32 model per client.
    assert x["state_bytes"] == x["state_bytes_estimate"] == x["N"] * x["params"] * 4
    assert x["params"] == 26_122 and x["median_ms_per_round"] > 0 and x["compile_s"] > 0
  assert r["summary"]["mlp"]["round_time_ratio_max_over_min_N"] > 0


def test_step_smoke(capsys):
  r = _run(capsys, bench_step.main, ["--smoke", "--models", "cnn", "--w-rounds", "0",
                                     "--no-threads"])
  (x,) = r["steps"]
  assert x["model"] == "cnn" and x["batch"] == 8 and x["ms_per_step_best"] > 0
  assert x["ms_per_step_median"] >= x["ms_per_step_best"]
  # XLA's count for FedAvgCNN at batch 8: about 3 x 8 x 8.53 MFLOP (forward per sample).
  assert 0.15e9 < x["flops"] < 0.25e9
  assert x["gflops"] == pytest.approx(x["flops"] / (x["ms_per_step_best"] * 1e-3) / 1e9)
  assert r["gemm_rate_gflops"] >= max(g["gflops_best"] for g in r["gemm"].values())
  assert x["utilization"] == pytest.approx(x["gflops"] / r["gemm_rate_gflops"])
  assert "round" not in r


def test_scale_skips_what_does_not_fit(capsys):
  r = _run(capsys, bench_scale.main, ["--series", "cnn", "--clients", "10000"])
  (x,) = r["results"]
  assert x["state_bytes_estimate"] == 10_000 * 582_026 * 4 and "skipped" in x


def test_run_all_rejects_unknown_names():
  with pytest.raises(SystemExit):
    run_all.main(["--only", "nope"])
