"""FFGG on networks (hand-computed round, staleness, Byzantine, Local FFGG,
contract) and FedAlt / FedSim (equivalences with FedRep / FedPer)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl import algorithms
from fedjax_pfl.algorithms._compose import partition
from fedjax_pfl.algorithms.fedalt import FedAltConfig
from fedjax_pfl.algorithms.fedper import FedPerConfig
from fedjax_pfl.algorithms.fedrep import FedRepConfig
from fedjax_pfl.algorithms.ffgg import FFGGConfig
from fedjax_pfl.core import backend, rng
from fedjax_pfl.core.local import (
  LocalSpec,
  epoch_permutations,
  make_optimizer,
  softmax_cross_entropy,
)
from tests.helpers import client_ctx, make_sim, run_rounds, server_ctx, tiny_data, tiny_model

SEQ = backend.Execution(parallelism="sequential", step_loop="scan")  # fastest to compile
SEQ_PY = backend.Execution(parallelism="sequential", step_loop="python")  # skips steps


def _alg(cfg, *, batch_size=32, lr=0.1):
  data, model = tiny_data(), tiny_model()
  p0 = model.init(jax.random.key(0))
  spec = LocalSpec(model.apply, make_optimizer(lr), 1, batch_size, int(data.train_idx.shape[1]),
                   lr=lr)
  return algorithms.build("ffgg", cfg, spec=spec, params=p0), p0, data, model


@pytest.mark.parametrize("weights", ["samples", "uniform"])
def test_one_round_by_hand(weights):
  """One round on every client, recomputed by hand from the documented batch
  schedule: tau = 2 head SGD steps cycling over the client's own minibatches
  (B = 4; epoch t // nb, batch t % nb of the client's permutations), then the
  full-data body gradient (B = 4 leaves no batch of one here, so it is the
  exact mean); Local FFGG with K = 2 and local_lr = 0 uploads 2 g_i; the server
  takes one SGD step of 0.25 with the sample-weighted mean (``"samples"``) or
  the plain mean over clients with data (``"uniform"``). Python stepping
  skips the steps past each client's batches (``active_steps``)."""
  tau, k, bsz = 2, 2, 4
  cfg = FFGGConfig(inner_steps=tau, inner_lr=0.1, local_steps=k, local_lr=0.0, server_lr=0.25,
                   client_weights=weights)
  sim, p0 = make_sim("ffgg", cfg, participation=1.0, batch_size=bsz, execution=SEQ_PY)
  state, hist = run_rounds(sim, p0, 1)
  data, model = tiny_data(), tiny_model()
  split = partition(p0, {r"^classifier(/|$)": "p"}, "p")
  xs, ys, m = jnp.asarray(data.x), jnp.asarray(data.y), data.train_idx.shape[1]
  spe = -(-m // bsz)
  assert sim.algorithm.local_train.active_steps([3]) == [0, 1, 2, 5, 6, 9]

  def loss(head, body, idx, mask):
    return softmax_cross_entropy(model.apply(split.merge(head, body), xs[idx]), ys[idx], mask)

  @jax.jit
  def client(head, body, idx, n, key):
    perms = epoch_permutations(jax.random.split(key)[0], n, tau + k, m, spe * bsz)
    nb = jnp.maximum(n // bsz + (n % bsz >= 2), 1)
    for t in range(tau):
      slots = jax.lax.dynamic_slice(perms[t // nb], ((t % nb) * bsz,), (bsz,))
      mask = (t % nb) * bsz + jnp.arange(bsz) < n
      grads = jax.grad(loss)(head, body, idx[slots], mask)
      head = jax.tree.map(lambda h, g: h - 0.1 * g, head, grads)
    return head, jax.grad(loss, argnums=1)(head, body, idx, jnp.arange(m) < n)

  body0, counts = split.rest(p0), np.asarray(data.train_counts)
  total = jax.tree.map(jnp.zeros_like, body0)
  for i, n in enumerate(counts):
    head = split.select(p0)
    if n >= 2:  # a single example forms no batch: no steps, zero gradient
      head, g = client(head, body0, jnp.asarray(data.train_idx[i]), n,
                       rng.client_key(sim.train_key, 0, i))
      w = n if weights == "samples" else 1
      total = jax.tree.map(lambda t, gi, w=w: t + k * w * gi, total, g)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], state.clients.head), head,
                                rtol=1e-5, atol=1e-6)
  norm = counts.sum() if weights == "samples" else np.sum(counts > 0)
  assert np.sum(counts > 0) != counts.sum()  # the two weightings differ on this data
  expected = jax.tree.map(lambda b, t: b - 0.25 * t / norm, body0, total)
  got = tuple(b[0] for b in state.server.bodies)
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
  assert hist[0][1]["server_grad_norm"] > 0


def test_staleness_ring_buffer():
  """Clients compute at x^{k-s} (x^{j<0} = x^0); staleness 0 is synchronous."""
  ones = lambda tree, c: tuple(jnp.full((2,) + b.shape, c, b.dtype) for b in tree)
  w = jnp.asarray([1.0, 3.0])
  for s in (0, 2):
    alg, p0, _, _ = _alg(FFGGConfig(staleness=s, server_lr=0.5))
    server, clients = alg.init(p0, 8)
    client = jax.tree.map(lambda a: a[0], clients)
    xs = [alg.broadcast(server, client)[0][1]]
    current = [tuple(b[0] for b in server.bodies)]
    for k in range(3):
      server, _ = alg.aggregate(server, ones(current[-1], float(k + 1)), w,
                                ctx=server_ctx([0, 1], clients, round_idx=k))
      current.append(tuple(b[0] for b in server.bodies))
      xs.append(alg.broadcast(server, client)[0][1])
    for k in range(4):
      chex.assert_trees_all_equal(xs[k], current[max(k - s, 0)])
    # x^3 = x^0 - 0.5 * (1 + 2 + 3): stale gradients still move the current x.
    chex.assert_trees_all_close(current[3], jax.tree.map(lambda b: b - 3.0, current[0]))
  # Heads: warm-started from the client's stored head, or theta^0's (cold).
  tuned = client._replace(head=jax.tree.map(lambda h: h + 1.0, client.head))
  chex.assert_trees_all_equal(alg.broadcast(server, tuned)[0][0], tuned.head)
  cold, _, _, _ = _alg(FFGGConfig(warm_start=False))
  chex.assert_trees_all_equal(cold.broadcast(server, tuned)[0][0], server.head0)
  chex.assert_trees_all_equal(cold.personalize(server, tuned)["classifier"]["bias"],
                              tuned.head[0])


def test_byzantine_upload_and_robust_aggregation():
  alg, p0, _, _ = _alg(FFGGConfig(num_byzantine=1, byzantine_scale=50.0))
  server, clients = alg.init(p0, 8)
  assert np.asarray(clients.byzantine).tolist() == [True] + [False] * 7
  grad = tuple(jnp.ones_like(b[0]) for b in server.bodies)
  honest = jax.tree.map(lambda a: a[3], clients)
  byz = jax.tree.map(lambda a: a[0], clients)
  up_h, new_h, _ = alg.finalize(server, honest, (grad, honest.head), (), ctx=client_ctx(3))
  up_b, _, m = alg.finalize(server, byz, (grad, byz.head), (), ctx=client_ctx(0))
  chex.assert_trees_all_equal(up_h, grad)
  chex.assert_trees_all_equal(new_h.head, honest.head)
  flat = np.concatenate([np.ravel(u) for u in up_b])
  assert 40.0 < flat.std() < 60.0 and abs(flat.mean()) < 10.0

  # Seven honest uploads near 1, one huge outlier.
  honest_vals = 1.0 + 0.1 * np.arange(7)
  uploads = tuple(jnp.asarray(np.concatenate([[1e4], honest_vals]).reshape((8,) + (1,) * b.ndim)
                              * np.ones((8,) + b.shape), jnp.float32) for b in grad)
  weights = jnp.ones(8)
  body = lambda srv: tuple(b[0] for b in srv.bodies)
  moved = lambda srv: max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(body(srv), body(server)))
  ctx = server_ctx(range(8), clients)
  mean_srv, _ = alg.aggregate(server, uploads, weights, ctx=ctx)
  assert moved(mean_srv) > 1000.0
  med, _, _, _ = _alg(FFGGConfig(aggregator="bucketed_median", bucket_size=2))
  med_srv, _ = med.aggregate(server, uploads, weights, ctx=ctx)
  assert 1.0 <= moved(med_srv) <= 1.6
  # One bucket holding the whole cohort: the median is the weighted mean.
  one, _, _, _ = _alg(FFGGConfig(aggregator="bucketed_median", bucket_size=8))
  w = jnp.arange(1.0, 9.0)
  chex.assert_trees_all_close(one.aggregate(server, uploads, w, ctx=ctx)[0].bodies,
                              alg.aggregate(server, uploads, w, ctx=ctx)[0].bodies, rtol=1e-6)


@pytest.mark.parametrize("bad", [dict(inner_steps=-1), dict(local_steps=0),
                                 dict(aggregator="max"), dict(server_optimizer="lamb"),
                                 dict(personal_layers="("), dict(client_weights="sizes")])
def test_invalid_config(bad):
  with pytest.raises(ValueError, match="ffgg."):
    FFGGConfig(**bad).validate()


VARIANT = FFGGConfig(inner_steps=2, grad_batches=1, local_steps=2, staleness=1,
                     num_byzantine=1, aggregator="bucketed_median", server_optimizer="adam",
                     server_lr=0.05)


def test_contract_finite_deterministic():
  sim, p0 = make_sim("ffgg", VARIANT, execution=SEQ_PY)
  state, hist = run_rounds(sim, p0, 2)
  init = sim.init(p0)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.server, state.server)
  chex.assert_trees_all_equal_shapes_and_dtypes(init.clients, state.clients)
  assert all(np.isfinite(v) for _, m in hist for v in m.values())
  again, hist2 = run_rounds(sim, p0, 2)
  chex.assert_trees_all_equal(state.server, again.server)
  assert hist[-1][1] == hist2[-1][1]
  assert not np.array_equal(state.server.bodies[0][0], init.server.bodies[0][0])
  ev = sim.evaluate(state)
  assert 0.0 <= ev["accuracy"] <= 1.0 and np.isfinite(ev["loss"])


