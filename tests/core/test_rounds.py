"""Round driver: equivalences, invariances (order, padding, chunks, devices)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.fedobp import FedOBPConfig
from fedjax_pfl.core import backend, cohort
from fedjax_pfl.core.evaluation import summarize_eval
from fedjax_pfl.core.rounds import cohort_size
from tests.helpers import make_sim, run_rounds, tiny_data

SEQ_PY = backend.Execution(parallelism="sequential", step_loop="python")
EXECUTIONS = {
    "sequential-scan": backend.Execution(parallelism="sequential", step_loop="scan"),
    "vmap-scan": backend.Execution(parallelism="vmap", step_loop="scan"),
    "vmap-python": backend.Execution(parallelism="vmap", step_loop="python"),
    # Evaluation vmapped in chunks of 3 and over every client at once (the
    # accelerator default); the others evaluate one client at a time (CPU's).
    "vmap-scan-chunk3": backend.Execution(parallelism="vmap", step_loop="scan", chunk_size=3,
                                          eval_chunk_size=3),
    "vmap-python-chunk3": backend.Execution(parallelism="vmap", step_loop="python", chunk_size=3),
    "vmap-scan-4dev": backend.Execution(parallelism="vmap", step_loop="scan", num_devices=4,
                                        eval_chunk_size=1000),
}


def test_cohort_size():
  assert cohort_size(100, 0.1) == 10
  assert cohort_size(20, 0.01) == 1
  assert cohort_size(7, 1.0) == 7
  assert cohort_size(10, 0.3) == 3


def test_fedobp_quantile_one_equals_fedavg_round_for_round():
  sim_avg, p0 = make_sim("fedavg")
  sim_obp, _ = make_sim("fedobp", FedOBPConfig(quantile=1.0))
  _, h_avg = run_rounds(sim_avg, p0, 3)
  _, h_obp = run_rounds(sim_obp, p0, 3)
  for (s_avg, _), (s_obp, m_obp) in zip(h_avg, h_obp):
    chex.assert_trees_all_close(s_avg.server, s_obp.server, rtol=1e-6, atol=1e-7)
    assert m_obp["personalized_fraction"] == 0.0
  e_avg, e_obp = sim_avg.evaluate(h_avg[-1][0]), sim_obp.evaluate(h_obp[-1][0])
  assert e_avg["accuracy"] == pytest.approx(e_obp["accuracy"])
  assert e_avg["loss"] == pytest.approx(e_obp["loss"], rel=1e-5)


def test_fedobp_personalizes_about_one_minus_q():
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.9, norm="none"))
  state, history = run_rounds(sim, p0, 3)
  frac = history[-1][1]["personalized_fraction"]
  num = sum(a.size for a in jax.tree.leaves(p0))
  # Linear interpolation: exactly P - 1 - floor(q (P - 1)) entries lie above tau.
  assert frac == pytest.approx((num - 1 - np.floor(0.9 * (num - 1))) / num, rel=1e-5)
  # Clients evaluated with merged models: never equal to the pure global model.
  merged = sim.algorithm.personalize(state.server, jax.tree.map(lambda a: a[0], state.clients))
  diff = sum(float(jnp.sum(m != g)) for m, g in zip(jax.tree.leaves(merged),
                                                    jax.tree.leaves(state.server)))
  assert diff > 0


def test_fedobp_never_selected_client_uses_initial_model():
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.5), participation=0.125)
  state, _ = run_rounds(sim, p0, 1)
  picked = set(sim.cohort(0).tolist())
  other = next(i for i in range(sim.num_clients) if i not in picked)
  last = jax.tree.map(lambda a: a[other], state.clients.last)
  chex.assert_trees_all_equal(last, p0)


def test_local_only_never_mixes_clients():
  """Client 0's model does not change when every other client's labels do."""
  sim_a, p0 = make_sim("local", data=tiny_data(), participation=1.0)
  sim_b, _ = make_sim("local", data=tiny_data(label_seed=123), participation=1.0)
  state_a, _ = run_rounds(sim_a, p0, 2)
  state_b, _ = run_rounds(sim_b, p0, 2)
  client0 = lambda s: jax.tree.map(lambda a: a[0], s.clients)
  chex.assert_trees_all_equal(client0(state_a), client0(state_b))
  other = lambda s: jax.tree.map(lambda a: a[2], s.clients)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other(state_a)),
                                                      jax.tree.leaves(other(state_b))))


def test_fedavg_mixes_clients():
  sim_a, p0 = make_sim("fedavg", data=tiny_data(), participation=1.0)
  sim_b, _ = make_sim("fedavg", data=tiny_data(label_seed=123), participation=1.0)
  state_a, _ = run_rounds(sim_a, p0, 1)
  state_b, _ = run_rounds(sim_b, p0, 1)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state_a.server),
                                                      jax.tree.leaves(state_b.server)))


def test_deterministic():
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8))
  s1, h1 = run_rounds(sim, p0, 2)
  sim2, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8))
  s2, h2 = run_rounds(sim2, p0, 2)
  chex.assert_trees_all_equal(s1.server, s2.server)
  chex.assert_trees_all_equal(s1.clients, s2.clients)
  assert h1[-1][1] == h2[-1][1]


@pytest.mark.parametrize("name", sorted(EXECUTIONS))
@pytest.mark.parametrize("algorithm", ["fedavg", "fedobp"])
def test_execution_strategy_invariance(name, algorithm):
  """Same results for vmap/sequential, scan/python, chunking+padding, 4 devices."""
  cfg = FedOBPConfig(quantile=0.8) if algorithm == "fedobp" else None
  ref_sim, p0 = make_sim(algorithm, cfg, execution=SEQ_PY)
  sim, _ = make_sim(algorithm, cfg, execution=EXECUTIONS[name])
  ref, ref_hist = run_rounds(ref_sim, p0, 2)
  got, got_hist = run_rounds(sim, p0, 2)
  chex.assert_trees_all_close(ref.server, got.server, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(ref.clients, got.clients, rtol=1e-4, atol=1e-5)
  assert ref_hist[-1][1]["train_loss"] == pytest.approx(got_hist[-1][1]["train_loss"], rel=1e-4)
  e_ref, e_got = ref_sim.evaluate(ref), sim.evaluate(got)
  assert e_ref["accuracy"] == pytest.approx(e_got["accuracy"])
  assert e_ref["loss"] == pytest.approx(e_got["loss"], rel=1e-4)


def test_cohort_order_invariance(monkeypatch):
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), participation=0.5)
  ref, _ = run_rounds(sim, p0, 2)
  sim_rev, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), participation=0.5)
  original = sim_rev.cohort
  monkeypatch.setattr(sim_rev, "cohort", lambda t: original(t)[::-1].copy())
  got, _ = run_rounds(sim_rev, p0, 2)
  chex.assert_trees_all_close(ref.server, got.server, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ref.clients, got.clients, rtol=1e-5, atol=1e-6)


def test_cohort_padding_gets_zero_weight():
  ex = backend.make_backend(backend.Execution(parallelism="vmap", chunk_size=3), num_clients=8)
  ids, valid = ex.pad_cohort(np.array([1, 4, 5, 7]))
  assert ids.tolist() == [1, 4, 5, 7, 8, 8] and valid.tolist() == [True] * 4 + [False] * 2
  stacked = jnp.arange(8.0)
  out = cohort.scatter(stacked, jnp.asarray(ids), jnp.full(6, -1.0), jnp.asarray(valid))
  assert out.tolist() == [0, -1, 2, 3, -1, -1, 6, -1]


def test_no_retracing_across_rounds():
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8),
                     execution=backend.Execution(parallelism="vmap", step_loop="python"))
  run_rounds(sim, p0, 3)
  sizes = sim.backend.cache_sizes()
  assert all(v <= 1 for v in sizes.values()), sizes
  assert sizes["_finish"] == 1 and sizes["ClientTask[1]"] == 1, sizes  # the aggregation, a step
  sim2, _ = make_sim("fedavg", execution=EXECUTIONS["vmap-scan"])
  run_rounds(sim2, p0, 3)
  assert sim2.backend.cache_sizes()["_round"] == 1


@pytest.mark.parametrize("name", ["vmap-scan", "vmap-scan-4dev", "sequential-scan"])
def test_run_rounds_equals_single_rounds(name):
  # Many rounds in one compiled lax.scan (cohort sampling on device) give the
  # same states and per-round metrics as one program per round.
  ex = EXECUTIONS[name]
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=ex)
  ref, history = run_rounds(sim, p0, 4)
  sim2, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=ex)
  state, first = sim2.run_rounds(sim2.init(p0), 3)
  state, last = sim2.run_rounds(state, 1)
  assert state.round == 4 and len(first) == 3 and len(last) == 1
  chex.assert_trees_all_close(ref.server, state.server, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ref.clients, state.clients, rtol=1e-5, atol=1e-6)
  for (_, want), got in zip(history, first + last):
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
  if ex.parallelism == "vmap":
    assert sim2.backend.cache_sizes()["_rounds"] == 2  # one program per chunk length
  with pytest.raises(ValueError, match="num_rounds"):
    sim2.run_rounds(state, 0)


@pytest.mark.parametrize("name,runs", [
    # (seed, lr, quantile): lr and q vary, a seed repeats with another lr.
    ("fedobp", [(0, 0.1, 0.8), (0, 0.05, 0.5), (3, 0.1, 0.5)]),
    ("apfl", [(0, 0.1, None), (0, 0.02, None)]),  # alpha's step size is the client lr
])
def test_batched_runs_equal_separate_runs(name, runs):
  # Runs that differ in seed, learning rate and quantile, vmapped into one
  # program with the values traced, give each run's own keys, cohorts and
  # results (in chunks of 2 + 1 rounds, as between two evaluations).
  ex = EXECUTIONS["vmap-scan"]
  cfg = lambda q: FedOBPConfig(quantile=q) if q is not None else None
  refs = []
  for seed, lr, q in runs:
    sim, p0 = make_sim(name, cfg(q), execution=ex, seed=seed, lr=lr)
    state, chunk = sim.run_rounds(sim.init(p0), 3)
    refs.append((p0, state, chunk, sim.evaluate(state)))
  sim, _ = make_sim(name, cfg(runs[0][2]), execution=ex, seed=0, lr=runs[0][1])
  hparams = {"train.lr": [r[1] for r in runs]}
  if name == "fedobp":
    hparams["algo.quantile"] = [r[2] for r in runs]
  seeds = [r[0] for r in runs]
  batch = sim.init_batch([r[0] for r in refs], hparams, seeds=seeds)
  batch, chunks = sim.run_rounds_batch(batch, seeds, 2, hparams)
  batch, more = sim.run_rounds_batch(batch, seeds, 1, hparams)
  chunks = [a + b for a, b in zip(chunks, more)]
  evals = sim.evaluate_batch(batch, hparams)
  assert batch.round == 3
  for i, (_, ref, ref_chunk, ref_eval) in enumerate(refs):
    one = sim.unstack_run(batch, i)
    chex.assert_trees_all_close(ref.server, one.server, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(ref.clients, one.clients, rtol=1e-5, atol=1e-6)
    for want, got in zip(ref_chunk, chunks[i]):
      for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert evals[i]["client_accuracy"] == ref_eval["client_accuracy"]
  assert refs[0][2][-1]["train_loss"] != refs[1][2][-1]["train_loss"]  # the runs differ
  assert sim.backend.cache_sizes()["_rounds_batch"] == 2  # one program per chunk length
  if name == "fedobp":  # different quantiles personalize different fractions
    assert chunks[1][-1]["personalized_fraction"] > chunks[0][-1]["personalized_fraction"]
  with pytest.raises(ValueError, match=f"values for {len(runs)} runs"):
    sim.run_rounds_batch(batch, seeds, 1, {"train.lr": [0.1]})
  plain, p0 = make_sim(name, execution=ex)
  plain.rebuild = None
  with pytest.raises(ValueError, match="rebuild"):
    plain.init_batch([p0, p0], {"train.lr": [0.1, 0.2]})
  seq, p0 = make_sim(name)
  with pytest.raises(ValueError, match="batching runs"):
    seq.init_batch([p0])


def test_donation_consumes_the_input_client_state():
  sim, p0 = make_sim("local", execution=EXECUTIONS["vmap-scan"])
  state = sim.init(p0)
  old = state.clients
  sim.run_round(state)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old))
  sim_keep, _ = make_sim("local", execution=EXECUTIONS["vmap-scan"], donate=False)
  state = sim_keep.init(p0)
  sim_keep.run_round(state)
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state.clients))


@pytest.mark.parametrize("name", ["sequential-python", "vmap-python-chunk3", "vmap-scan-4dev"])
def test_client_major_data_placement_equals_pooled(name):
  # system.data_placement="by_client": each device holds its own clients'
  # examples; training and evaluation are unchanged.
  ex = SEQ_PY if name == "sequential-python" else EXECUTIONS[name]
  sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=ex)
  ref, _ = run_rounds(sim, p0, 2)
  sim2, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=ex,
                     data_placement="by_client")
  assert isinstance(sim2.data, cohort.ClientMajorData)
  got, _ = run_rounds(sim2, p0, 2)
  chex.assert_trees_all_close(ref.server, got.server, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ref.clients, got.clients, rtol=1e-5, atol=1e-6)
  e_ref, e_got = sim.evaluate(ref), sim2.evaluate(got)
  assert e_ref["client_accuracy"] == e_got["client_accuracy"]
  assert e_ref["loss"] == pytest.approx(e_got["loss"], rel=1e-5)
  if name.endswith("4dev"):  # 8 clients over 4 devices: 2 clients' rows per device
    data = tiny_data()
    for shard in sim2.data.x.addressable_shards:
      rows = shard.index[0]
      assert shard.data.shape[0] == 2
      want, _ = cohort.client_major_rows(data.x, data.y, data.train_idx, data.test_idx, rows)
      np.testing.assert_array_equal(np.asarray(shard.data), want)
  with pytest.raises(ValueError, match="data_placement"):
    make_sim("fedavg", data_placement="sharded")


def test_evaluate_matches_numpy_reference():
  sim, p0 = make_sim("fedavg")
  state = sim.init(p0)
  ev = sim.evaluate(state)
  data = tiny_data()
  logits = np.asarray(sim.apply_fn(p0, data.x))
  correct = np.zeros(sim.num_clients)
  for i in range(sim.num_clients):
    idx = data.test_idx[i, :data.test_counts[i]]
    correct[i] = np.sum(logits[idx].argmax(-1) == data.y[idx])
  assert ev["accuracy"] == pytest.approx(correct.sum() / data.test_counts.sum())
  assert ev["client_mean_accuracy"] == pytest.approx(np.mean(correct / data.test_counts))


@pytest.mark.parametrize("name", ["sequential-python", "vmap-scan"])
def test_evaluate_traces_once_and_clamps_the_batch(name):
  execution = SEQ_PY if name == "sequential-python" else EXECUTIONS[name]
  sim, p0 = make_sim("fedavg", execution=execution, eval_batch_size=1000)
  assert sim.eval_batch_size == tiny_data().test_idx.shape[1]   # widest test set
  traces = []
  personalize = sim.algorithm.personalize

  def counting(server, client):
    traces.append(1)
    return personalize(server, client)
  sim.algorithm = sim.algorithm._replace(personalize=counting)
  state = sim.init(p0)
  first = sim.evaluate(state)
  traced = len(traces)
  assert traced >= 1
  assert sim.evaluate(state) == first
  assert len(traces) == traced        # the second evaluation reuses the programs
  small, _ = make_sim("fedavg", execution=execution, eval_batch_size=2)
  ref = small.evaluate(small.init(p0))
  assert first["accuracy"] == pytest.approx(ref["accuracy"])
  assert first["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_eval_batch_size_auto_is_the_backends_measured_default():
  from fedjax_pfl.core import execution as execution_lib
  assert execution_lib.default_eval_batch_size("cpu") == 32
  assert execution_lib.default_eval_batch_size("gpu") == 256
  widest = tiny_data().test_idx.shape[1]
  auto, p0 = make_sim("fedavg", execution=SEQ_PY, eval_batch_size=None)
  assert auto.eval_batch_size == min(execution_lib.default_eval_batch_size(), widest)
  one, _ = make_sim("fedavg", execution=SEQ_PY, eval_batch_size=1)
  got, ref = auto.evaluate(auto.init(p0)), one.evaluate(one.init(p0))
  assert got["accuracy"] == ref["accuracy"]          # correct counts are exact
  assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_eval_chunk_is_the_backends_measured_default():
  ex = backend.Execution(parallelism="vmap", step_loop="scan")
  assert ex.eval_chunk(10, "cpu") == 1
  assert ex.eval_chunk(10, "gpu") == 10
  assert backend.Execution(chunk_size=4).eval_chunk(10, "gpu") == 4
  assert backend.Execution(eval_chunk_size=3).eval_chunk(10, "cpu") == 3
  assert backend.Execution(eval_chunk_size=30).eval_chunk(10, "tpu") == 10
  with pytest.raises(ValueError, match="system.eval_chunk_size=0; allowed: >= 1 or None"):
    backend.Execution(eval_chunk_size=0).validate()


@pytest.mark.parametrize("algorithm", ["fedavg", "pfedfda"])
def test_evaluation_does_not_depend_on_the_eval_chunk(algorithm):
  """Clients evaluated one at a time, vmapped in chunks of 2 or 3 (clients of
  different test counts in one chunk) or all at once: the same results, also
  for pFedFDA's models built from each client's train data."""
  results = []
  for chunk in (1, 2, 3, 1000):
    ex = backend.Execution(parallelism="vmap", step_loop="scan", eval_chunk_size=chunk)
    sim, p0 = make_sim(algorithm, execution=ex, eval_batch_size=2)
    state = sim.init(p0)
    state, _ = sim.run_round(state)
    results.append(sim.evaluate(state))
  seq, p0 = make_sim(algorithm, execution=SEQ_PY, eval_batch_size=2)
  state, _ = seq.run_round(seq.init(p0))
  results.append(seq.evaluate(state))
  for got in results[1:]:
    assert got["client_accuracy"] == pytest.approx(results[0]["client_accuracy"], abs=1e-9)
    assert got["loss"] == pytest.approx(results[0]["loss"], rel=1e-5)


def test_summarize_eval_handles_empty_clients():
  m = summarize_eval(np.array([3.0, 0.0, 1.0]), np.array([1.0, 0.0, 2.0]), np.array([4, 0, 2]))
  assert m["accuracy"] == pytest.approx(4 / 6)
  assert m["client_mean_accuracy"] == pytest.approx((0.75 + 0.5) / 2)
  assert m["client_accuracy"][1] is None
  assert m["client_mean_loss"] == pytest.approx((1.0 / 4 + 2.0 / 2) / 2)


def test_communication_accounting_by_hand():
  sim, p0 = make_sim("fedavg", participation=0.5)
  num = sum(a.size for a in jax.tree.leaves(p0))                 # 163 values
  _, history = run_rounds(sim, p0, 1)
  m = history[0][1]
  assert m["uplink_values"] == m["downlink_values"] == num
  assert m["uplink_bytes"] == m["downlink_bytes"] == 4 * num
  assert m["round_uplink_bytes"] == 4 * num * sim.cohort_size     # 4 clients
  sim, _ = make_sim("fedobp", FedOBPConfig(quantile=0.9, norm="none"), participation=0.5)
  _, history = run_rounds(sim, p0, 2)
  m = history[-1][1]
  personal = m["personalized_fraction"] * num
  assert m["uplink_bytes"] == 4 * num                              # full model up
  assert m["downlink_values"] == pytest.approx(num - personal, abs=1e-3)
  assert m["downlink_bytes"] == pytest.approx(4 * (num - personal) + num / 8, abs=1e-2)
  assert m["downlink_ratio"] == pytest.approx((num - personal) / num, abs=1e-6)


def test_finetuned_evaluation_matches_a_hand_run_and_leaves_state_alone():
  sim, p0 = make_sim("fedavg", finetune_epochs=1)
  state, _ = run_rounds(sim, p0, 1)
  before = jax.tree.map(np.asarray, state.server)
  tuned = sim.evaluate_finetuned(state)
  chex.assert_trees_all_equal(before, state.server)
  # Client 0 by hand: one epoch from the global model with its (seed, round, id) key.
  data = tiny_data()
  cdata = cohort.client_data(sim.data, 0)
  key = jax.random.fold_in(jax.random.fold_in(sim.eval_key, state.round), 0)
  carry = sim.finetune.init(state.server, cdata, key)
  for t in range(sim.finetune.num_steps):
    carry = sim.finetune.step(carry, jnp.int32(t), cdata)
  params = sim.finetune.finish(carry)[0]
  idx = data.test_idx[0, :data.test_counts[0]]
  pred = np.asarray(sim.apply_fn(params, data.x[idx])).argmax(-1)
  assert tuned["client_accuracy"][0] == pytest.approx(np.mean(pred == data.y[idx]))
  assert tuned["accuracy"] != sim.evaluate(state)["accuracy"]


def test_finetuned_evaluation_is_strategy_invariant():
  ref_sim, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), finetune_epochs=1)
  sim, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), finetune_epochs=1,
                    execution=EXECUTIONS["vmap-scan-4dev"])
  ref, _ = run_rounds(ref_sim, p0, 1)
  got, _ = run_rounds(sim, p0, 1)
  a, b = ref_sim.evaluate_finetuned(ref), sim.evaluate_finetuned(got)
  assert a["accuracy"] == pytest.approx(b["accuracy"])
  assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_cohort_table_drives_cohorts_on_every_backend():
  """A fixed [R, C] client stream (e.g. FL-bench's) gives the same cohorts and
  results on the host loop and the compiled multi-round loop; its row order
  does not matter; running past its last row is refused."""
  table = np.array([[5, 1, 3], [0, 7, 2], [5, 4, 1]])
  seq, p0 = make_sim("fedobp", FedOBPConfig(quantile=0.8), cohort_table=table)
  assert [seq.cohort(t).tolist() for t in range(3)] == [[1, 3, 5], [0, 2, 7], [1, 4, 5]]
  ref, history = run_rounds(seq, p0, 3)
  assert all(m["round_clients"] == 3.0 for _, m in history)
  fused, _ = make_sim("fedobp", FedOBPConfig(quantile=0.8), execution=EXECUTIONS["vmap-scan"],
                      cohort_table=table[:, ::-1].copy())
  state, chunk = fused.run_rounds(fused.init(p0), 3)
  chex.assert_trees_all_close(ref.server, state.server, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ref.clients, state.clients, rtol=1e-5, atol=1e-6)
  # Client 6 is in no cohort: it keeps its initial state.
  untouched = sorted(set(range(8)) - set(table.ravel().tolist()))
  assert untouched == [6]
  init = seq.init(p0)
  for i in untouched:
    chex.assert_trees_all_equal(jax.tree.map(lambda a, i=i: a[i], state.clients),
                                jax.tree.map(lambda a, i=i: a[i], init.clients))
  with pytest.raises(ValueError, match="cohort table"):
    fused.run_rounds(state, 1)
  with pytest.raises(ValueError, match="cohort table"):
    seq.run_round(ref)
