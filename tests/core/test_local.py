"""Local training program against hand-rolled optax loops and masking rules."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_pfl.core.local import (
  ClientData,
  LocalInput,
  LocalSpec,
  make_optimizer,
  num_batches,
  softmax_cross_entropy,
)
from tests.helpers import tiny_model

MODEL = tiny_model()
P0 = MODEL.init(jax.random.key(0))


def _data(n, slots=12, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(slots + 3, 4, 4, 1)).astype(np.float32)
  y = rng.integers(0, 3, slots + 3).astype(np.int32)
  idx = np.zeros(slots, np.int32)
  idx[:n] = np.arange(3, 3 + n)
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(idx), jnp.int32(n))


def _run(program, params, data, key=jax.random.key(1)):
  carry = program.init(params, data, key)
  for t in range(program.num_steps):
    carry = program.step(carry, jnp.int32(t), data)
  return program.finish(carry)


def _spec(**kw):
  args = dict(apply=MODEL.apply, optimizer=make_optimizer(0.1, 0.9), epochs=3, batch_size=16,
              num_slots=12)
  args.update(kw)
  return LocalSpec(**args)


def test_full_batch_epochs_equal_manual_optax_loop():
  data = _data(10)
  params, metrics = _run(_spec().program(), P0, data)
  opt = make_optimizer(0.1, 0.9)
  ref, state = P0, opt.init(P0)
  x, y = data.x[3:13], data.y[3:13]
  loss = lambda p: softmax_cross_entropy(MODEL.apply(p, x), y, jnp.ones(10, bool))
  for _ in range(3):
    g = jax.grad(loss)(ref)
    u, state = opt.update(g, state, ref)
    ref = optax.apply_updates(ref, u)
  chex.assert_trees_all_close(params, ref, rtol=1e-5, atol=1e-6)
  assert float(metrics["train_examples"]) == 30


def test_pytorch_style_weight_decay():
  opt = make_optimizer(0.1, 0.0, weight_decay=0.5)
  p = {"w": jnp.array([2.0])}
  u, _ = opt.update({"w": jnp.array([1.0])}, opt.init(p), p)
  assert float(u["w"][0]) == pytest.approx(-0.1 * (1.0 + 0.5 * 2.0))


@pytest.mark.parametrize("n", [0, 1])
def test_no_batch_of_two_leaves_params_unchanged(n):
  params, metrics = _run(_spec().program(), P0, _data(n))
  chex.assert_trees_all_equal(params, P0)
  assert float(metrics["train_examples"]) == 0


def test_batch_of_one_is_skipped():
  # 5 examples, batch 4: one batch of 4 per epoch, the trailing batch of 1 skipped.
  _, metrics = _run(_spec(batch_size=4).program(), P0, _data(5))
  assert float(metrics["train_examples"]) == 3 * 4
  _, metrics = _run(_spec(batch_size=4).program(), P0, _data(6))
  assert float(metrics["train_examples"]) == 3 * 6


def test_num_batches_and_active_steps():
  assert [num_batches(n, 4) for n in (0, 1, 2, 4, 5, 6, 9)] == [0, 0, 1, 1, 1, 2, 2]
  prog = _spec(batch_size=4, epochs=2).program()
  assert prog.steps_per_epoch == 3 and prog.num_steps == 6
  assert list(prog.active_steps(np.array([5, 2]))) == [0, 3]
  assert list(prog.active_steps(np.array([12]))) == [0, 1, 2, 3, 4, 5]


def test_epoch_reshuffling_uses_only_real_examples():
  prog = _spec(batch_size=4, epochs=2).program()
  carry = prog.init(P0, _data(7), jax.random.key(3))
  perms = np.asarray(carry.perms)
  for e in range(2):
    assert sorted(perms[e, :7].tolist()) == list(range(7))
  assert perms[0, :7].tolist() != perms[1, :7].tolist()


def test_trainable_mask_freezes_params_and_momentum():
  frozen = {"fc1": False, "classifier": True}
  prog = _spec().program(trainable=lambda epoch: frozen)
  params, _ = _run(prog, P0, _data(10))
  chex.assert_trees_all_equal(params["fc1"], P0["fc1"])
  assert not np.allclose(params["classifier"]["kernel"], P0["classifier"]["kernel"])


def test_trainable_mask_by_epoch():
  # Epoch 0 trains only the classifier, later epochs only fc1 (FedRep-style).
  def trainable(epoch):
    return {"fc1": epoch >= 1, "classifier": epoch < 1}
  one = _run(_spec(epochs=1).program(trainable=trainable), P0, _data(10))[0]
  chex.assert_trees_all_equal(one["fc1"], P0["fc1"])
  three = _run(_spec(epochs=3).program(trainable=trainable), P0, _data(10))[0]
  chex.assert_trees_all_equal(three["classifier"], one["classifier"])
  assert not np.allclose(three["fc1"]["kernel"], P0["fc1"]["kernel"])


def test_context_reaches_the_loss():
  def prox_loss(params, batch, key, context):
    sq = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(context)))
    return 0.0 * softmax_cross_entropy(MODEL.apply(params, batch.x), batch.y, batch.mask) + sq
  anchor = jax.tree.map(jnp.zeros_like, P0)
  prog = _spec(optimizer=make_optimizer(0.25), epochs=2).program(prox_loss)
  params, _ = _run(prog, LocalInput(P0, anchor), _data(10))
  # Gradient 2 p, lr 0.25: each step halves the params.
  chex.assert_trees_all_close(params, jax.tree.map(lambda a: a * 0.25, P0), rtol=1e-5)