def test_fedalt_is_fedrep_with_head_epochs_first():
  """FedAlt (1 head epoch, then E = 2 body epochs) = FedRep with 3 epochs, 2 on the body."""
  sim, p0 = make_sim("fedalt", FedAltConfig(head_epochs=1), epochs=2, execution=SEQ)
  sim_ref, _ = make_sim("fedrep", FedRepConfig(train_body_epochs=2), epochs=3, execution=SEQ)
  state, _ = run_rounds(sim, p0, 1)
  state_ref, _ = run_rounds(sim_ref, p0, 1)
  chex.assert_trees_all_equal(state.server, state_ref.server)
  chex.assert_trees_all_equal(state.clients, state_ref.clients)
  assert not np.array_equal(state.server["fc1"]["kernel"], p0["fc1"]["kernel"])
  assert sim.algorithm.local_train.num_steps == 3 * sim.algorithm.local_train.steps_per_epoch


def test_fedsim_has_fedper_slots_and_joint_program():
  """FedSim = FedPer: same state layout, broadcast and upload split; E joint epochs."""
  sim, p0 = make_sim("fedsim", epochs=2)
  ref, _ = make_sim("fedper", FedPerConfig(), epochs=2)
  a, b = sim.algorithm, ref.algorithm
  (server, clients), (server_ref, clients_ref) = a.init(p0, 8), b.init(p0, 8)
  chex.assert_trees_all_equal(clients, clients_ref)
  client = jax.tree.map(lambda x: x[2], clients)
  chex.assert_trees_all_equal(a.broadcast(server, client), b.broadcast(server_ref, client))
  trained = jax.tree.map(lambda x: x + 1.0, p0)
  chex.assert_trees_all_equal(a.finalize(server, client, trained, ()),
                              b.finalize(server_ref, client, trained, ()))
  assert a.name == "fedsim" and a.local_train.num_steps == b.local_train.num_steps
  with pytest.raises(ValueError, match="fedalt.head_epochs=-1"):
    FedAltConfig(head_epochs=-1).validate()
