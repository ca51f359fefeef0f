"""``benchmarks.device_report --smoke``: one JSON and one Markdown table with
every section, consistent numbers and no errors (CPU, tiny sizes, MLP)."""

import json
import os

import pytest

from benchmarks import device_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("device_report"))
  returned = device_report.main(["--smoke", "--out", out])
  with open(os.path.join(out, "device_report.json")) as f:
    written = json.load(f)
  with open(os.path.join(out, "device_report.md")) as f:
    md = f.read()
  return returned, written, md


def test_json_has_every_section_without_errors(report):
  returned, written, _ = report
  assert written["smoke"] is True and written["env"]["backend"] == "cpu"
  assert written["complete"] is True and "running" not in written
  assert list(written["sections"]) == list(device_report.SECTIONS)
  for name, sec in written["sections"].items():
    assert "error" not in sec and "skipped" not in sec, (name, sec.get("error"))
    assert sec["section_s"] > 0
  assert written["total_s"] >= sum(s["section_s"] for s in written["sections"].values())
  assert json.loads(json.dumps(returned, default=str))["sections"].keys() == \
      written["sections"].keys()


def test_numbers_are_consistent(report):
  s = report[1]["sections"]
  w = s["w"]
  assert w["host_ms_per_round_median"] >= w["host_ms_per_round_min"] > 0
  assert w["multi_ms_per_round"] > 0 and w["rounds"] == 2
  (tp,) = s["throughput"]["rows"]
  assert tp["C"] == 2 and tp["samples"] == 2 * 1 * 32
  assert tp["ratio"] == pytest.approx(tp["central_round_s"] / tp["clients_round_s"])
  assert tp["clients_samples_per_s"] == pytest.approx(tp["samples"] / tp["clients_round_s"])
  assert s["seeds"]["S"] == 2 and s["seeds"]["execution"]["fused"] is True
  assert s["seeds"]["ratio"] == pytest.approx(s["seeds"]["batched_s"] / s["seeds"]["one_run_s"])
  sc = s["scale"]
  # FedOBP keeps one float32 model per client: the stacked state is N x P x 4 bytes.
  assert sc["N"] == 50 and sc["C"] == 10 and sc["state_bytes"] == 50 * sc["params"] * 4
  padded, one_lane = s["lanes"]["rows"]
  # One lane steps one client at a time: every lane step is useful. Padding
  # every client to the static step count wastes some; the results agree.
  assert padded["lanes"] is None and one_lane["lanes"] == 1
  assert one_lane["lane_utilization"] == pytest.approx(1.0)
  assert 0.0 < padded["lane_utilization"] < 1.0
  assert one_lane["train_loss"] == pytest.approx(padded["train_loss"], rel=1e-5)
  # Evaluation batch sizes change the speed, not the accuracy.
  ev = s["eval"]["rows"]
  assert [r["eval_batch_size"] for r in ev] == [2, 4]
  assert ev[0]["accuracy"] == ev[1]["accuracy"] and ev[0]["eval_s"] > 0
  assert [r["algorithm"] for r in s["flbench"]["rows"]] == ["fedobp", "fedavg"]
  for r in s["flbench"]["rows"]:
    assert 0.0 <= r["accuracy"] <= 1.0 and r["rounds"] == 2
    assert r["ms_per_round"] == pytest.approx(1e3 * r["wall_s"] / 2)


def test_markdown_table(report):
  md = report[2]
  lines = md.splitlines()
  assert lines[0] == "# Device report (smoke)"
  table = [ln for ln in lines if ln.startswith("| ")]
  assert table[0] == "| section | metric | value | conditions |"
  body = table[1:]
  # w: 4 rows; throughput: 1 (C = 2); seeds: 1; scale: 2; lanes: 2; eval: 2; flbench: 2.
  assert [r.split(" | ")[0][2:] for r in body] == (
      ["w"] * 4 + ["throughput", "seeds"] + ["scale"] * 2 + ["lanes"] * 2 + ["eval"] * 2
      + ["flbench"] * 2)
  assert "test examples, batch 4 (s)" in md
  assert "W packed on 1 lane: ms/round" in md and "W padded (one lane a client)" in md
  assert all(ln.count("|") == 5 for ln in body)
  assert "C = 2: clients / centralized samples/s" in md and "N = 50: ms/round" in md


def test_only_a_subset_and_a_killed_run_leave_a_readable_report(tmp_path, monkeypatch):
  """``--only`` reports just those sections; a run stopped inside a section (the
  device's time limit) still has every finished section on disk, marked incomplete."""
  def killed(*args, **kwargs):
    raise KeyboardInterrupt  # not an Exception: the report does not catch it
  monkeypatch.setattr(device_report, "section_flbench", killed)
  out = str(tmp_path)
  with pytest.raises(KeyboardInterrupt):
    device_report.main(["--smoke", "--only", "eval,flbench", "--out", out])
  with open(os.path.join(out, "device_report.json")) as f:
    written = json.load(f)
  assert written["complete"] is False and written["running"] == "flbench"
  assert list(written["sections"]) == ["eval"] and "error" not in written["sections"]["eval"]
  with open(os.path.join(out, "device_report.md")) as f:
    md = f.read()
  assert "**Incomplete**: written while section `flbench` was running" in md
  body = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
  assert [r.split(" | ")[0][2:] for r in body] == ["eval", "eval"]
