"""Run outputs: plots, the report command, atomic writes."""

import os

import pytest

from fedjax_pfl import cli, io

SMALL = ["--dataset", "digits", "--clients", "5", "--rounds", "2", "--eval-every", "1",
         "--local-epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  dirs = []
  for algorithm in ("fedavg", "local"):
    workdir = str(root / algorithm)
    assert cli.main(["run", "--algorithm", algorithm, *SMALL, "--workdir", workdir]) == 0
    dirs.append(workdir)
  return dirs


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_run_writes_png_plots(two_runs):
  for name in ("accuracy.png", "loss.png", "client_accuracy_hist.png"):
    path = os.path.join(two_runs[0], name)
    assert _is_png(path) and os.path.getsize(path) > 5000, name


def test_report_compares_runs(two_runs, tmp_path, capsys):
  out = str(tmp_path / "report")
  assert cli.main(["report", *two_runs, "--out", out]) == 0
  table = capsys.readouterr().out
  assert "| fedavg | 2 |" in table and "| local | 2 |" in table
  assert _is_png(os.path.join(out, "report.png"))
  with open(os.path.join(out, "report.md")) as f:
    assert "| local | 2 |" in f.read()


def test_report_of_unfinished_run_is_an_error(tmp_path, capsys):
  assert cli.main(["report", str(tmp_path)]) == 2
  assert "summary.json" in capsys.readouterr().err


def test_atomic_write_leaves_no_partial_file(tmp_path):
  path = str(tmp_path / "x.json")
  io.write_json_atomic(path, {"a": 1})

  class Boom:
    pass
  with pytest.raises(TypeError):
    io.write_json_atomic(path, {"a": Boom()})
  with open(path) as f:
    assert '"a": 1' in f.read()
  assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")] == []


def test_summary_reports_communication_per_client_round(two_runs):
  import json
  with open(os.path.join(two_runs[0], "summary.json")) as f:   # fedavg, digits MLP
    summary = json.load(f)
  params = 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10       # 26,122
  assert summary["uplink_MiB_per_client_round"] == round(4 * params / 2**20, 4)
  assert summary["downlink_MiB_per_client_round"] == round(4 * params / 2**20, 4)
  with open(os.path.join(two_runs[1], "summary.json")) as f:   # Local-Only sends nothing
    local = json.load(f)
  assert local["uplink_MiB_per_client_round"] == local["downlink_MiB_per_client_round"] == 0.0
