"""pFedSD: the distillation loss against NumPy, the teacher bookkeeping, and
lambda = 0 equals fedavg_bn round for round."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.pfedsd import PFedSDConfig, distillation_loss, pfedsd
from fedjax_pfl.core.local import Batch, LocalInput, LocalSpec, make_optimizer
from tests.algorithms.test_fedbn import fedavg_bn_reference
from tests.helpers import make_sim, run_rounds, tiny_data, tiny_model


def _np_loss(logits, t_logits, y, mask, lam, temp):
  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -log_softmax(logits)[np.arange(len(y)), y]
  p_t = np.exp(log_softmax(t_logits / temp))
  kl = (p_t * (log_softmax(t_logits / temp) - log_softmax(logits / temp))).sum(-1)
  m = mask.astype(np.float64)
  return (ce * m).sum() / m.sum() + lam * temp ** 2 * (kl * m).sum() / m.sum(), \
      (ce * m).sum() / m.sum()


def test_distillation_loss_matches_numpy():
  model = tiny_model()
  spec = LocalSpec(model.apply, make_optimizer(0.1), 1, 5, 5)
  student, teacher = model.init(jax.random.key(0)), model.init(jax.random.key(1))
  rng = np.random.default_rng(0)
  batch = Batch(jnp.asarray(rng.normal(size=(5, 4, 4, 1)), jnp.float32),
                jnp.array([0, 2, 1, 1, 0], jnp.int32), jnp.array([1, 1, 1, 1, 0], bool))
  logits = np.asarray(model.apply(student, batch.x), np.float64)
  t_logits = np.asarray(model.apply(teacher, batch.x), np.float64)
  want, ce = _np_loss(logits, t_logits, np.asarray(batch.y), np.asarray(batch.mask), .5, 3.)

  @jax.jit
  def losses(student, teacher):
    fn = distillation_loss(spec, 0.5, 3.0, True)
    zero = distillation_loss(spec, 0.0, 3.0, True)
    with_t = fn(student, batch, None, (teacher, jnp.bool_(True)))
    first = fn(student, batch, None, (teacher, jnp.bool_(False)))   # first round: no teacher
    g0 = jax.grad(zero)(student, batch, None, (teacher, jnp.bool_(True)))
    g_ce = jax.grad(spec.ce_loss)(student, batch)
    return with_t, first, g0, g_ce
  with_t, first, g0, g_ce = losses(student, teacher)
  assert float(with_t) == pytest.approx(want, rel=1e-5)
  assert float(first) == pytest.approx(ce, rel=1e-5)
  assert want > ce
  chex.assert_trees_all_close(g0, g_ce, rtol=1e-6, atol=1e-7)   # lambda = 0: plain CE


def test_teacher_is_the_last_trained_model():
  model = tiny_model()
  p0 = model.init(jax.random.key(0))
  spec = LocalSpec(model.apply, make_optimizer(0.1), 1, 2, 4)
  alg = pfedsd(PFedSDConfig(), spec=spec, params=p0)
  server, clients = alg.init(p0, 2)
  client = jax.tree.map(lambda a: a[0], clients)
  start, _ = alg.broadcast(server, client)
  assert isinstance(start, LocalInput) and not bool(start.context[1])     # skipped in round 1
  trained = jax.tree.map(lambda a: a + 1.0, p0)
  _, client, m = alg.finalize(server, client, trained, ())
  start, _ = alg.broadcast(server, client)
  assert bool(start.context[1])
  chex.assert_trees_all_equal(start.context[0], trained)
  chex.assert_trees_all_equal(start.params, p0)                # trains from the global model
  assert float(m["uplink_values"]) == sum(x.size for x in jax.tree.leaves(p0))


def test_lambda_zero_equals_fedavg_bn():
  ref_sim, p0, ref, ref_hist = fedavg_bn_reference()
  sim, _ = make_sim("pfedsd", PFedSDConfig(lam=0.0), data=tiny_data(num_clients=5),
                    participation=1.0, epochs=1)
  state, history = run_rounds(sim, p0, 2)
  for (s, m), (r, m_ref) in zip(history, ref_hist):
    chex.assert_trees_all_close(s.server, r.server, rtol=1e-5, atol=1e-6)
    assert m["train_loss"] == pytest.approx(m_ref["train_loss"], rel=1e-5)
  chex.assert_trees_all_close(state.clients, ref.clients, rtol=1e-5, atol=1e-6)
  e, e_ref = sim.evaluate(state), ref_sim.evaluate(ref)
  assert e["accuracy"] == e_ref["accuracy"]
  assert e["loss"] == pytest.approx(e_ref["loss"], rel=1e-5)


def test_validate():
  with pytest.raises(ValueError, match="pfedsd.temperature"):
    PFedSDConfig(temperature=0.0).validate()
  with pytest.raises(ValueError, match="pfedsd.lam"):
    PFedSDConfig(lam=-1.0).validate()
