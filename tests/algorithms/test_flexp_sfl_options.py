"""FlexP-SFL's switchable v2 choices: no client-side aggregation, per-client
server sides, the U-shaped split and its accounting, feature alignment."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms._flexp_options import client_block, feature_alignment_loss, u_cut
from fedjax_pfl.algorithms.fedper import FedPerConfig
from fedjax_pfl.algorithms.flexp_sfl import FlexPSFLConfig, accounting
from fedjax_pfl.core import backend
from fedjax_pfl.core.local import Batch, LocalSpec, make_optimizer, softmax_cross_entropy
from fedjax_pfl.models import flops
from fedjax_pfl.models.base import from_flax
from fedjax_pfl.models.mlp import MLP
from tests.helpers import make_sim, run_rounds, tiny_model

SEQ = backend.Execution(parallelism="sequential", step_loop="scan")
V2 = dict(aggregate_client_side=False, alignment="none")


def _mlp3():
  """16 -> 8 -> 8 -> 3 (blocks fc1, fc2, classifier; training FLOP prefix
  fractions 0.593, 0.889, 1)."""
  return from_flax("mlp", MLP(num_classes=3, hidden=(8, 8)), (4, 4, 1), 3)


@pytest.mark.parametrize("extra", [dict(alignment="none"),
                                   dict(alignment="feature", align_lambda=0.5),
                                   dict(alignment="none", server_side="per_client")])
def test_no_client_side_aggregation_with_every_cut_at_the_last_block_is_local_only(extra):
  cfg = FlexPSFLConfig(budgets=(1.0,), aggregate_client_side=False, **extra)
  sim, p0 = make_sim("flexp_sfl", cfg, execution=SEQ)
  ref, _ = make_sim("local", execution=SEQ)
  state, hist = run_rounds(sim, p0, 2)
  state_ref, _ = run_rounds(ref, p0, 2)
  chex.assert_trees_all_equal(state.clients.params, state_ref.clients)
  chex.assert_trees_all_equal(state.server, p0)  # nothing ever ran on the server
  assert hist[-1][1]["model_up_bytes"] == 0.0


def test_no_client_side_aggregation_with_one_cut_is_still_fedper():
  """Budget 0.5 -> cut 1 (fc1 personal): the classifier is FedAvg'd as before;
  the global fc1 is never averaged (stays at theta^0)."""
  cfg = FlexPSFLConfig(budgets="0.5", align_lambda=0.0, aggregate_client_side=False)
  sim, p0 = make_sim("flexp_sfl", cfg, execution=SEQ)
  ref, _ = make_sim("fedper", FedPerConfig(personal_layers=r"^fc1(/|$)"), execution=SEQ)
  state, hist = run_rounds(sim, p0, 2)
  state_ref, _ = run_rounds(ref, p0, 2)
  chex.assert_trees_all_close(state.server["classifier"], state_ref.server["classifier"],
                              rtol=1e-6, atol=1e-7)
  fc1 = state.clients.params["fc1"]
  chex.assert_trees_all_close((fc1["bias"], fc1["kernel"]), state_ref.clients,
                              rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_equal(state.server["fc1"], p0["fc1"])
  assert hist[-1][1]["model_up_bytes"] == 0.0 and hist[-1][1]["model_down_bytes"] == 0.0


def test_per_client_server_sides_without_any_aggregation_are_local_only():
  """Each client's server-side copy persists and starts from itself: with no
  client-side averaging and no alignment, no client sees another's weights."""
  cfg = FlexPSFLConfig(budgets="0.5", server_side="per_client", **V2)
  sim, p0 = make_sim("flexp_sfl", cfg, execution=SEQ)
  ref, _ = make_sim("local", execution=SEQ)
  state, _ = run_rounds(sim, p0, 2)
  state_ref, _ = run_rounds(ref, p0, 2)
  chex.assert_trees_all_close(state.clients.params, state_ref.clients, rtol=1e-6, atol=1e-7)
  # The shared server side of the same run is not Local-Only.
  shared, _ = run_rounds(make_sim("flexp_sfl", FlexPSFLConfig(budgets="0.5", **V2),
                                  execution=SEQ)[0], p0, 2)
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                      shared.clients.params["classifier"], state_ref.clients["classifier"])
  assert max(jax.tree.leaves(diff)) > 1e-4


