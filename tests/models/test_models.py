"""Models: parameter counts, torch-style init, BatchNorm statistics per client."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.core import backend
from fedjax_pfl.models import get_model
from tests.helpers import make_sim, run_rounds, tiny_image_data, tiny_resnet


def _count(model, trainable_only=True):
  params = jax.eval_shape(model.init, jax.random.key(0))
  mask = model.state_mask or jax.tree.map(lambda _: False, params)
  return int(sum(np.prod(p.shape) for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(mask))
                 if not (trainable_only and s)))


@pytest.mark.parametrize("name,shape,classes,expected", [
    ("cnn", (28, 28, 1), 10, 582_026), ("cnn", (32, 32, 3), 10, 878_538),
    ("cnn", (32, 32, 3), 100, 924_708), ("cnn", (28, 28, 1), 62, 608_702),
    ("resnet8", (28, 28, 1), 10, 1_229_002), ("resnet8", (32, 32, 3), 10, 1_235_274),
    ("resnet10", (32, 32, 3), 100, 4_957_092)])
def test_parameter_counts_match_the_papers(name, shape, classes, expected):
  assert _count(get_model(name, shape, classes)) == expected


def test_cnn_torch_default_init_bounds():
  params = get_model("cnn", (28, 28, 1), 10).init(jax.random.key(0))
  bound = 1 / np.sqrt(1024)
  assert np.abs(params["fc1"]["kernel"]).max() <= bound
  assert np.abs(params["fc1"]["kernel"]).max() > 0.9 * bound
  assert np.abs(params["fc1"]["bias"]).max() <= bound


def test_padded_examples_do_not_enter_batch_statistics():
  model = tiny_resnet()
  params = model.init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1))
  garbage = x.at[2:].set(1e3)
  mask = jnp.array([True, True, False, False])
  _, with_mask = model.apply_train(params, garbage, mask)
  _, only_two = model.apply_train(params, x[:2], jnp.ones(2, bool))
  chex.assert_trees_all_close(with_mask, only_two, rtol=1e-5, atol=1e-6)


def test_resnet_local_training_updates_running_statistics():
  sim, p0 = make_sim("local", data=tiny_image_data(), model=tiny_resnet(), participation=1.0,
                     epochs=1)
  state, _ = run_rounds(sim, p0, 1)
  means = np.asarray(state.clients["bn1"]["mean"])          # [N, 4]
  assert np.all(means[0] != 0.0)
  # Each client normalizes with its own batches: different statistics per client.
  assert not np.allclose(means[0], means[2])
  assert np.isfinite(sim.evaluate(state)["loss"])


@pytest.mark.parametrize("execution", [
    backend.Execution(parallelism="vmap", step_loop="scan"),
    backend.Execution(parallelism="vmap", step_loop="python", chunk_size=4)])
def test_batch_statistics_per_client_under_vmap(execution):
  data = tiny_image_data()
  ref_sim, p0 = make_sim("local", data=data, model=tiny_resnet(), participation=1.0, epochs=1)
  sim, _ = make_sim("local", data=data, model=tiny_resnet(), participation=1.0, epochs=1,
                    execution=execution)
  ref, _ = run_rounds(ref_sim, p0, 1)
  got, _ = run_rounds(sim, p0, 1)
  chex.assert_trees_all_close(ref.clients, got.clients, rtol=1e-4, atol=1e-5)


def test_resolve_model_name_matches_what_get_model_builds():
  from fedjax_pfl.models.base import resolve_model_name
  for shape in ((8, 8, 1), (28, 28, 1), (32, 32, 3)):
    assert resolve_model_name("auto", shape) == get_model("auto", shape, 10).name
  assert resolve_model_name("auto", (8, 8, 1)) == "mlp"
  assert resolve_model_name("auto", (28, 28, 1)) == "cnn"
  assert resolve_model_name("resnet8", (8, 8, 1)) == "resnet8"  # explicit names unchanged
