"""Event-driven asynchronous FFGG and the notebook's Byzantine setup
(fedjax_pfl.ffgg.{async_, byzantine}), checked against NumPy references and
degenerate cases, in float64 on small instances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.ffgg import async_ as asy
from fedjax_pfl.ffgg import byzantine as byz
from fedjax_pfl.ffgg import instances as inst

KEY = jax.random.key(0)


@pytest.fixture(autouse=True, scope="module")
def _x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module")
def gram():
  return inst.notebook_gram(1, num_clients=5, dim_x=6, dim_y=3, rows=40, zeta=1.0,
                            targets="shared", perturbation="normalized", dtype=jnp.float64)


def test_arrival_order_by_hand():
  order, stale = asy.arrival_order([1.0, 1.0, 1.0], 7, jitter="fixed")
  np.testing.assert_array_equal(order, [0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_array_equal(stale, [0, 1, 2, 2, 2, 2, 2])
  order, _ = asy.arrival_order([1.0, 2.5], 6, jitter="fixed")  # arrivals at 1 2 2.5 3 4 5
  np.testing.assert_array_equal(order, [0, 0, 1, 0, 0, 0])
  with pytest.raises(ValueError, match="jitter='gamma'"):
    asy.arrival_order([1.0], 1, jitter="gamma")
  with pytest.raises(ValueError, match="delays=0.0"):
    asy.arrival_order([0.0, 1.0], 1)


@pytest.mark.parametrize("method", ["ffgg", "joint"])
def test_async_run_matches_a_numpy_event_loop(gram, method):
  order, _ = asy.arrival_order(asy.delay_profile(5, 4.0), 30, seed=2)
  lr = 0.05
  theta, norms = asy.async_run(gram, order, lr=lr, method=method, record_every=10)
  mat, vec = (gram.Q, gram.r) if method == "ffgg" else (gram.K, gram.k)
  mat, vec = np.asarray(mat), np.asarray(vec)
  th, read, ref = np.zeros(vec.shape[1]), np.zeros(vec.shape), []
  for t, m in enumerate(order):
    th = th - lr * (mat[m] @ read[m] - vec[m])
    read[m] = th
    if t % 10 == 9:
      ref.append(np.linalg.norm(mat.mean(0) @ th - vec.mean(0)))
  np.testing.assert_allclose(theta, th, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(norms[1:], ref, rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError, match="events=30"):
    asy.async_run(gram, order, lr=lr, record_every=7)


def test_one_client_async_is_synchronous_gd(gram):
  one = inst.Gram(*(a[:1] if a.ndim and a.shape[0] == 5 else a for a in gram))
  order, stale = asy.arrival_order([1.0], 12)
  assert not stale.any()
  x_a, n_a = asy.async_run(one, order, lr=0.1)
  x_s, n_s = asy.sync_run(one, 12, lr=0.1)
  np.testing.assert_allclose(x_a, x_s, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(n_a, n_s, rtol=1e-12, atol=1e-14)


def test_byzantine_degenerate_cases(gram):
  c = inst.gram_constants(gram)
  lr = 1 / c["L_F"]
  _, ref = asy.sync_run(gram, 20, lr=lr)
  _, none = byz.byzantine_ffgg(gram, KEY, rounds=20, lr=lr, num_attackers=0, aggregator="mean")
  np.testing.assert_allclose(none, ref, rtol=1e-10, atol=1e-12)
  # Silent attackers (scale 0): the mean is M / (M + A) of the honest mean.
  _, silent = byz.byzantine_ffgg(gram, KEY, rounds=20, lr=lr, num_attackers=3,
                                 attack_scale=0.0, aggregator="mean")
  _, scaled = asy.sync_run(gram, 20, lr=lr * 5 / 8)
  np.testing.assert_allclose(silent, scaled, rtol=1e-10, atol=1e-12)
  # One bucket holding every client: the median is the mean.
  _, one_bucket = byz.byzantine_ffgg(gram, KEY, rounds=20, lr=lr, num_attackers=0,
                                     bucket_size=5)
  np.testing.assert_allclose(one_bucket, ref, rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError, match="num_attackers=6"):
    byz.byzantine_ffgg(gram, KEY, rounds=1, lr=lr, num_attackers=6)


def test_flipped_gradients_the_mean_diverges_at_large_scale_the_median_converges(gram):
  lr = 1 / inst.gram_constants(gram)["L_F"]
  _, mean = byz.byzantine_ffgg(gram, KEY, rounds=300, lr=lr, num_attackers=1, attack_scale=10.0,
                               aggregator="mean")
  _, med = byz.byzantine_ffgg(gram, KEY, rounds=300, lr=lr, num_attackers=1, attack_scale=10.0)
  assert float(mean[-1]) > float(mean[0])  # 10 * 1 > 5 honest: the mean ascends
  assert float(med[-1]) < 1e-6 * float(med[0])
