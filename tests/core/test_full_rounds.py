"""Full-participation rounds (``Algorithm.full_rounds``): the cohort is every
client, ``aggregate`` sees the normally sampled cohort as ``ctx.sampled``, on
the host and compiled backends, split scans and batched runs alike."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.core import backend, rounds
from fedjax_pfl.core.simulation import Simulation
from fedjax_pfl.ops.aggregation import weighted_mean
from tests.helpers import make_sim, tiny_data, tiny_model

SEQ_PY = backend.Execution(parallelism="sequential", step_loop="python")
VMAP = backend.Execution(parallelism="vmap", step_loop="scan", num_devices=1)
VMAP_4DEV = backend.Execution(parallelism="vmap", step_loop="scan", num_devices=4)
FULL = 1  # round index of the full round


def _recording_sim(execution, seed=0):
  """FedAvg whose server also records, per client, whether it trained in the
  last round (``trained [N]``) and whether it was in the sampled cohort
  (``sampled [N]``); only sampled clients are averaged."""
  sim, p0 = make_sim("fedavg", execution=execution, seed=seed)
  base = sim.algorithm
  n = sim.num_clients

  def init(params, num_clients, *, key=None):
    return (params, jnp.zeros(n, bool), jnp.zeros(n, bool)), ()

  def broadcast(server, client, *, ctx=None):
    return server[0], ()

  def aggregate(server, uploads, weights, *, ctx):
    rows = jnp.minimum(ctx.client_ids, n - 1)
    trained = jnp.zeros(n, bool).at[rows].max(ctx.valid)
    sampled = jnp.zeros(n, bool).at[rows].max(ctx.in_sample())
    return (weighted_mean(uploads, weights * ctx.in_sample()), trained, sampled), {}

  alg = base._replace(init=init, broadcast=broadcast, aggregate=aggregate,
                      personalize=lambda s, c: s[0], full_rounds=(FULL,))
  data = tiny_data()
  return Simulation(alg, tiny_model(data.num_classes).apply, data, seed=seed, participation=0.5,
                    execution=execution, eval_batch_size=2), p0


def test_segments_split_at_full_rounds():
  assert rounds.segments(0, 5, (1, 3)) == [(0, 1, False), (1, 1, True), (2, 1, False),
                                            (3, 1, True), (4, 1, False)]
  assert rounds.segments(2, 3, (1, 9)) == [(2, 3, False)]
  assert rounds.segments(0, 2, (0,)) == [(0, 1, True), (1, 1, False)]


@pytest.mark.parametrize("execution", [SEQ_PY, VMAP, VMAP_4DEV], ids=["host", "vmap", "4dev"])
def test_full_round_trains_every_client_and_marks_the_sampled_ones(execution):
  sim, p0 = _recording_sim(execution)
  state = sim.init(p0)
  history = []
  for r in range(3):
    state, metrics = sim.run_round(state)
    _, trained, sampled = state.server
    history.append(metrics)
    picked = np.isin(np.arange(sim.num_clients), sim.cohort(r))
    np.testing.assert_array_equal(sampled, picked)
    np.testing.assert_array_equal(trained, np.ones(8, bool) if r == FULL else picked)
    assert metrics["round_clients"] == (8 if r == FULL else 4)


def test_backends_and_split_scan_agree():
  host, p0 = _recording_sim(SEQ_PY)
  s_host = host.init(p0)
  recs_host = []
  for _ in range(3):
    s_host, m = host.run_round(s_host)
    recs_host.append(m)
  fused, _ = _recording_sim(VMAP)
  s_fused, recs_fused = fused.run_rounds(fused.init(p0), 3)  # scan | full round | scan
  chex.assert_trees_all_close(s_host.server, s_fused.server, rtol=1e-5, atol=1e-6)
  assert [m["round_clients"] for m in recs_fused] == [4, 8, 4]
  for a, b in zip(recs_host, recs_fused):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_batched_runs_take_their_own_sampled_cohort_in_a_full_round():
  sim, p0 = _recording_sim(VMAP)
  seeds = [0, 3]
  state, records = sim.run_rounds_batch(sim.init_batch([p0, p0], seeds=seeds), seeds, 3)
  for i, seed in enumerate(seeds):
    single, _ = _recording_sim(VMAP, seed=seed)
    one, recs = single.run_rounds(single.init(p0), 3)
    chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], state.server), one.server,
                                rtol=1e-5, atol=1e-6)
    assert [m["round_clients"] for m in records[i]] == [4, 8, 4]
    np.testing.assert_array_equal(state.server[2][i],
                                  np.isin(np.arange(8), single.cohort(2)))