def test_u_shaped_cut_mask_and_accounting_by_hand():
  assert [int(u_cut(k, 3)) for k in (1, 2, 3)] == [1, 3, 3]
  assert [bool(client_block(1, j, 2, True)) for j in range(3)] == [True, False, True]
  assert [bool(client_block(1, j, 2, False)) for j in range(3)] == [True, False, False]
  assert [bool(client_block(3, j, 2, True)) for j in range(3)] == [True, True, True]
  model = _mlp3()
  costs = flops.block_costs(model.apply, model.init(jax.random.key(0)), (4, 4, 1))
  u = accounting(costs, jnp.int32(1), 10.0, teacher=False, refresh_client_side=False,
                 u_shaped=True)
  assert float(u["client_flops"]) == 10 * 3 * (256 + 48)     # fc1 + head
  assert float(u["server_flops"]) == 10 * 3 * 128            # fc2
  assert float(u["act_uplink_bytes"]) == 4 * 10 * (8 + 8)    # cut activations + head-input grads
  assert float(u["act_downlink_bytes"]) == 4 * 10 * (8 + 8)  # cut grads + head inputs
  assert float(u["model_up_bytes"]) == 4 * (136 + 27) and float(u["model_down_bytes"]) == 0
  t = accounting(costs, jnp.int32(1), 10.0, teacher=True, refresh_client_side=False,
                 u_shaped=True, client_side_upload=False)
  assert float(t["client_flops"]) == 10 * 4 * (256 + 48)
  assert float(t["act_uplink_bytes"]) == 4 * 10 * (16 + 8)
  assert float(t["act_downlink_bytes"]) == 4 * 10 * (8 + 16)
  assert float(t["model_up_bytes"]) == 0 and float(t["model_down_bytes"]) == 4 * 163
  whole = accounting(costs, jnp.int32(3), 10.0, teacher=False, refresh_client_side=False,
                     u_shaped=True)
  plain = accounting(costs, jnp.int32(3), 10.0, teacher=False, refresh_client_side=False)
  assert {k: float(v) for k, v in whole.items()} == {k: float(v) for k, v in plain.items()}
  f = accounting(costs, jnp.int32(2), 10.0, teacher=False, refresh_client_side=False,
                 feature_teacher=True)
  assert float(f["client_flops"]) == 10 * (3 * 384 + 384)  # + the start model's forward


def test_u_shaped_with_one_cut_is_fedper_with_personal_first_block_and_head():
  model = _mlp3()
  cfg = FlexPSFLConfig(budgets="0.6", u_shaped=True, align_lambda=0.0)  # cut 1
  sim, p0 = make_sim("flexp_sfl", cfg, execution=SEQ, model=model)
  ref, _ = make_sim("fedper", FedPerConfig(personal_layers=r"^(fc1|classifier)(/|$)"),
                    execution=SEQ, model=model)
  state, hist = run_rounds(sim, p0, 2)
  state_ref, _ = run_rounds(ref, p0, 2)
  chex.assert_trees_all_close(state.server["fc2"], state_ref.server["fc2"], rtol=1e-6, atol=1e-7)
  mine = state.clients.params
  chex.assert_trees_all_close((mine["classifier"]["bias"], mine["classifier"]["kernel"],
                               mine["fc1"]["bias"], mine["fc1"]["kernel"]), state_ref.clients,
                              rtol=1e-6, atol=1e-7)
  m = hist[-1][1]
  assert m["cut"] == 1.0 and m["server_flops"] == pytest.approx(3 * 128 * m["train_examples"])


def test_feature_alignment_loss_by_hand():
  model = tiny_model()  # fc1 (16 -> 8, ReLU), classifier
  spec = LocalSpec(model.apply, make_optimizer(0.1), 1, 4, 8)
  p, s = model.init(jax.random.key(0)), model.init(jax.random.key(1))
  x = jax.random.normal(jax.random.key(2), (4, 4, 4, 1))
  batch = Batch(x, jnp.asarray([0, 1, 2, 0]), jnp.asarray([True, True, True, False]))
  loss = feature_alignment_loss(spec, ("fc1", "classifier"), 0.5)

  @jax.jit
  def run(p, s):
    ce = softmax_cross_entropy(model.apply(p, x), batch.y, batch.mask)
    return ce, loss(p, batch, None, (p, 1)), loss(p, batch, None, (s, 1)), loss(
        p, batch, None, (s, 2))
  ce, same, got, at_end = (float(v) for v in run(p, s))
  hidden = lambda q: np.maximum(np.asarray(x).reshape(4, 16) @ np.asarray(q["fc1"]["kernel"])
                                + np.asarray(q["fc1"]["bias"]), 0.0)
  d = np.mean((hidden(p) - hidden(s))[:3] ** 2)  # the masked-out example does not count
  assert same == ce and at_end == ce  # own start model; cut at L: no smashed data
  assert d > 1e-4 and got == pytest.approx(ce + 0.5 * d, rel=1e-5)


def test_v2_design_contract_and_config():
  model = _mlp3()
  cfg = FlexPSFLConfig(budgets=(0.6, 1.0), aggregate_client_side=False, server_side="per_client",
                       u_shaped=True, alignment="feature", align_lambda=0.5)
  sim, p0 = make_sim("flexp_sfl", cfg, execution=SEQ, model=model)
  state, hist = run_rounds(sim, p0, 2)
  init = sim.init(p0)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.server, state.server)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.clients, state.clients)
  assert all(np.isfinite(v) for _, m in hist for v in m.values())
  again, _ = run_rounds(sim, p0, 2)
  chex.assert_trees_all_equal(state.clients, again.clients)
  for bad in (FlexPSFLConfig(server_side="both"), FlexPSFLConfig(alignment="cka")):
    with pytest.raises(ValueError, match="flexp_sfl."):
      bad.validate()
