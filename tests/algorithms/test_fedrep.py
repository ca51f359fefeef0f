"""FedRep: head epochs then body epochs, with true freezing."""

import jax
import numpy as np
import pytest

from fedjax_pfl.algorithms.fedrep import FedRepConfig
from fedjax_pfl.core import cohort, rng
from tests.helpers import make_sim


def _local_round(body_epochs: int, epochs: int):
  """One client's broadcast -> local program -> finalize, jitted."""
  sim, p0 = make_sim("fedrep", FedRepConfig(train_body_epochs=body_epochs), epochs=epochs)
  alg = sim.algorithm
  state = sim.init(p0)
  client = jax.tree.map(lambda a: a[0], state.clients)

  @jax.jit
  def run(server, client, data, key):
    params, extra = alg.broadcast(server, client)
    prog = alg.local_train
    carry = jax.lax.fori_loop(0, prog.num_steps, lambda t, c: prog.step(c, t, data),
                              prog.init(params, data, key))
    trained, _ = prog.finish(carry)
    return params, alg.finalize(server, client, trained, extra)

  key = rng.client_key(sim.train_key, 0, 0)
  return run(state.server, client, cohort.client_data(sim.data, 0), key)


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_zero_body_epochs_never_change_the_body():
  broadcast, (upload, head, _) = _local_round(body_epochs=0, epochs=2)
  assert not _changed(upload, (broadcast["fc1"]["bias"], broadcast["fc1"]["kernel"]))
  assert _changed(head, (broadcast["classifier"]["bias"], broadcast["classifier"]["kernel"]))


def test_all_body_epochs_keep_the_head_at_its_broadcast_value():
  broadcast, (upload, head, _) = _local_round(body_epochs=2, epochs=2)
  assert not _changed(head, (broadcast["classifier"]["bias"], broadcast["classifier"]["kernel"]))
  assert _changed(upload, (broadcast["fc1"]["bias"], broadcast["fc1"]["kernel"]))


def test_default_split_trains_both_parts():
  broadcast, (upload, head, _) = _local_round(body_epochs=1, epochs=2)
  assert _changed(upload, (broadcast["fc1"]["bias"], broadcast["fc1"]["kernel"]))
  assert _changed(head, (broadcast["classifier"]["bias"], broadcast["classifier"]["kernel"]))


def test_negative_body_epochs_rejected():
  with pytest.raises(ValueError, match="fedrep.train_body_epochs=-1"):
    FedRepConfig(train_body_epochs=-1).validate()
