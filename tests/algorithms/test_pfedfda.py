"""pFedFDA: the LDA head against NumPy, local statistics at beta = (1, 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms import _features, pfedfda
from fedjax_pfl.algorithms.pfedfda import PFedFDAConfig
from fedjax_pfl.core import cohort, rng
from fedjax_pfl.core.local import ClientData
from tests.helpers import client_ctx, make_sim, tiny_data


def test_lda_head_matches_numpy():
  rs = np.random.default_rng(0)
  k, d, eps = 4, 6, 1e-2
  means = rs.normal(size=(k, d))
  a = rs.normal(size=(d, d))
  cov = a @ a.T + 0.5 * np.eye(d)
  priors = np.array([0.1, 0.2, 0.3, 0.4])
  head = pfedfda.lda_head(jnp.asarray(means, jnp.float32), jnp.asarray(cov, jnp.float32),
                          jnp.asarray(priors, jnp.float32), eps)
  shrunk = (1 - eps) * cov + eps * np.trace(cov) / d * np.eye(d)
  w = (np.linalg.inv(shrunk) @ means.T).T                       # [K, D]
  b = -0.5 * np.diag(means @ np.linalg.inv(shrunk) @ means.T) + np.log(priors)
  np.testing.assert_allclose(head["kernel"], w.T, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(head["bias"], b, rtol=1e-4, atol=1e-5)
  # A batch of mean sets [G, K, D] (the beta grid) shares one factorization
  # and gives the same heads as one call per set.
  batch = jnp.asarray(np.stack([means, 2 * means, -means]), jnp.float32)
  heads = pfedfda.lda_head(batch, jnp.asarray(cov, jnp.float32),
                           jnp.asarray(priors, jnp.float32), eps)
  assert heads["kernel"].shape == (3, d, k) and heads["bias"].shape == (3, k)
  for g in range(3):
    one = pfedfda.lda_head(batch[g], jnp.asarray(cov, jnp.float32),
                           jnp.asarray(priors, jnp.float32), eps)
    np.testing.assert_allclose(heads["kernel"][g], one["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(heads["bias"][g], one["bias"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 1, 3, 10, 64])
def test_train_features_cover_the_real_slots_in_any_chunk_size(chunk):
  """Features of slots < count equal one plain forward pass; padding slots are
  0; chunks past the count are skipped, also with clients vmapped."""
  sim, p0 = make_sim("pfedfda", PFedFDAConfig())
  params = sim.init(p0).server.params
  rs = np.random.default_rng(0)
  x = jnp.asarray(rs.standard_normal((40,) + tiny_data().x.shape[1:]), jnp.float32)
  y = jnp.asarray(rs.integers(0, 3, 40), jnp.int32)
  idx = jnp.asarray(rs.permutation(40)[:10], jnp.int32)
  want = np.asarray(_features.features(sim.apply_fn, params, x[idx]))
  for count in (0, 1, 7, 10):
    cdata = ClientData(x, y, idx, jnp.int32(count))
    feats, ys, valid = jax.jit(lambda d: pfedfda.train_features(sim.apply_fn, params, d, chunk))(
        cdata)
    np.testing.assert_allclose(feats[:count], want[:count], rtol=1e-5, atol=1e-6)
    assert not np.any(np.asarray(feats[count:]))
    np.testing.assert_array_equal(ys, y[idx])
    np.testing.assert_array_equal(valid, np.arange(10) < count)
  both = ClientData(x, y, jnp.stack([idx, idx[::-1]]), jnp.asarray([3, 9], jnp.int32))
  feats = jax.vmap(lambda d: pfedfda.train_features(sim.apply_fn, params, d, chunk)[0],
                   in_axes=(ClientData(None, None, 0, 0),))(both)
  np.testing.assert_allclose(feats[0, :3], want[:3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(feats[1, :9], want[::-1][:9], rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(feats[0, 3:])) and not np.any(np.asarray(feats[1, 9:]))


def test_cv_folds_are_stratified():
  labels = jnp.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 0, 1, 1])
  valid = jnp.arange(12) < 11                                   # last slot is padding
  fold, use = pfedfda.cv_folds(labels, valid, 4, 2, jax.random.key(0))
  np.testing.assert_array_equal(use, np.asarray(valid))         # every class has >= 2
  for c, n in ((0, 5), (1, 4), (2, 2)):
    f = np.asarray(fold)[np.asarray(use) & (np.asarray(labels) == c)]
    assert len(f) == n and abs(int(np.sum(f == 0)) - int(np.sum(f == 1))) <= 1
  _, use1 = pfedfda.cv_folds(labels, jnp.arange(12) < 8, 4, 2, jax.random.key(0))  # class 2 has one example
  assert not bool(use1[7]) and bool(use1[6])


def test_local_beta_uses_the_local_statistics():
  cfg = PFedFDAConfig(local_beta=True)
  sim, p0 = make_sim("pfedfda", cfg)
  alg, data = sim.algorithm, tiny_data()
  state = sim.init(p0)
  client = jax.tree.map(lambda a: a[0], state.clients)
  cdata = cohort.client_data(sim.data, 0)

  @jax.jit
  def run(server, client, key):
    inputs, extra = alg.broadcast(server, client, ctx=client_ctx(0))
    prog = alg.local_train
    carry = jax.lax.fori_loop(0, prog.num_steps, lambda t, c: prog.step(c, t, cdata),
                              prog.init(inputs, cdata, key))
    trained, metrics = prog.finish(carry)
    return alg.finalize(server, client, trained, extra, ctx=client_ctx(0)), metrics

  (upload, new, _), metrics = run(state.server, client, rng.client_key(sim.train_key, 0, 0))
  np.testing.assert_array_equal(new.beta, [1.0, 1.0])
  n = int(data.train_counts[0])                                 # 14: all batches >= 2
  idx = data.train_idx[0, :n]
  feats = np.asarray(_features.features(sim.apply_fn, upload[0], jnp.asarray(data.x[idx])),
                     np.float64)
  ys = data.y[idx]
  means = np.asarray(state.server.means, np.float64).copy()
  for c in range(data.num_classes):
    if np.sum(ys == c) > cfg.num_cv_folds:
      means[c] = feats[ys == c].mean(0)
  centred = feats - means[ys]
  cov = centred.T @ centred / (n - 1) + 1e-4 + np.eye(feats.shape[1])
  np.testing.assert_allclose(new.means, means, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new.cov, cov, rtol=1e-4, atol=1e-5)
  counts = np.bincount(ys, minlength=data.num_classes) / n + cfg.eps
  np.testing.assert_allclose(new.priors, counts / counts.sum(), rtol=1e-6)
  assert bool(new.trained)
  # The head trained against was frozen at LDA(global stats, local priors).
  head = pfedfda.lda_head(state.server.means, state.server.cov, new.priors, cfg.eps)
  np.testing.assert_allclose(upload[0]["classifier"]["kernel"], head["kernel"], rtol=1e-6)


def _numpy_stats(apply_fn, params, data, i, global_means, min_count):
  n = int(data.train_counts[i])
  idx = data.train_idx[i, :n]
  feats = np.asarray(_features.features(apply_fn, params, jnp.asarray(data.x[idx])), np.float64)
  ys = data.y[idx]
  means = np.asarray(global_means, np.float64).copy()
  for c in range(data.num_classes):
    if np.sum(ys == c) > min_count:
      means[c] = feats[ys == c].mean(0)
  centred = feats - means[ys]
  cov = centred.T @ centred / (n - 1) + 1e-4 + np.eye(feats.shape[1])
  counts = np.bincount(ys, minlength=data.num_classes) / n
  return means, cov, counts


def _with_data(sim, state, i):
  """Client i's evaluated model, with the context evaluation gives it."""
  from fedjax_pfl.core.algorithm import ClientContext
  client = jax.tree.map(lambda a: a[i], state.clients)
  key = jax.random.fold_in(jax.random.fold_in(sim.eval_key, state.round), i)
  ctx = ClientContext(jnp.int32(state.round), jnp.int32(i), key)
  return jax.jit(lambda s, c: sim.algorithm.personalize_with_data(
      s, c, cohort.client_data(sim.data, i), ctx=ctx))(state.server, client)


