"""FlexP-SFL (working definition) and the SplitFed baselines: FLOPs table and
cuts, equivalences (Local-Only, FedPer, FedAvg), accounting by hand, contract."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.fedper import FedPerConfig
from fedjax_pfl.algorithms.flexp_sfl import FlexPSFLConfig, accounting, alignment_loss, with_totals
from fedjax_pfl.algorithms.splitfed import SplitFedConfig
from fedjax_pfl.core import backend
from fedjax_pfl.core.local import Batch, LocalSpec, make_optimizer, softmax_cross_entropy
from fedjax_pfl.models import flops, get_model
from fedjax_pfl.models.base import from_flax
from fedjax_pfl.models.mlp import MLP
from tests.helpers import make_sim, run_rounds, tiny_model

SEQ = backend.Execution(parallelism="sequential", step_loop="scan")


def _mlp3():
  """16 -> 8 -> 8 -> 3: forward FLOPs 2*16*8, 2*8*8, 2*8*3 per sample."""
  model = from_flax("mlp", MLP(num_classes=3, hidden=(8, 8)), (4, 4, 1), 3)
  return model, model.init(jax.random.key(0))


def test_block_flops_and_cuts_by_hand():
  model, params = _mlp3()
  costs = flops.block_costs(model.apply, params, (4, 4, 1))
  assert costs.names == ("fc1", "fc2", "classifier")
  assert costs.forward == (256, 128, 48)
  assert costs.train == (2 * 16 * 8 * 3, 2 * 8 * 8 * 3, 2 * 8 * 3 * 3)  # 768, 384, 144
  assert costs.params == (136, 72, 27) and costs.inputs == (16, 8, 8) and costs.output == 3
  # XLA's all-in count adds biases (19) and ReLUs (16) to the 432 matmul FLOPs.
  xla = flops.xla_forward_flops(model.apply, params, (4, 4, 1))
  assert 432 <= xla <= 432 + 19 + 16 + 16
  # Prefix fractions: 768/1296 = 0.593, 1152/1296 = 0.889, 1.
  table = {0.05: 1, 0.25: 1, 0.59: 1, 0.6: 1, 0.88: 1, 0.89: 2, 0.999: 2, 1.0: 3}
  for budget, cut in table.items():
    assert flops.select_cut(costs, budget) == cut, budget
  traced = jax.jit(jax.vmap(lambda b: flops.cut_traced(costs, b)))(
      jnp.asarray(list(table), jnp.float32))
  assert np.asarray(traced).tolist() == list(table.values())


def test_cnn_flops_from_shapes_match_hand_counts():
  model = get_model("cnn", (28, 28, 1), 10)
  params = jax.eval_shape(model.init, jax.random.key(0))  # shapes only, no compute
  costs = flops.block_costs(model.apply, params, (28, 28, 1), ("conv1", "conv2", "fc1",
                                                               "classifier"))
  # conv1: 5*5*1*32 weights at 24*24 positions; conv2: 5*5*32*64 at 8*8.
  assert costs.forward == (2 * 800 * 576, 2 * 51200 * 64, 2 * 1024 * 512, 2 * 512 * 10)
  assert costs.inputs == (784, 12 * 12 * 32, 1024, 512)
  assert sum(costs.params) == 582026
  # (XLA's cost_analysis of this forward: 8,597,002 FLOPs, 0.7% above the
  # 8,534,016 counted here: biases, ReLUs and pooling; not compiled here.)
  assert [flops.select_cut(costs, b) for b in (0.25, 0.5, 0.9, 1.0)] == [1, 1, 2, 4]


def test_alignment_loss_by_hand():
  model = tiny_model()
  spec = LocalSpec(model.apply, make_optimizer(0.1), 1, 4, 8)
  p, g = model.init(jax.random.key(0)), model.init(jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (4, 4, 4, 1))
  batch = Batch(x, jnp.asarray([0, 1, 2, 0]), jnp.asarray([True, True, True, False]))
  t = 2.0

  @jax.jit
  def run(p, g):
    ce = softmax_cross_entropy(model.apply(p, x), batch.y, batch.mask)
    return (ce, alignment_loss(spec, 0.0, 1.0)(p, batch, None, g),
            alignment_loss(spec, 0.5, t)(p, batch, None, p),
            alignment_loss(spec, 0.5, t)(p, batch, None, g),
            jax.nn.softmax(model.apply(g, x) / t), jax.nn.softmax(model.apply(p, x) / t))
  ce, off, self_teacher, got, pg, pi = (np.asarray(v) for v in run(p, g))
  assert off == ce and self_teacher == pytest.approx(float(ce), rel=1e-6)
  pg, pi = pg[:3], pi[:3]  # the masked-out example does not count
  kl = np.mean(np.sum(pg * (np.log(pg) - np.log(pi)), -1))
  assert kl > 1e-4 and float(got) == pytest.approx(float(ce) + 0.5 * t * t * kl, rel=1e-5)


def test_accounting_by_hand():
  model, params = _mlp3()
  costs = flops.block_costs(model.apply, params, (4, 4, 1))
  acct = with_totals(accounting(costs, jnp.int32(2), 10.0, teacher=True,
                                refresh_client_side=False))
  assert float(acct["client_flops"]) == 10 * 4 * (256 + 128)   # fwd+bwd + teacher fwd
  assert float(acct["server_flops"]) == 10 * 4 * 48
  assert float(acct["act_uplink_bytes"]) == 4 * 10 * 8 * 2     # student + teacher
  assert float(acct["act_downlink_bytes"]) == 4 * 10 * 8
  assert float(acct["model_up_bytes"]) == float(acct["model_down_bytes"]) == 4 * (136 + 72)
  assert float(acct["uplink_bytes"]) == 640 + 832 and float(acct["uplink_values"]) == 368
  last = accounting(costs, jnp.int32(3), 10.0, teacher=False, refresh_client_side=False)
  assert float(last["server_flops"]) == 0 and float(last["act_uplink_bytes"]) == 0
  assert float(last["model_down_bytes"]) == 0 and float(last["client_flops"]) == 10 * 3 * 432


def test_all_cuts_at_the_last_block_without_alignment_is_local_only():
  cfg = FlexPSFLConfig(budgets=(1.0,), align_lambda=0.0)
  sim, p0 = make_sim("flexp_sfl", cfg, execution=SEQ)
  ref, _ = make_sim("local", execution=SEQ)
  state, hist = run_rounds(sim, p0, 2)
  state_ref, _ = run_rounds(ref, p0, 2)
  chex.assert_trees_all_equal(state.clients.params, state_ref.clients)
  assert hist[-1][1]["cut"] == 2.0 and hist[-1][1]["server_flops"] == 0.0


def test_one_shared_cut_without_alignment_is_fedper_with_accounting():
  """Budget 0.5 -> cut 1 for everyone (fc1 personal): FedPer over the classifier."""
  sim, p0 = make_sim("flexp_sfl", FlexPSFLConfig(budgets="0.5", align_lambda=0.0),
                     execution=SEQ)
  ref, _ = make_sim("fedper", FedPerConfig(personal_layers=r"^fc1(/|$)"), execution=SEQ)
  state, hist = run_rounds(sim, p0, 2)
  state_ref, _ = run_rounds(ref, p0, 2)
  chex.assert_trees_all_close(state.server["classifier"], state_ref.server["classifier"],
                              rtol=1e-6, atol=1e-7)
  fc1 = state.clients.params["fc1"]
  chex.assert_trees_all_close((fc1["bias"], fc1["kernel"]), state_ref.clients,
                              rtol=1e-6, atol=1e-7)
  m = hist[-1][1]
  e = m["train_examples"]  # cohort mean of trained examples; every cut is 1
  assert m["cut"] == 1.0
  assert m["client_flops"] == pytest.approx(3 * 256 * e) and m["server_flops"] == pytest.approx(
      3 * 48 * e)
  assert m["act_uplink_bytes"] == pytest.approx(4 * 8 * e)
  assert m["model_up_bytes"] == 4 * 136 and m["model_down_bytes"] == 0
  assert m["uplink_bytes"] == pytest.approx(4 * 8 * e + 544)


def test_splitfed_equals_fedavg():
  sim, p0 = make_sim("splitfed", SplitFedConfig(budgets="0.25,1.0"), execution=SEQ)
  sim_ref, _ = make_sim("fedavg", execution=SEQ)
  state, hist = run_rounds(sim, p0, 1)
  state_ref, _ = run_rounds(sim_ref, p0, 1)
  chex.assert_trees_all_close(state.server, state_ref.server, rtol=1e-6, atol=1e-7)
  # The weakest budget's cut for everyone; the client side is refreshed.
  assert hist[0][1]["cut"] == 1.0 and hist[0][1]["model_down_bytes"] == 4 * 136


def test_splitfed_personal_heads_merge_like_fedper():
  """Slot level: the client keeps its own head (the last block) over the global
  body; without personal heads the client is evaluated with the global model."""
  sim, p0 = make_sim("splitfed_ph", SplitFedConfig())
  ref, _ = make_sim("fedper", FedPerConfig())
  plain, _ = make_sim("splitfed", SplitFedConfig())
  alg = sim.algorithm
  server, clients = alg.init(p0, 8)
  server = jax.tree.map(lambda a: a + 1.0, server)
  own = jax.tree.map(lambda a: a[3] - 1.0, clients.params)
  client = jax.tree.map(lambda a: a[3], clients)._replace(params=own, cut=jnp.int32(1))
  mine = alg.personalize(server, client)
  chex.assert_trees_all_equal(mine["classifier"], own["classifier"])
  chex.assert_trees_all_equal(mine["fc1"], server["fc1"])
  head = (own["classifier"]["bias"], own["classifier"]["kernel"])
  chex.assert_trees_all_equal(mine, ref.algorithm.personalize(server, head))
  _, p_clients = plain.algorithm.init(p0, 8)
  chex.assert_trees_all_equal(
      plain.algorithm.personalize(server, jax.tree.map(lambda a: a[3], p_clients)), server)
  upload, new, _ = alg.finalize(server, client, (own, jnp.int32(1), {}), ())
  chex.assert_trees_all_equal(upload, own)
  chex.assert_trees_all_equal(new.params, own)


def test_budget_assignment_and_config():
  sim, p0 = make_sim("flexp_sfl", FlexPSFLConfig(budgets="0.25, 0.5,1"))
  assert np.asarray(sim.init(p0).clients.budget).tolist() == [0.25, 0.5, 1.0] * 2 + [0.25, 0.5]
  rnd = FlexPSFLConfig(assignment="random")
  a, _ = make_sim("flexp_sfl", rnd)
  b1, b2 = (np.asarray(a.init(p0).clients.budget) for _ in range(2))
  assert set(b1.tolist()) <= {0.25, 0.5, 1.0} and np.array_equal(b1, b2)
  for bad in (FlexPSFLConfig(budgets="0.5,1.5"), FlexPSFLConfig(budgets="x"),
              FlexPSFLConfig(align_lambda=-1.0), FlexPSFLConfig(temperature=0.0),
              FlexPSFLConfig(assignment="greedy"), FlexPSFLConfig(eval_server_side="x")):
    with pytest.raises(ValueError, match="flexp_sfl."):
      bad.validate()
  with pytest.raises(ValueError, match="splitfed.budgets"):
    SplitFedConfig(budgets=()).validate()


def test_contract_finite_deterministic():
  cfg = FlexPSFLConfig(budgets=(0.5, 1.0), align_lambda=0.5, temperature=2.0)
  sim, p0 = make_sim("flexp_sfl", cfg, execution=SEQ)
  state, hist = run_rounds(sim, p0, 2)
  init = sim.init(p0)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.server, state.server)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.clients, state.clients)
  assert all(np.isfinite(v) for _, m in hist for v in m.values())
  assert 1.0 < hist[-1][1]["cut"] < 2.0  # a mix of cut 1 and cut 2 clients
  again, hist2 = run_rounds(sim, p0, 2)
  chex.assert_trees_all_equal(state.clients, again.clients)
  assert hist[-1][1] == hist2[-1][1]
  ev = sim.evaluate(state)
  assert 0.0 <= ev["accuracy"] <= 1.0 and np.isfinite(ev["loss"])
