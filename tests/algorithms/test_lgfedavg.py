"""LG-FedAvg: layer order, both splits, all-global equals FedAvg."""

import chex
import jax
import pytest

from fedjax_pfl.algorithms import _compose
from fedjax_pfl.algorithms.lgfedavg import LGFedAvgConfig, personal_layers
from fedjax_pfl.models import get_model
from tests.helpers import make_sim, run_rounds

CNN_LAYERS = ["conv1", "conv2", "fc1", "classifier"]


def _init_skeleton(name, shape):
  """The params dict of ``model.init`` (keys in creation order, leaves 0),
  captured while tracing under ``jax.eval_shape`` (no compilation)."""
  captured = []

  def init(key):
    params = get_model(name, shape, 3).init(key)
    captured.append({k: {kk: 0 for kk in v} for k, v in params.items()})
    return params
  jax.eval_shape(init, jax.random.key(0))
  return captured[0]


def test_layer_order_is_flax_definition_order():
  params = _init_skeleton("cnn", (16, 16, 1))
  assert _compose.layer_names(params) == CNN_LAYERS
  assert list(params["conv1"]) == ["kernel", "bias"]
  # jax.tree maps rebuild dicts with sorted keys: detected, not silently used.
  with pytest.raises(ValueError, match="definition order"):
    _compose.layer_names(jax.tree.map(lambda x: x, params))
  rules = _compose.last_leaves_rules(params, 3, "top")
  assert sorted(rules) == ["^classifier/bias$", "^classifier/kernel$", "^fc1/bias$"]
  assert _compose.layer_names(_init_skeleton("mlp", (8, 8, 1))) == ["fc1", "fc2", "classifier"]


@pytest.mark.parametrize("split, g, expected", [
    ("flbench", 1, ["conv2", "fc1", "classifier"]),
    ("flbench", 3, ["classifier"]),
    ("original", 1, ["conv1", "conv2", "fc1"]),
    ("original", 2, ["conv1", "conv2"]),
    ("flbench", 4, []),
    ("original", 4, []),
    ("original", 0, CNN_LAYERS),
])
def test_personal_layers(split, g, expected):
  assert personal_layers(CNN_LAYERS, g, split) == expected


def test_too_many_global_layers_rejected():
  with pytest.raises(ValueError, match="lgfedavg.num_global_layers=5"):
    personal_layers(CNN_LAYERS, 5, "flbench")
  with pytest.raises(ValueError, match="lgfedavg.split='x'"):
    LGFedAvgConfig(split="x").validate()


def test_default_split_keeps_first_layer_global():
  sim, p0 = make_sim("lgfedavg")
  state = sim.init(p0)
  # Tiny MLP = (fc1, classifier): fc1 global, classifier personal (2 leaves).
  assert len(state.clients) == 2
  assert state.clients[1].shape == (sim.num_clients,) + p0["classifier"]["kernel"].shape
  server = jax.tree.map(lambda a: a + 1.0, p0)
  client = jax.tree.map(lambda a: a[0], state.clients)
  model = sim.algorithm.personalize(server, client)
  chex.assert_trees_all_equal(model["fc1"], server["fc1"])
  chex.assert_trees_all_equal(model["classifier"], p0["classifier"])


def test_all_layers_global_equals_fedavg():  # tiny MLP: 2 layers
  sim_avg, p0 = make_sim("fedavg")
  sim_lg, _ = make_sim("lgfedavg", LGFedAvgConfig(num_global_layers=2, split="original"))
  _, h_avg = run_rounds(sim_avg, p0, 2)
  _, h_lg = run_rounds(sim_lg, p0, 2)
  for (s_avg, _), (s_lg, _) in zip(h_avg, h_lg):
    chex.assert_trees_all_close(s_avg.server, s_lg.server, rtol=1e-6, atol=1e-7)
  assert h_lg[-1][0].clients == ()
  assert sim_lg.evaluate(h_lg[-1][0])["accuracy"] == sim_avg.evaluate(h_avg[-1][0])["accuracy"]