def test_evaluation_recomputes_statistics_on_the_current_body():
  """Defect fix: the evaluated LDA head comes from the CURRENT global body's
  features of the client's train set, not the statistics stored at training."""
  cfg = PFedFDAConfig(local_beta=True)
  sim, p0 = make_sim("pfedfda", cfg, participation=1.0)
  state = sim.init(p0)
  for _ in range(2):
    state, _ = sim.run_round(state)
  data = tiny_data()
  i = 0
  means, cov, counts = _numpy_stats(sim.apply_fn, state.server.params, data, i,
                                    state.server.means, cfg.num_cv_folds)
  priors = (counts + cfg.eps) / (counts + cfg.eps).sum()
  head = pfedfda.lda_head(jnp.asarray(means, jnp.float32), jnp.asarray(cov, jnp.float32),
                          jnp.asarray(priors, jnp.float32), cfg.eps)
  model = _with_data(sim, state, i)
  np.testing.assert_allclose(model["classifier"]["kernel"], head["kernel"], rtol=2e-3, atol=1e-4)
  np.testing.assert_allclose(model["classifier"]["bias"], head["bias"], rtol=2e-3, atol=1e-3)
  stale = sim.algorithm.personalize(state.server, jax.tree.map(lambda a: a[i], state.clients))
  assert not np.allclose(stale["classifier"]["kernel"], head["kernel"], rtol=1e-3)


