"""Scale-out: results do not depend on the layout (processes x devices)."""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest
from jax.sharding import PartitionSpec

from fedjax_pfl import cli
from fedjax_pfl.algorithms.fedobp import FedOBPConfig
from fedjax_pfl.core import backend
from fedjax_pfl.scaling import memory_estimate
from tests.helpers import make_sim, run_rounds, tiny_data

RUN = ["run", "--algorithm", "fedobp", "--dataset", "digits", "--clients", "8", "--rounds", "3",
       "--eval-every", "1", "--local-epochs", "1", "--participation", "0.5", "--quantile",
       "0.99", "--no-progress"]


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _assert_same(a, b):
  assert [r["round"] for r in a] == [r["round"] for r in b]
  for x, y in zip(a, b):
    assert x["accuracy"] == pytest.approx(y["accuracy"], abs=1e-9)
    for key in ("loss", "train_loss", "client_mean_accuracy"):
      assert x[key] == pytest.approx(y[key], rel=1e-5), key


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_client_state_is_split_over_the_clients_axis():
  ex = backend.Execution(parallelism="vmap", step_loop="scan", num_devices=4)
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=ex)
  state, _ = run_rounds(sim, p0, 1)
  leaf = jax.tree.leaves(state.clients)[0]
  assert leaf.sharding.spec == PartitionSpec("clients") and len(leaf.sharding.device_set) == 4
  assert jax.tree.leaves(state.server)[0].sharding.is_fully_replicated


@pytest.mark.parametrize("name", ["fedcac", "fedpurin", "flute", "floco"])
def test_per_client_tables_are_split_over_the_clients_axis(name):
  """Per-client tables (FedCAC/FedPURIN's next models, FLUTE's heads, FLOCO's
  updates and centres) live in the client state, split over 4 devices, and
  the server state holds no [N, ...] table."""
  ex = backend.Execution(parallelism="vmap", step_loop="scan", num_devices=4)
  sim, p0 = make_sim(name, data=tiny_data(num_clients=12), execution=ex)  # N = 12: no param dim
  state, _ = run_rounds(sim, p0, 2)
  for leaf in jax.tree.leaves(state.clients):
    assert leaf.shape[0] == sim.num_clients
    assert leaf.sharding.spec == PartitionSpec("clients") and len(leaf.sharding.device_set) == 4
  for leaf in jax.tree.leaves(state.server):
    assert leaf.sharding.is_fully_replicated
    assert sim.num_clients not in leaf.shape[:1], leaf.shape


def test_one_by_four_devices_equals_one_device(tmp_path):
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  assert cli.main([*RUN, "--workdir", one]) == 0
  assert cli.main([*RUN, "--strategy", "vmap", "--step-loop", "scan", "--num-devices", "4",
                   "--workdir", four]) == 0
  _assert_same(_records(one), _records(four))


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["replicated", "by_client"])
def test_two_processes_by_two_devices_equal_one_process(tmp_path, placement):
  # by_client: each process materializes only the examples of its own clients.
  ref = str(tmp_path / "ref")
  assert cli.main([*RUN, "--workdir", ref]) == 0
  work, port = str(tmp_path / "mp"), _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "fedjax_pfl.cli", *RUN, "--workdir", work,
       "--set", f"system.data_placement={placement}", "--coordinator",
       f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=420)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
  _assert_same(_records(ref), _records(work))


def test_sequential_strategy_is_refused_with_several_processes(monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match="vmap \\+ scan"):
    backend.Execution(parallelism="sequential", step_loop="python").validate()


def test_memory_estimate_counts_the_stacked_client_state():
  est = memory_estimate(algorithm="fedobp", dataset="fashion_mnist", num_clients=1000,
                        devices=4)
  assert est["params"] == 582_026
  assert est["client_state_bytes"] == 1000 * 582_026 * 4     # theta_last of every client
  assert est["client_state_per_device"] == est["client_state_bytes"] // 4
  assert est["server_bytes"] == 582_026 * 4
  odd = memory_estimate(algorithm="fedobp", dataset="fashion_mnist", num_clients=1001,
                        devices=4)
  assert not odd["client_state_sharded"]
  assert odd["client_state_per_device"] == odd["client_state_bytes"]
  fedavg = memory_estimate(algorithm="fedavg", dataset="digits", num_clients=10, devices=1)
  assert fedavg["client_state_bytes"] == 0


def test_memory_estimate_by_client_data_is_split_over_devices():
  rep = memory_estimate(algorithm="fedavg", dataset="fashion_mnist", num_clients=1000,
                        devices=4)
  assert rep["data_per_device"] == rep["data_bytes"] == 70_000 * (784 * 4 + 4) + 70_000 * 4
  split = memory_estimate(algorithm="fedavg", dataset="fashion_mnist", num_clients=1000,
                          devices=4, data_placement="by_client", max_client_examples=300)
  assert split["data_bytes"] == 1000 * 300 * (784 * 4 + 4 + 4)
  assert split["data_per_device"] == split["data_bytes"] // 4
  assert (rep["total_per_device"] - split["total_per_device"]
          == rep["data_per_device"] - split["data_per_device"])
  with pytest.raises(ValueError, match="data_placement"):
    memory_estimate(algorithm="fedavg", dataset="digits", num_clients=4, devices=1,
                    data_placement="sharded")
