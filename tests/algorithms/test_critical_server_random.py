"""FedCAC / FedPURIN server step on random uploads against a NumPy transcription
of the spec (algorithms.md §3.2-3.4: per-tensor top-τ masks with the 1e-10
cutoff, overlaps, threshold 𝒯_r, collaboration sets, Eq. 9 δ_i, Eq. 10 θ̄ with
zero-counted sparse uploads, Eq. 11 merge), through the algorithms' own slots
(init -> broadcast -> finalize -> aggregate, as in tests/algorithms/test_fedcac.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_pfl.algorithms.fedcac import FedCACConfig, fedcac
from fedjax_pfl.algorithms.fedpurin import FedPURINConfig, fedpurin
from fedjax_pfl.core.local import LocalSpec, make_optimizer
from tests.algorithms.test_fedcac import slot_round

# 'bn1' is a BatchNorm module (mean: running statistic; scale: affine parameter).
STATE = {"bn1": {"mean": True, "scale": False}, "conv": {"kernel": False},
         "dense": {"bias": False, "kernel": False}}
SHAPES = {"bn1/mean": (3,), "bn1/scale": (3,), "conv/kernel": (2, 3, 4), "dense/bias": (5,),
          "dense/kernel": (6, 5)}
WEIGHTS = np.array([3.0, 1.0, 0.0, 2.0, 5.0, 1.0], np.float32)   # client 2: cohort padding
BETA = 10.0


def tree(flat):
  out = {}
  for path, value in flat.items():
    a, b = path.split("/")
    out.setdefault(a, {})[b] = jnp.asarray(value)
  return out


def random_round(seed):
  """θ⁰, per-client trained models (some with many exact zeros, so that the
  cutoff shrinks their masks and the n_i differ) and last-batch gradients."""
  rng = np.random.default_rng(seed)
  theta0 = {p: rng.normal(size=s).astype(np.float32) for p, s in SHAPES.items()}
  trained, grads = [], []
  for i in range(len(WEIGHTS)):
    t = {p: (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32)
         for p, v in theta0.items()}
    g = {p: rng.normal(size=v.shape).astype(np.float32) for p, v in theta0.items()}
    if i in (1, 4):                        # dead units: exact zeros in a weight tensor
      t["dense/kernel"][rng.random(SHAPES["dense/kernel"]) < 0.7] = 0.0
    trained.append(t), grads.append(g)
  return theta0, trained, grads


def np_mask(score, tau, floor):
  """Spec §3.2: k = int(τ n), thr = k-th largest (+inf if k = 0); thr <= 1e-10
  -> the smallest score > floor (if any); critical = score >= thr."""
  v = score.reshape(-1)
  k = int(tau * v.size)
  thr = np.sort(v)[::-1][k - 1] if k > 0 else np.inf
  if thr <= 1e-10 and np.any(v > floor):
    thr = v[v > floor].min()
  return score >= thr


def np_server(uploads, masks, weights, r, beta):
  """Spec §3.3 steps 1-6 on the masked tensors (dicts path -> array per client)."""
  ids = [i for i in range(len(weights)) if weights[i] > 0]
  flat = {i: np.concatenate([masks[i][p].ravel() for p in sorted(masks[i])]).astype(np.float64)
          for i in ids}
  o = {(i, j): 1.0 - np.abs(flat[i] - flat[j]).sum() / (2.0 * flat[i].sum())
       for i in ids for j in ids if i != j}
  o_avg, o_max = np.mean(list(o.values())), max(o.values())
  if r == beta:                                         # 𝒯_β = O_max: ties collaborate
    sets = {i: [j for j in ids if j != i and o[i, j] >= o_max] for i in ids}
  else:
    thr = o_avg + r / beta * (o_max - o_avg)
    sets = {i: [j for j in ids if j != i and o[i, j] >= thr] for i in ids}
  total = sum(weights[j] for j in ids)
  merged = {}
  for i in ids:
    merged[i] = {}
    for p in masks[i]:
      delta = np.mean([uploads[j][p] for j in [i, *sets[i]]], axis=0)              # Eq. 9
      gbar = sum(weights[j] * uploads[j][p].astype(np.float64) for j in ids) / total  # Eq. 10
      merged[i][p] = np.where(masks[i][p], delta, gbar)                           # Eq. 11
  return merged, {i: len(sets[i]) for i in ids}


CASES = {  # name: (algorithm, masked leaves, sparse upload)
    "fedcac": ("fedcac", ("bn1/scale", "conv/kernel", "dense/bias", "dense/kernel"), False),
    "fedpurin": ("fedpurin", ("conv/kernel", "dense/bias", "dense/kernel"), True),
    "fedpurin_hessian": ("fedpurin", ("conv/kernel", "dense/bias", "dense/kernel"), True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed,rounds_done", [(0, 0), (1, 3), (2, 9), (3, 10)])
def test_server_step_matches_numpy(case, seed, rounds_done):
  name, masked, sparse = CASES[case]
  hessian = case.endswith("hessian")
  tau = 0.4 if seed % 2 else 0.5
  theta0, trained, grads = random_round(seed)
  spec = LocalSpec(lambda p, x: x, make_optimizer(0.1), 1, 2, 2, None, STATE, 0.1)
  if name == "fedcac":
    alg = fedcac(FedCACConfig(tau=tau, beta=BETA), spec=spec, params=tree(theta0))
    outputs = [tree(t) for t in trained]
  else:
    cfg = FedPURINConfig(tau=tau, beta=BETA, grad="exact", hessian=hessian, grad_fp16=True)
    alg = fedpurin(cfg, spec=spec, params=tree(theta0))
    outputs = [(tree(t), tree(g)) for t, g in zip(trained, grads)]
  server, clients, _, agg = slot_round(alg, outputs, WEIGHTS, params0=tree(theta0),
                                       rounds_done=rounds_done)
  # NumPy: scores, masks and uploads of every client.
  masks, uploads = [], []
  for t, g in zip(trained, grads):
    if name == "fedcac":
      score = {p: np.abs((t[p] - theta0[p]) * t[p]) for p in masked}
    else:
      gv = {p: g[p].astype(np.float16).astype(np.float32) * t[p] for p in masked}
      score = {p: np.abs(-gv[p] + np.float32(0.5) * gv[p] * gv[p]) if hessian
               else np.abs(gv[p]) for p in masked}
    floor = 1e-20 if name == "fedcac" else 1e-10
    m = {p: np_mask(score[p], tau, floor) for p in masked}
    masks.append(m)
    uploads.append({p: np.where(m[p], t[p], 0.0) if sparse else t[p] for p in masked})
  r = rounds_done + 1
  want, sizes = np_server(uploads, masks, WEIGHTS, r, BETA)
  assert len(set(int(sum(m.sum() for m in mk.values())) for mk in masks)) > 1  # n_i differ
  nxt = {p: np.asarray(clients.next[p.split("/")[0]][p.split("/")[1]]) for p in SHAPES}
  for i in range(len(WEIGHTS)):
    for p in SHAPES:
      if WEIGHTS[i] == 0:                                  # padding: row untouched (θ⁰)
        np.testing.assert_array_equal(nxt[p][i], theta0[p])
      elif p in masked:
        np.testing.assert_allclose(nxt[p][i], want[i][p], rtol=1e-5, atol=1e-6, err_msg=p)
      else:                                                # BN: the client's own values
        np.testing.assert_array_equal(nxt[p][i], trained[i][p])
    if sparse:                                             # evaluated model = sparsified
      for p in masked:
        got = np.asarray(clients.trained[p.split("/")[0]][p.split("/")[1]][i])
        np.testing.assert_array_equal(got, uploads[i][p])
  mean_size = np.mean(list(sizes.values()))
  assert float(agg["collaborators"]) == pytest.approx(mean_size, abs=1e-6)
  if r > BETA:
    assert mean_size == 0
  if r == 1:
    assert 0 < mean_size                                   # sets are not trivially empty
