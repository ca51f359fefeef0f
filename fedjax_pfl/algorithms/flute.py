"""FLUTE: federated representation learning with a neural-collapse head.

Liu, Shen, Yang. "Federated Representation Learning in the Under-Parameterized
Regime." ICML 2024, arXiv:2406.04596 (FL-bench
``src/client/flute.py``, ``src/server/flute.py``).

Personal = the classifier (kernel and bias, FedPer-style); the body is
FedAvg-shared. With ``W = kernel^T [K, D]``, client labels ``y_i in {0,1}^K``
(classes present in its train set) and features ``h(x)``, the local loss is

  CE + l1 ||W W^T / ||W W^T||_F - (I - 11^T/K) * (y_i y_i^T) / sqrt(K-1)||_F
     + l2 ||W||_F^2 + l3 ||h(x_batch)||_F^2.

The first ``E - rep_round`` epochs train the head only, the last
``rep_round`` epochs everything. Server: FedAvg of the body, then ONE SGD step
(lr ``nc2_lr``) on the stacked classifier kernels of the cohort against the
mean over clients of the same neural-collapse term; each sampled client's
personal kernel becomes its stepped one (its bias stays the trained one).

Layout: each client's personal head is its row of the client state (sharded
over the client axis); ``aggregate`` writes the cohort's stepped heads back
through the round context (padding has weight 0 and is dropped; so is a real
client with no train example).

Deviation: the reference adds ``l3 ||h||^2`` only in the last ``rep_round``
epochs; here it is in every epoch's loss. This changes no parameter (``h``
does not depend on the head, and the body is frozen in head-only epochs),
only the reported ``train_loss`` of head-only epochs.

Reference-protocol options (FL-bench, the code behind FedOBP's Table IV):

* ``detach_features=True``: FL-bench takes the features with
  ``detach=True``, so no loss reaches the body: only the heads train, the
  global body stays ``theta^0`` for the whole run (FLUTE becomes per-client
  linear heads, with the NC regularizers and the server NC step, on random
  features). Here the body is frozen (head-only trainable mask in every epoch)
  and the server keeps its body (the uploads' bodies equal it), so it is
  bit-identical to ``theta^0``. (For a BatchNorm model the running statistics
  are then kept at ``theta^0`` too.)
* ``unseen_personal="server_mean"``: a client that never trained uses the
  server's average head (all parameters are averaged, heads included) instead
  of ``theta^0``'s (see :mod:`fedjax_pfl.algorithms.fedper`); the client state
  is then ``(head, trained [N] bool)``.

The defaults (False, ``"init"``) are the published algorithm.

Degenerate equivalence: ``lamda1 = lamda2 = lamda3 = nc2_lr = 0`` is FedPer
with FedRep-like head-then-all local training.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms import _features
from fedjax_pfl.algorithms.fedper import check_unseen, own_or_mean
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalInput, LocalSpec, softmax_cross_entropy
from fedjax_pfl.models.base import CLASSIFIER_RULES, HEAD, label_params
from fedjax_pfl.ops.aggregation import weighted_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class FLUTEConfig:
  """FLUTE hyperparameters (FL-bench defaults).

  Attributes:
    rep_round: last epochs that train the whole model, >= 0.
    lamda1: neural-collapse weight, >= 0.
    lamda2: classifier-norm weight, >= 0.
    lamda3: feature-norm weight, >= 0.
    nc2_lr: server SGD step size on the heads, >= 0.
    detach_features: FL-bench: no loss reaches the body (module docstring).
    unseen_personal: ``"init"`` or ``"server_mean"`` (FL-bench; module
      docstring).
  """
  rep_round: int = 1
  lamda1: float = 0.25
  lamda2: float = 0.0025
  lamda3: float = 0.0005
  nc2_lr: float = 0.5
  detach_features: bool = False
  unseen_personal: str = "init"

  def validate(self) -> None:
    check_unseen("flute", self.unseen_personal)
    for name in ("rep_round", "lamda1", "lamda2", "lamda3", "nc2_lr"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"flute.{name}={getattr(self, name)}; allowed: >= 0")


class FLUTEServer(NamedTuple):
  params: Any           # global model (its classifier entries are unused)


def _safe_norm(x, axes):
  s = jnp.sum(jnp.square(x), axis=axes)
  return jnp.where(s > 0, jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)


def nc_loss(kernel: jax.Array, present: jax.Array) -> jax.Array:
  """The neural-collapse distance for ``kernel [..., D, K]`` and class
  indicators ``present [..., K]`` (leading axes are batch axes)."""
  k = kernel.shape[-1]
  gram = jnp.einsum("...dk,...dj->...kj", kernel, kernel)
  gram = gram / _safe_norm(gram, (-2, -1))[..., None, None]
  pairs = present[..., :, None] * present[..., None, :]
  center = (jnp.eye(k) - jnp.ones((k, k)) / k).reshape((1,) * (pairs.ndim - 2) + (k, k))
  target = center * pairs / jnp.sqrt(k - 1.0)
  return _safe_norm(gram - target, (-2, -1))


def class_presence(data, num_classes: int) -> jax.Array:
  """``[K]`` float32: 1 for the classes in the client's train set."""
  valid = jnp.arange(data.idx.shape[0]) < data.count
  labels = data.y[data.idx]
  return jnp.zeros((num_classes,), jnp.float32).at[labels].max(valid.astype(jnp.float32))