def test_flbench_mode_is_fedavg_training_with_random_global_statistics():
  cfg = PFedFDAConfig(mode="flbench", local_beta=True)
  sim, p0 = make_sim("pfedfda", cfg)
  sim_avg, _ = make_sim("fedavg")
  state0 = sim.init(p0)
  means0 = np.asarray(state0.server.means)
  assert means0.min() >= 0 and means0.max() < 1
  state, hist = None, None
  from tests.helpers import run_rounds
  state, hist = run_rounds(sim, p0, 2)
  _, h_avg = run_rounds(sim_avg, p0, 2)
  for (s, _), (s_avg, _) in zip(hist, h_avg):
    np.testing.assert_array_equal(s.server.means, means0)
    np.testing.assert_array_equal(s.server.cov, np.eye(means0.shape[1]))
    import chex
    chex.assert_trees_all_close(s.server.params, s_avg.server, rtol=1e-6, atol=1e-7)
  data = tiny_data()
  for i in (0, 3):
    means, cov, counts = _numpy_stats(sim.apply_fn, state.server.params, data, i, means0,
                                      cfg.num_cv_folds)
    priors = (counts + cfg.eps) / (counts + cfg.eps).sum()
    head = pfedfda.lda_head(jnp.asarray(means, jnp.float32), jnp.asarray(cov, jnp.float32),
                            jnp.asarray(priors, jnp.float32), cfg.eps)
    model = _with_data(sim, state, i)
    np.testing.assert_allclose(model["classifier"]["kernel"], head["kernel"], rtol=2e-3,
                               atol=1e-4)
  # beta searched against the random means lies on the grid, in [0, 1].
  sim_b, _ = make_sim("pfedfda", PFedFDAConfig(mode="flbench"))
  model = _with_data(sim_b, state, 0)
  assert np.all(np.isfinite(model["classifier"]["kernel"]))


def test_personalize_with_data_is_what_evaluation_uses_on_every_backend():
  """The engine's ``personalize_with_data`` path: host (sequential, python
  steps) and compiled (vmap + scan) evaluation equal a manual evaluation of
  each client's data-built model on its test set."""
  import optax

  from fedjax_pfl.core import backend
  results = []
  for execution in (backend.Execution(parallelism="sequential", step_loop="python"),
                    backend.Execution(parallelism="vmap", step_loop="scan")):
    sim, p0 = make_sim("pfedfda", PFedFDAConfig(mode="flbench"), execution=execution)
    state = sim.init(p0)
    state, _ = sim.run_round(state)
    results.append(sim.evaluate(state))
  data = tiny_data()
  correct, losses = [], []
  for i in range(sim.num_clients):
    model = _with_data(sim, state, i)
    idx = data.test_idx[i, :int(data.test_counts[i])]
    logits = sim.apply_fn(model, jnp.asarray(data.x[idx]))
    correct.append(np.sum(np.argmax(logits, -1) == data.y[idx]))
    losses.append(np.sum(optax.softmax_cross_entropy_with_integer_labels(logits, data.y[idx])))
  for ev in results:
    assert ev["accuracy"] == sum(correct) / data.test_counts.sum()
    np.testing.assert_allclose(ev["loss"], sum(losses) / data.test_counts.sum(), rtol=1e-5)
  assert results[0]["client_accuracy"] == results[1]["client_accuracy"]


def test_mode_is_validated():
  with pytest.raises(ValueError, match="pfedfda.mode='x'"):
    PFedFDAConfig(mode="x").validate()


def test_batched_evaluation_builds_each_runs_models_from_data():
  """``evaluate_batch`` (runs vmapped) uses ``personalize_with_data`` like
  ``evaluate`` of each run. ``local_beta``: on this tiny data the beta grid's
  CV losses tie exactly for several clients, so the searched grid point would
  depend on float noise of the batching (checked: gaps 0 to 1e-7)."""
  from fedjax_pfl.core import backend
  from fedjax_pfl.core.rounds import SimState
  execution = backend.Execution(parallelism="vmap", step_loop="scan", num_devices=1)
  sim, p0 = make_sim("pfedfda", PFedFDAConfig(mode="flbench", local_beta=True),
                     execution=execution)
  p1 = jax.tree.map(lambda a: a * 0.5, p0)
  state = sim.init_batch([p0, p1], seeds=[0, 0])
  batched = sim.evaluate_batch(state)
  for i, p in enumerate((p0, p1)):
    one = sim.init(p)
    assert batched[i]["client_accuracy"] == sim.evaluate(one)["client_accuracy"]
    assert batched[i]["loss"] == pytest.approx(sim.evaluate(SimState(
        one.server, one.clients, 0))["loss"], rel=1e-5)


@pytest.mark.parametrize("parallelism,step_loop", [("sequential", "python"), ("vmap", "scan")])
def test_finetuning_starts_from_the_data_built_model(parallelism, step_loop):
  """Fine-tuning starts from ``personalize_with_data``: with lr = 0 the
  fine-tuned evaluation equals the plain one (host and compiled backends)."""
  from fedjax_pfl.core import backend
  sim, p0 = make_sim("pfedfda", PFedFDAConfig(mode="flbench"), lr=0.0, finetune_epochs=1,
                     execution=backend.Execution(parallelism=parallelism, step_loop=step_loop))
  state = sim.init(p0)
  state, _ = sim.run_round(state)
  plain, tuned = sim.evaluate(state), sim.evaluate_finetuned(state)
  assert tuned["client_accuracy"] == plain["client_accuracy"]
  assert tuned["loss"] == pytest.approx(plain["loss"], rel=1e-5)
