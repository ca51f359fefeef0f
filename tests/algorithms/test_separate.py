"""Separate: Local-Only under full participation; nothing is communicated."""

import chex
import numpy as np
import pytest

from fedjax_pfl.algorithms.separate import SeparateConfig
from tests.helpers import make_sim, run_rounds, tiny_data


def test_separate_equals_local_only_with_full_participation():
  kw = dict(data=tiny_data(num_clients=5), participation=1.0, epochs=1)
  sep, p0 = make_sim("separate", **kw)
  loc, _ = make_sim("local", **kw)
  s_sep, h_sep = run_rounds(sep, p0, 2)
  s_loc, h_loc = run_rounds(loc, p0, 2)
  chex.assert_trees_all_equal(s_sep.clients.trained, s_loc.clients)
  for (_, m_sep), (_, m_loc) in zip(h_sep, h_loc):
    assert m_sep["train_loss"] == m_loc["train_loss"]
    for key in ("uplink_bytes", "downlink_bytes", "round_uplink_bytes", "round_downlink_bytes"):
      assert m_sep[key] == 0.0
    assert m_loc["train_examples"] == m_sep["train_examples"] > 0
  e_sep, e_loc = sep.evaluate(s_sep), loc.evaluate(s_loc)
  assert e_sep["client_accuracy"] == e_loc["client_accuracy"]
  assert e_sep["loss"] == e_loc["loss"] and np.isfinite(e_sep["loss"])
  assert int(s_sep.clients.rounds[0]) == 2


def test_config():
  SeparateConfig().validate()
  with pytest.raises(TypeError):
    SeparateConfig(0)  # kw_only


def test_per_client_init_draws_one_model_per_client():
  """Fling: client i starts from ``model.init(fold_in(algorithm_init key, i))``."""
  import jax

  from tests.helpers import tiny_model
  data = tiny_data(num_clients=5)
  sim, p0 = make_sim("separate", SeparateConfig(init="per_client"), data=data, participation=0.4)
  state = sim.init(p0)
  model = tiny_model(data.num_classes)
  for i in range(5):
    want = model.init(jax.random.fold_in(sim.algorithm_init_key, i))
    chex.assert_trees_all_equal(jax.tree.map(lambda a, i=i: a[i], state.clients.trained), want)
  assert not np.allclose(state.clients.trained["fc1"]["kernel"][0],
                         state.clients.trained["fc1"]["kernel"][1])
  after, _ = sim.run_round(state)
  picked = sim.cohort(0).tolist()
  other = next(i for i in range(5) if i not in picked)
  chex.assert_trees_all_equal(jax.tree.map(lambda a: a[other], after.clients.trained),
                              model.init(jax.random.fold_in(sim.algorithm_init_key, other)))
  with pytest.raises(ValueError, match="separate.init='x'"):
    SeparateConfig(init="x").validate()
