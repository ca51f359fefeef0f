"""Lane packing (``system.lanes``, :mod:`fedjax_pfl.core.lanes`): a cohort's
ragged clients queued onto a few vmapped lanes give the results of the
sequential path, whatever the number of lanes, the cohort order or the
placement; the lane-utilization counter matches a NumPy replay of the queue."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl import config as config_lib
from fedjax_pfl.algorithms.fedobp import FedOBPConfig
from fedjax_pfl.core import backend, cohort, lanes, local
from fedjax_pfl.errors import ConfigError
from tests.algorithms.test_contract import CASES
from tests.core.test_engine_regression import ROUNDS, _close, _run
from tests.helpers import make_sim, run_rounds, tiny_data

SEQ_PY = backend.Execution(parallelism="sequential", step_loop="python")
PADDED = backend.Execution(parallelism="vmap", step_loop="scan")


def packed(lanes_, **kw):
  return backend.Execution(parallelism="vmap", step_loop="scan", lanes=lanes_, **kw)


def replay_queue(totals, num_lanes):
  """NumPy replay of the schedule: longest first, a free lane takes the next
  client; returns the number of iterations that step some lane."""
  queue = sorted(range(len(totals)), key=lambda i: -totals[i])  # stable, longest first
  left = [None] * min(num_lanes, len(totals))
  nxt, iters = 0, 0
  for j in range(len(left)):
    left[j] = totals[queue[nxt]]
    nxt += 1
  while True:
    for j in range(len(left)):  # harvest, then refill from the queue
      while left[j] is not None and left[j] == 0:
        left[j] = totals[queue[nxt]] if nxt < len(queue) else None
        nxt += 1 if nxt < len(queue) else 0
    if all(v is None for v in left):
      return iters
    iters += 1
    left = [v - 1 if v else v for v in left]


@pytest.mark.parametrize("epochs,num_slots", [(1, 33), (3, 33), (2, 8)])
def test_step_schedule_is_the_sequential_active_steps(epochs, num_slots):
  prog = local.sgd_program(lambda p, b, k, c: 0.0, local.make_optimizer(0.1), epochs=epochs,
                           batch_size=4, num_slots=num_slots)
  for count in [c for c in (0, 1, 2, 3, 7, 8, 9, 16, 17, 33) if c <= num_slots]:
    total, step_of = prog.step_schedule(jnp.int32(count))
    got = [int(t) for t in step_of(jnp.arange(int(total)))]
    assert got == prog.active_steps([count]), count


def test_step_schedule_runs_every_step_with_a_custom_active_fn():
  prog = local.sgd_program(lambda p, b, k, c: 0.0, local.make_optimizer(0.1), epochs=2,
                           batch_size=4, num_slots=8)._replace(active_fn=lambda c: [0])
  total, step_of = prog.step_schedule(jnp.int32(3))
  assert int(total) == prog.num_steps and int(step_of(jnp.int32(5))) == 5


def counting_task(num_steps=6):
  """A task whose output records the steps each client took, in order."""
  def prologue(shared, client, cdata, cid):
    return jnp.full((num_steps,), -1, jnp.int32), jnp.int32(0), cid

  def step(state, t, cdata):
    seen, n, cid = state
    return seen.at[n].set(t), n + 1, cid

  def epilogue(shared, client, state):
    seen, n, cid = state
    return {"seen": seen, "n": n, "cid": cid}

  def schedule(count):
    return jnp.minimum(count, num_steps), lambda k: 2 * k  # step t = 2k
  return cohort.ClientTask(prologue, step, epilogue, 2 * num_steps, None, schedule,
                           lambda out, stats: {**out, **stats})


@pytest.mark.parametrize("num_lanes", [1, 2, 3, 5, 9])
def test_each_client_takes_its_own_steps_and_utilization_is_counted(num_lanes):
  data = tiny_data()
  counts = np.array([5, 0, 6, 2, 6, 1, 3, 4], np.int32)
  data = cohort.DeviceData(*(jnp.asarray(a) for a in (
      data.x, data.y, data.train_idx, counts, data.test_idx, data.test_counts)))
  ids = jnp.array([6, 0, 1, 3, 4, 7], jnp.int32)
  out = jax.jit(lambda i: lanes.packed_map(counting_task(), None, {}, data, i, num_lanes))(ids)
  totals = np.minimum(counts[np.asarray(ids)], 6)
  for c, total in enumerate(totals):
    assert int(out["cid"][c]) == int(ids[c]) and int(out["n"][c]) == total
    np.testing.assert_array_equal(out["seen"][c][:total], 2 * np.arange(total))
  iters = replay_queue(list(totals), num_lanes)
  want = totals.sum() / (iters * min(num_lanes, len(ids)))
  np.testing.assert_allclose(out["lane_utilization"], want, rtol=1e-6)
  np.testing.assert_array_equal(out["client_steps"], totals)
  if num_lanes >= len(ids):  # one client per lane: iterations = the longest client
    assert iters == totals.max()


@pytest.mark.parametrize("num_lanes,algorithm", [(1, "fedobp"), (3, "fedrep"), (8, "fedavg")])
def test_packed_rounds_equal_the_sequential_path(num_lanes, algorithm):
  cfg = FedOBPConfig(quantile=0.8) if algorithm == "fedobp" else None
  ref_sim, p0 = make_sim(algorithm, cfg, execution=SEQ_PY, participation=0.75)
  sim, _ = make_sim(algorithm, cfg, execution=packed(num_lanes), participation=0.75)
  ref, ref_hist = run_rounds(ref_sim, p0, 2)
  got, got_hist = run_rounds(sim, p0, 2)
  chex.assert_trees_all_close(ref.server, got.server, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ref.clients, got.clients, rtol=1e-5, atol=1e-6)
  for (_, want), (_, have) in zip(ref_hist, got_hist):
    for k in want:
      np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert 0.0 < have["lane_utilization"] <= 1.0
  assert sim.evaluate(got)["client_accuracy"] == ref_sim.evaluate(ref)["client_accuracy"]


def test_packing_raises_lane_utilization_over_padding():
  # Ragged clients: packing 2 lanes beats one lane per client (padded to the
  # longest client), and it equals the padded vmap path.
  sizes = [40, 6, 6, 6, 8, 6, 7, 6]
  data = tiny_data(sizes=sizes)
  ref_sim, p0 = make_sim("fedavg", data=data, execution=PADDED, participation=1.0, epochs=1)
  sim, _ = make_sim("fedavg", data=data, execution=packed(2), participation=1.0, epochs=1)
  ref, _ = run_rounds(ref_sim, p0, 1)
  got, hist = run_rounds(sim, p0, 1)
  chex.assert_trees_all_close(ref.server, got.server, rtol=1e-5, atol=1e-6)
  train = np.asarray(data.train_counts)
  useful = sum(local.num_batches(n, 4) for n in train)
  padded = len(train) * int(data.train_idx.shape[1] // 4 + (data.train_idx.shape[1] % 4 > 0))
  assert hist[-1][1]["lane_utilization"] == pytest.approx(
      useful / (2 * replay_queue([local.num_batches(n, 4) for n in train], 2)))
  assert hist[-1][1]["lane_utilization"] > 2 * useful / padded


def test_packed_multi_round_loop_batched_runs_and_placements():
  ex = packed(3)
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=ex)
  ref, history = run_rounds(sim, p0, 3)
  sim2, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=ex,
                     data_placement="by_client")
  state, chunk = sim2.run_rounds(sim2.init(p0), 3)
  chex.assert_trees_all_close(ref.server, state.server, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ref.clients, state.clients, rtol=1e-5, atol=1e-6)
  for (_, want), got in zip(history, chunk):
    np.testing.assert_allclose(got["lane_utilization"], want["lane_utilization"])
  # Two runs (different lr) vmapped into one program, each packed.
  hp = {"train.lr": [0.1, 0.05]}
  batch = sim.init_batch([p0, p0], hp, seeds=[0, 0])
  batch, chunks = sim.run_rounds_batch(batch, [0, 0], 3, hp)
  chex.assert_trees_all_close(ref.server, sim.unstack_run(batch, 0).server, rtol=1e-5,
                              atol=1e-6)
  sim4, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=packed(3, num_devices=4))
  got4, _ = run_rounds(sim4, p0, 3)
  chex.assert_trees_all_close(ref.clients, got4.clients, rtol=1e-5, atol=1e-6)


def test_packed_finetuned_evaluation_equals_sequential():
  ref_sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), finetune_epochs=1)
  sim, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), finetune_epochs=1,
                    execution=packed(2))
  ref, _ = run_rounds(ref_sim, p0, 1)
  got, _ = run_rounds(sim, p0, 1)
  a, b = ref_sim.evaluate_finetuned(ref), sim.evaluate_finetuned(got)
  assert a["client_accuracy"] == b["client_accuracy"]
  assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(parallelism="sequential", step_loop="python", lanes=2), "system.lanes=2 with"),
    (dict(parallelism="vmap", step_loop="python", lanes=2), "lanes only with vmap"),
    (dict(parallelism="vmap", step_loop="scan", lanes=0), "system.lanes=0"),
    (dict(parallelism="vmap", step_loop="scan", lanes=2, chunk_size=2), "one of the two"),
])
def test_lanes_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    backend.Execution(**kwargs).validate()


def test_lanes_config_errors_name_the_field():
  for system in (config_lib.SystemConfig(lanes=0),
                 config_lib.SystemConfig(lanes=2, chunk_size=4),
                 config_lib.SystemConfig(lanes=2, parallelism="sequential"),
                 config_lib.SystemConfig(lanes=2, step_loop="python")):
    with pytest.raises(ConfigError, match="system.lanes"):
      config_lib.validate(config_lib.ExperimentConfig(system=system))


def test_lanes_resolve_auto_to_vmap_and_scan():
  from fedjax_pfl.experiment import resolve_execution
  ex = resolve_execution(config_lib.SystemConfig(lanes=3))
  assert (ex.parallelism, ex.step_loop, ex.lanes) == ("vmap", "scan", 3)
  ex.validate()
  assert resolve_execution(config_lib.SystemConfig()).lanes is None


OTHER_EXECUTIONS = {
    # The CPU default: each client's active steps in one compiled loop.
    "sequential-scan": backend.Execution(parallelism="sequential", step_loop="scan"),
    "packed2": packed(2),
}


@pytest.mark.parametrize("name", sorted(OTHER_EXECUTIONS))
@pytest.mark.parametrize("case", CASES)
def test_every_algorithm_matches_the_recorded_metrics(case, name, monkeypatch):
  """The engine regression's recorded metrics (sequential, Python-stepped)
  reproduced by the CPU default (sequential + scan) and with the cohort
  packed onto 2 lanes."""
  import json

  import tests.core.test_engine_regression as reg
  real = reg.make_sim
  execution = OTHER_EXECUTIONS[name]
  monkeypatch.setattr(reg, "make_sim", lambda *a, **kw: real(*a, execution=execution, **kw))
  got = _run(case)
  want = json.loads(reg.RECORD.read_text())[case]
  if execution.lanes:
    for r in range(ROUNDS):
      assert 0.0 < got["rounds"][r].pop("lane_utilization") <= 1.0
      assert got["rounds"][r].pop("client_steps") > 0
  _close(got, want, case, rtol=2e-4, atol=1e-5)  # batched against sequential kernels
