"""Registry-wide contract: every algorithm is finite, structure-preserving,
deterministic, and independent of the execution strategy (sequential Python
stepping on one device vs one vmapped, scanned program on 4 devices)."""

import functools

import chex
import jax
import numpy as np
import pytest

from fedjax_pfl import algorithms
from fedjax_pfl.algorithms.fedobp import FedOBPConfig
from fedjax_pfl.algorithms.fedselect import FedSelectConfig
from fedjax_pfl.algorithms.floco import FlocoConfig
from fedjax_pfl.algorithms.pfedfda import PFedFDAConfig
from fedjax_pfl.core import backend
from tests.helpers import make_sim, run_rounds

# Configs that reach each method's special paths within 2 rounds (default: None).
CONFIGS = {
    "fedobp": FedOBPConfig(quantile=0.8),
    "fedobp-fisher": FedOBPConfig(quantile=0.8, score="fisher"),
    "fedselect": FedSelectConfig(lth_epoch_iters=1),      # masks grow after round 1
    "floco": FlocoConfig(tau=1, endpoints=3),             # projection, then ball sampling
    "floco-flbench": FlocoConfig(tau=2, endpoints=3, mode="flbench"),  # all-client round 1
    "pfedfda-flbench": PFedFDAConfig(mode="flbench"),     # FedAvg + LDA heads at evaluation
}
CASES = sorted(set(algorithms.REGISTRY) | set(CONFIGS))
SEQ_PY = backend.Execution(parallelism="sequential", step_loop="python")
VMAP_4DEV = backend.Execution(parallelism="vmap", step_loop="scan", num_devices=4)


def _sim(case, execution):
  return make_sim(case.split("-")[0], CONFIGS.get(case), execution=execution, participation=0.5)


@functools.cache
def _reference(case):
  sim, p0 = _sim(case, SEQ_PY)
  state, history = run_rounds(sim, p0, 2)
  return sim, p0, state, history, sim.evaluate(state)


def _finite(tree) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


@pytest.mark.parametrize("case", CASES)
def test_finite_and_structure_preserved(case):
  sim, p0, state, history, ev = _reference(case)
  init = sim.init(p0)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.server, state.server)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.clients, state.clients)
  assert all(x.shape[0] == sim.num_clients for x in jax.tree.leaves(state.clients))
  assert _finite(state.server) and _finite(state.clients)
  assert all(np.isfinite(v) for _, m in history for v in m.values())
  assert np.isfinite(ev["accuracy"]) and np.isfinite(ev["loss"])
  assert 0.0 <= ev["accuracy"] <= 1.0


@pytest.mark.parametrize("case", CASES)
def test_deterministic(case):
  sim, p0, state, history, ev = _reference(case)
  again, hist2 = run_rounds(sim, p0, 2)
  chex.assert_trees_all_equal(state.server, again.server)
  chex.assert_trees_all_equal(state.clients, again.clients)
  assert history[-1][1] == hist2[-1][1]
  assert sim.evaluate(again) == ev


@pytest.mark.parametrize("case", CASES)
def test_execution_strategy_invariance(case):
  _, p0, ref, ref_hist, e_ref = _reference(case)
  sim, _ = _sim(case, VMAP_4DEV)
  got, got_hist = run_rounds(sim, p0, 2)
  chex.assert_trees_all_close(ref.server, got.server, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(ref.clients, got.clients, rtol=1e-4, atol=1e-5)
  for key, value in ref_hist[-1][1].items():
    assert got_hist[-1][1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
  e_got = sim.evaluate(got)
  assert e_ref["accuracy"] == pytest.approx(e_got["accuracy"])
  assert e_ref["loss"] == pytest.approx(e_got["loss"], rel=1e-4)


VMAP_1DEV = backend.Execution(parallelism="vmap", step_loop="scan", num_devices=1)


@pytest.mark.parametrize("case", CASES)
def test_learning_rate_and_batchable_fields_may_be_traced(case):
  # Every algorithm builds and traces with the client learning rate (and its
  # declared batchable fields) as traced per-run values: what lets a sweep
  # over learning rates or quantiles run as one program. Traced only
  # (jax.eval_shape), values are checked in tests/core/test_rounds.py.
  sim, p0 = _sim(case, VMAP_1DEV)
  name = case.split("-")[0]
  base = CONFIGS.get(case) or algorithms.REGISTRY[name].config_cls()
  hparams = {"train.lr": [0.1, 0.05]}
  for field in algorithms.REGISTRY[name].batchable:
    hparams[f"algo.{field}"] = [getattr(base, field)] * 2
  state = sim.init_batch([p0, p0], hparams)
  stacked = {k: jax.numpy.asarray(v, jax.numpy.float32) for k, v in hparams.items()}
  keys = jax.tree.map(lambda k: jax.numpy.stack([k] * 2), sim.keys)
  one_round = lambda *args: sim._rounds_batch(*args[:5], 1, args[5])
  out = jax.eval_shape(one_round, state.server, state.clients, sim.data, jax.numpy.int32(0),
                       keys, stacked)
  chex.assert_trees_all_equal_shapes_and_dtypes(out[:2], (state.server, state.clients))
  jax.eval_shape(sim._eval_batch, state.server, state.clients, sim.data, jax.numpy.int32(0),
                 stacked)