def with_head(params, head):
  return {**params, HEAD: head}


def flute(*, spec: LocalSpec, params, config: FLUTEConfig) -> Algorithm:
  """Builds FLUTE. Server state: :class:`FLUTEServer`; client state: the
  client's personal classifier subtree (stacked ``[N, ...]``; with
  ``unseen_personal="server_mean"`` the pair ``(head, trained [N] bool)``),
  written by ``aggregate`` after the server's NC step."""
  config.validate()
  num_classes = params[HEAD]["kernel"].shape[-1]
  labels = label_params(params, CLASSIFIER_RULES)
  cut = spec.epochs - config.rep_round

  detach = config.detach_features
  server_mean = config.unseen_personal == "server_mean"

  def trainable(epoch):
    return jax.tree.map(lambda lab: jnp.asarray(True) if lab == HEAD else
                        (jnp.asarray(False) if detach else epoch >= cut), labels)

  def loss_fn(p, batch, key, present):
    del key
    if detach:  # FL-bench's detach=True: the features carry no gradient
      p = {**jax.lax.stop_gradient(p), HEAD: p[HEAD]}
    logits, h = _features.apply_with_head(spec.apply, p, batch.x)
    kernel = p[HEAD]["kernel"]
    feat = jnp.sum(jnp.where(batch.mask[:, None], jnp.square(h), 0.0))
    return (softmax_cross_entropy(logits, batch.y, batch.mask)
            + config.lamda1 * nc_loss(kernel, present)
            + config.lamda2 * jnp.sum(jnp.square(kernel)) + config.lamda3 * feat)

  inner = spec.program(loss_fn, trainable=trainable)

  def prog_init(p, data, key):
    return inner.init(LocalInput(p, class_presence(data, num_classes)), data, key)

  def prog_finish(carry):
    return (carry.params, carry.context), inner.finish(carry)[1]

  local = inner._replace(init=prog_init, finish=prog_finish)

  def init(params, num_clients, *, key=None):
    del key
    client = (params[HEAD], jnp.asarray(False)) if server_mean else params[HEAD]
    return FLUTEServer(params), cohort.stack_clients(client, num_clients)

  def personalize(server, client):
    if server_mean:
      head, trained = client
      return with_head(server.params, own_or_mean(trained, head, server.params[HEAD]))
    return with_head(server.params, client)

  def broadcast(server, client, *, ctx=None):
    return personalize(server, client), ()

  def finalize(server, client, trained, extra, *, ctx=None):
    return trained, client, {}

  def aggregate(server, uploads, weights, *, ctx):
    params, present = uploads
    valid = weights > 0
    kernels = params[HEAD]["kernel"]
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    objective = lambda k: jnp.sum(jnp.where(valid, nc_loss(k, present), 0.0)) / count
    kernels = kernels - config.nc2_lr * jax.grad(objective)(kernels)
    head = {**params[HEAD], "kernel": kernels}
    metrics = {"nc_loss": objective(kernels)}
    mean = weighted_mean(params, weights)
    if detach:  # the bodies uploaded equal the server's: keep it bit for bit
      mean = with_head(server.params, mean[HEAD])
    rows = (head, jnp.ones_like(valid)) if server_mean else head
    return FLUTEServer(mean), metrics, ctx.write(rows, where=valid)

  return Algorithm("flute", init, broadcast, local, finalize, aggregate, personalize)


def _build(cfg: FLUTEConfig, *, spec, params) -> Algorithm:
  return flute(spec=spec, params=params, config=cfg)


SPECS = {"flute": AlgorithmSpec(FLUTEConfig, _build, "FLUTE (Liu et al., ICML 2024)")}
