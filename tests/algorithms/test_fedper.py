"""FedPer: empty personal set is FedAvg; heads stay per client."""

import chex
import jax
import numpy as np
import pytest

from fedjax_pfl.algorithms.fedper import FedPerConfig
from tests.helpers import make_sim, run_rounds, seen_and_unseen


def test_empty_personal_set_equals_fedavg_round_for_round():
  sim_avg, p0 = make_sim("fedavg")
  sim_per, _ = make_sim("fedper", FedPerConfig(personal_layers=r"^nothing$"))
  _, h_avg = run_rounds(sim_avg, p0, 2)
  _, h_per = run_rounds(sim_per, p0, 2)
  for (s_avg, m_avg), (s_per, m_per) in zip(h_avg, h_per):
    chex.assert_trees_all_close(s_avg.server, s_per.server, rtol=1e-6, atol=1e-7)
    assert m_per["train_loss"] == pytest.approx(m_avg["train_loss"], rel=1e-6)
  assert h_per[-1][0].clients == ()
  e_avg, e_per = sim_avg.evaluate(h_avg[-1][0]), sim_per.evaluate(h_per[-1][0])
  assert e_per["accuracy"] == e_avg["accuracy"]
  assert e_per["loss"] == pytest.approx(e_avg["loss"], rel=1e-5)


def test_heads_are_personal_and_body_is_shared():
  sim, p0 = make_sim("fedper", participation=0.5)
  state, _ = run_rounds(sim, p0, 1)
  picked = sim.cohort(0).tolist()
  others = [i for i in range(sim.num_clients) if i not in picked]
  heads = state.clients  # (classifier bias, classifier kernel): tree order
  assert len(heads) == 2 and heads[1].shape == (sim.num_clients,) + p0["classifier"]["kernel"].shape
  for i in others:  # never sampled: still theta^0's head
    np.testing.assert_array_equal(heads[1][i], p0["classifier"]["kernel"])
  assert not np.allclose(heads[1][picked[0]], heads[1][picked[1]])
  # The server's personal leaves are unused and stay at theta^0; the body moved.
  chex.assert_trees_all_equal(state.server["classifier"], p0["classifier"])
  assert not np.allclose(state.server["fc1"]["kernel"], p0["fc1"]["kernel"])
  # Evaluation model: global body + own head.
  client = jax.tree.map(lambda a: a[picked[0]], state.clients)
  model = sim.algorithm.personalize(state.server, client)
  chex.assert_trees_all_equal(model["fc1"], state.server["fc1"])
  np.testing.assert_array_equal(model["classifier"]["kernel"], heads[1][picked[0]])


def test_invalid_regex_is_rejected():
  with pytest.raises(ValueError, match=r"fedper.personal_layers='\('"):
    FedPerConfig(personal_layers="(").validate()


@pytest.mark.parametrize("name,cfg", [
    ("fedper", FedPerConfig(unseen_personal="server_mean")),
    ("lgfedavg", None),
])
def test_server_mean_round_one_is_fedavg_and_unseen_clients_use_the_average(name, cfg):
  """FL-bench (``unseen_personal="server_mean"``): round 1 starts every client
  from theta^0 and averages all parameters, so its server equals FedAvg's; a
  never-sampled client then trains from and is evaluated with that average."""
  from fedjax_pfl.algorithms.lgfedavg import LGFedAvgConfig
  cfg = cfg or LGFedAvgConfig(unseen_personal="server_mean")
  sim_avg, p0 = make_sim("fedavg")
  sim, _ = make_sim(name, cfg)
  _, h_avg = run_rounds(sim_avg, p0, 1)
  _, h = run_rounds(sim, p0, 1)
  state = h[0][0]
  chex.assert_trees_all_close(state.server, h_avg[0][0].server, rtol=1e-6, atol=1e-7)
  seen, client = seen_and_unseen(sim, state)
  chex.assert_trees_all_equal(sim.algorithm.personalize(state.server, client), state.server)
  chex.assert_trees_all_equal(sim.algorithm.broadcast(state.server, client)[0], state.server)
  model = sim.algorithm.personalize(state.server, seen)
  assert not np.allclose(model["classifier"]["kernel"], state.server["classifier"]["kernel"])
  np.testing.assert_array_equal(model["classifier"]["kernel"], seen[0][1])


def test_unseen_personal_is_validated():
  with pytest.raises(ValueError, match=r"fedper.unseen_personal='x'"):
    FedPerConfig(unseen_personal="x").validate()
