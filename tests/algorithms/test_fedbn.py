"""FedBN, and BatchNorm handling of the whole Fling family: running statistics
stay per client for every member; communication counts on the tiny ResNet."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl import algorithms
from fedjax_pfl.algorithms.fedbn import FedBNConfig
from fedjax_pfl.core.local import LocalInput, LocalSpec, make_optimizer
from tests.algorithms.test_fedcac import slot_round
from tests.helpers import make_sim, run_rounds, tiny_data, tiny_resnet

FAMILY = ["fedavg_bn", "fedbn", "pfedsd", "separate", "fedcac", "fedpurin"]
OWN_BN_AFFINE = {"fedbn", "fedpurin", "separate"}   # BN scale/bias never aggregated
# A hand BN model with the ResNet's module names.
PARAMS = {"bn1": {"bias": (2,), "mean": (2,), "scale": (2,), "var": (2,)},
          "conv": {"kernel": (3, 2)},
          "layer2": {"downsample_bn": {"mean": (3,), "scale": (3,)}, "conv1": {"kernel": (4,)}}}
STATE = {"bn1": {"bias": False, "mean": True, "scale": False, "var": True},
         "conv": {"kernel": False},
         "layer2": {"downsample_bn": {"mean": True, "scale": False}, "conv1": {"kernel": False}}}
is_shape = lambda x: isinstance(x, tuple)


def _tree(rng):
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), PARAMS,
                      is_leaf=is_shape)


@pytest.mark.parametrize("name", FAMILY)
def test_bn_statistics_stay_per_client(name):
  spec = LocalSpec(lambda p, x: x, make_optimizer(0.1), 1, 2, 2, lambda p, x, m: (x, p), STATE,
                   0.1)
  rng = np.random.default_rng(0)
  p0 = _tree(rng)
  entry = algorithms.REGISTRY[name]
  alg = entry.build(entry.config_cls(), spec=spec, params=p0)
  trained = [_tree(rng) for _ in range(3)]
  outputs = [(t, _tree(rng)) for t in trained] if name == "fedpurin" else trained
  server, clients, _, _ = slot_round(alg, outputs, [1.0, 2.0, 3.0], params0=p0)
  starts = []
  for i in range(3):
    start, _ = alg.broadcast(server, jax.tree.map(lambda a: a[i], clients))
    starts.append(start.params if isinstance(start, LocalInput) else start)
  for i in range(3):
    for path in (("bn1", "mean"), ("bn1", "var"), ("layer2", "downsample_bn", "mean")):
      got, own = starts[i], trained[i]
      for k in path:
        got, own = got[k], own[k]
      np.testing.assert_array_equal(np.asarray(got), np.asarray(own), err_msg=f"{name} {path}")
    own_affine = np.array_equal(starts[i]["bn1"]["scale"], trained[i]["bn1"]["scale"])
    assert own_affine == (name in OWN_BN_AFFINE), name
  # A shared (non-BN) tensor is mixed across clients except in Separate.
  mixed = not np.array_equal(starts[0]["conv"]["kernel"], trained[0]["conv"]["kernel"])
  assert mixed == (name != "separate")


@functools.cache
def _resnet():
  """The tiny ResNet and zero params of its shapes (no flax init compile)."""
  model = tiny_resnet()
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  return model, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _resnet_alg(name):
  model, p0 = _resnet()
  spec = LocalSpec(model.apply, make_optimizer(0.1), 1, 4, 8, model.apply_train,
                   model.state_mask, 0.1)
  entry = algorithms.REGISTRY[name]
  return entry.build(entry.config_cls(), spec=spec, params=p0), p0


# Tiny ResNet (widths 4, 8; 16x16x1; 3 classes), counted by hand:
# pre_conv 7*7*1*4 = 196; layer1 conv1, conv2 3*3*4*4 = 144 each; layer2 conv1
# 3*3*4*8 = 288, conv2 3*3*8*8 = 576, downsample_conv 4*8 = 32; classifier
# 8*3 + 3 = 27 -> 1407 non-BN. BN scale + bias: 2*(4 + 4 + 4 + 8 + 8 + 8) = 72.
NON_BN, BN_AFFINE = 1407, 72


@pytest.mark.parametrize("name,values", [("fedavg_bn", NON_BN + BN_AFFINE), ("fedbn", NON_BN),
                                         ("pfedsd", NON_BN + BN_AFFINE), ("separate", 0)])
def test_communication_on_tiny_resnet(name, values):
  alg, p0 = _resnet_alg(name)
  server, clients = alg.init(p0, 2)
  client = jax.tree.map(lambda a: a[0], clients)
  _, _, m = alg.finalize(server, client, p0, ())
  for key in ("uplink", "downlink"):
    assert float(m[f"{key}_values"]) == values
    assert float(m[f"{key}_bytes"]) == 4 * values


def test_critical_methods_mask_the_right_tensors_on_tiny_resnet():
  cac, p0 = _resnet_alg("fedcac")
  purin, _ = _resnet_alg("fedpurin")
  _, clients = cac.init(p0, 2)
  assert float(clients.down_values[0]) == NON_BN + BN_AFFINE    # round 0: trainable theta^0
  assert float(clients.down_bytes[0]) == 4 * (NON_BN + BN_AFFINE)
  # FedCAC masks every trainable tensor, FedPURIN only the non-BN ones: the
  # mask sizes are the uplink's bit counts.
  from fedjax_pfl.algorithms import _critical
  state = _resnet()[0].state_mask
  cac_part = _critical.leaf_partition(p0, state, exclude_bn=False)
  purin_part = _critical.leaf_partition(p0, state, exclude_bn=True)
  assert _critical.num_entries(cac_part, p0) == NON_BN + BN_AFFINE
  assert _critical.num_entries(purin_part, p0) == NON_BN
  del purin


@functools.cache
def fedavg_bn_reference():
  """fedavg_bn on the tiny MLP, full participation, 2 rounds (shared by the
  pFedSD and FedCAC tests)."""
  sim, p0 = make_sim("fedavg_bn", data=tiny_data(num_clients=5), participation=1.0, epochs=1)
  return sim, p0, *run_rounds(sim, p0, 2)


def test_fedbn_without_bn_is_fedavg_bn():
  ref_sim, p0, ref, ref_hist = fedavg_bn_reference()
  sim, _ = make_sim("fedbn", data=tiny_data(num_clients=5), participation=1.0, epochs=1)
  state, history = run_rounds(sim, p0, 2)
  chex.assert_trees_all_close(state.server, ref.server, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(state.clients, ref.clients, rtol=1e-6, atol=1e-7)
  assert history[-1][1]["uplink_bytes"] == ref_hist[-1][1]["uplink_bytes"] == 4 * 163
  e, e_ref = sim.evaluate(state), ref_sim.evaluate(ref)
  assert e["accuracy"] == e_ref["accuracy"] and np.isfinite(e["loss"])
  # Evaluation before aggregation: the trained models, not the global one.
  client0 = jax.tree.map(lambda a: a[0], state.clients)
  chex.assert_trees_all_equal(sim.algorithm.personalize(state.server, client0),
                              client0.trained)
  assert int(state.clients.rounds[0]) == 2


def test_validate():
  with pytest.raises(ValueError, match="fedbn.eval_model"):
    FedBNConfig(eval_model="global").validate()
