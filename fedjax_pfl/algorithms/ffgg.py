"""FFGG on neural networks: Fine-tuning Followed by Global Gradient.

Mishchenko, Islamov, Gorbunov, Horvath. "Partially Personalized Federated
Learning: Breaking the Curse of Data Heterogeneity." TMLR 2025,
arXiv:2305.18285. Only the synthetic notebooks of the reference code are public
(``Rustem-Islamov/FL_representations``); this module is the project's working
definition for networks (spec §4b).

Parameters are split once, from a path regex, into the global body ``x`` and a
personal head ``y_i`` (default: the classifier). Round k, sampled client i:

* fine-tune: ``y_i <- y_i - gamma_in grad_y f_i(x^{k-s}, y_i)`` for ``tau =
  inner_steps`` minibatch SGD steps (body frozen), warm-started from the stored
  head (``warm_start=False``: from theta^0's head every round);
* gradient: ``g_i = grad_x f_i(x^{k-s}, y_i)`` over the whole local train set
  (or ``grad_batches`` minibatches);
* Local FFGG (``local_steps = K > 1``): K steps ``x <- x - local_lr g`` (each
  with a fresh gradient as above, head fixed), returning the pseudo-gradient
  ``(x^{k-s} - x_K) / local_lr = sum_j g_j``;
* Byzantine clients (ids ``< num_byzantine``) upload ``byzantine_scale *
  N(0, I)`` instead (key: the client's round context key);
* server: ``G = sum_i w_i g_i / sum_i w_i`` with uniform client weights
  ``w_i = 1`` (``client_weights="uniform"``, the paper's objective ``F = 1/M
  sum_m F_m``) or train-set sizes ``w_i = n_i`` (``"samples"``), or the
  coordinate-wise median over buckets shuffled with the round's server key
  (``aggregator="bucketed_median"``,
  bucket means with the same weights); ``x^{k+1}`` = one optax step (SGD,
  ``server_lr = gamma_out``) from ``x^k`` with gradient G.
* asynchronous (``staleness = s``): clients compute at ``x^{k-s}`` (a ring
  buffer of the last ``s + 1`` bodies in the server state; ``x^{j<0} = x^0``),
  the server applies the stale gradients to the current ``x^k``.

Evaluation: current body + the client's stored (fine-tuned) head.

Choices (the paper's network details are UNVERIFIED): the head steps cycle
over the client's own minibatches (``tau`` real steps whatever its data size).
Local FFGG (Algorithm 4, whose text was not retrieved) is read as: fine-tune
the head ONCE at ``x^{k-s}``, then K body steps with the head fixed, upload
the pseudo-gradient; :func:`fedjax_pfl.ffgg.quadratic.ffgg` follows the same
reading. Models with BatchNorm statistics are not supported.

Degenerate equivalences: ``staleness = 0`` is synchronous FFGG; ``local_steps =
1`` is FFGG; ``bucket_size >= cohort`` makes the median the weighted mean;
``inner_steps = 0`` with one server SGD step is FedSGD on the body (heads fixed).
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_pfl.algorithms._compose import Partition, client_lr, partition
from fedjax_pfl.algorithms.fedper import CLASSIFIER, PERSONAL, check_regex
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import (
  LocalProgram,
  batch_active,
  epoch_permutations,
  gather_batch,
  num_batches,
)
from fedjax_pfl.core.local import (
  steps_per_epoch as local_steps_per_epoch,
)
from fedjax_pfl.ffgg.quadratic import AGGREGATORS, bucketed_median
from fedjax_pfl.ops.aggregation import weighted_mean

CLIENT_WEIGHTS = ("uniform", "samples")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FFGGConfig:
  """FFGG hyperparameters (see the module docstring for the update).

  Attributes:
    personal_layers: regex over parameter paths of the personal head ``y``.
    inner_steps: ``tau >= 0`` head SGD steps per round.
    inner_lr: ``gamma_in``; None: the client lr (``train.lr``).
    grad_batches: minibatches per body gradient; 0: the whole train set.
    local_steps: ``K >= 1`` body steps (K > 1: Local FFGG).
    local_lr: Local FFGG body step size; None: the client lr.
    server_lr: ``gamma_out``.
    server_optimizer: ``"sgd"`` or ``"adam"`` (optax).
    server_momentum: SGD momentum of the server, in [0, 1).
    warm_start: keep fine-tuned heads between rounds (else restart from theta^0).
    staleness: ``s >= 0`` rounds of gradient delay.
    num_byzantine: clients ``0 .. num_byzantine - 1`` send noise.
    byzantine_scale: std of the Byzantine noise.
    aggregator: ``"mean"`` or ``"bucketed_median"``.
    bucket_size: clients per bucket for the median.
    client_weights: ``"uniform"`` (every participating client 1: the paper's
      ``1/M`` objective) or ``"samples"`` (train-set sizes).
  """
  personal_layers: str = CLASSIFIER
  inner_steps: int = 10
  inner_lr: float | None = None
  grad_batches: int = 0
  local_steps: int = 1
  local_lr: float | None = None
  server_lr: float = 1.0
  server_optimizer: str = "sgd"
  server_momentum: float = 0.0
  warm_start: bool = True
  staleness: int = 0
  num_byzantine: int = 0
  byzantine_scale: float = 10.0
  aggregator: str = "mean"
  bucket_size: int = 2
  client_weights: str = "uniform"

  def validate(self) -> None:
    check_regex("ffgg", "personal_layers", self.personal_layers)
    ints = {"inner_steps": 0, "grad_batches": 0, "local_steps": 1, "staleness": 0,
            "num_byzantine": 0, "bucket_size": 1}
    for name, low in ints.items():
      if getattr(self, name) < low:
        raise ValueError(f"ffgg.{name}={getattr(self, name)}; allowed: >= {low}")
    for name in ("inner_lr", "local_lr"):
      if getattr(self, name) is not None and getattr(self, name) < 0:
        raise ValueError(f"ffgg.{name}={getattr(self, name)}; allowed: >= 0 or None (train.lr)")
    if self.server_lr <= 0:
      raise ValueError(f"ffgg.server_lr={self.server_lr}; allowed: > 0")
    if self.server_optimizer not in ("sgd", "adam"):
      raise ValueError(f"ffgg.server_optimizer={self.server_optimizer!r}; allowed: sgd, adam")
    if not 0 <= self.server_momentum < 1:
      raise ValueError(f"ffgg.server_momentum={self.server_momentum}; allowed: [0, 1)")
    if self.byzantine_scale < 0:
      raise ValueError(f"ffgg.byzantine_scale={self.byzantine_scale}; allowed: >= 0")
    if self.aggregator not in AGGREGATORS:
      raise ValueError(f"ffgg.aggregator={self.aggregator!r}; allowed: {list(AGGREGATORS)}")
    if self.client_weights not in CLIENT_WEIGHTS:
      raise ValueError(f"ffgg.client_weights={self.client_weights!r}; "
                       f"allowed: {list(CLIENT_WEIGHTS)}")


class FFGGServer(NamedTuple):
  bodies: tuple        # body leaves, each [s + 1, ...]: x^k, x^{k-1}, ..., x^{k-s}
  head0: tuple         # theta^0's head leaves (cold starts)
  opt_state: Any       # server optax state over the body


class FFGGClient(NamedTuple):
  head: tuple          # the client's fine-tuned head leaves
  byzantine: jax.Array  # [] bool


class _Carry(NamedTuple):
  head: tuple
  body: tuple
  head_opt: Any
  acc: tuple           # sum of size-weighted body gradients of the current step
  acc_n: jax.Array
  g_sum: tuple         # sum of the body gradients over the K local steps
  perms: jax.Array     # [tau + E_b, S_e * B]
  stats: jax.Array     # [4]: head loss sum, head examples, body loss sum, body examples


def ffgg_program(spec, split: Partition, cfg: FFGGConfig) -> LocalProgram:
  """The client work of FFGG as a :class:`LocalProgram` (``tau`` head steps,
  then ``K * G`` body-gradient steps). ``init`` takes ``(head, body)``;
  ``finish`` returns ``((pseudo_gradient, head), metrics)``."""
  bsz, tau, k = spec.batch_size, cfg.inner_steps, cfg.local_steps
  spe = local_steps_per_epoch(spec.num_slots, bsz)
  full = cfg.grad_batches == 0
  g_eff = spe if full else cfg.grad_batches
  body_epochs = k if full else k * g_eff
  inner_lr = client_lr(spec) if cfg.inner_lr is None else cfg.inner_lr
  local_lr = client_lr(spec) if cfg.local_lr is None else cfg.local_lr
  head_opt = optax.sgd(inner_lr)

  def loss(head, body, batch):
    return spec.ce_loss(split.merge(head, body), batch)
  head_grad = jax.value_and_grad(loss, argnums=0)
  body_grad = jax.value_and_grad(loss, argnums=1)

  def init(inputs, data, key):
    head, body = inputs
    perm_key, _ = jax.random.split(key)  # the SGD program's split: same permutations
    perms = epoch_permutations(perm_key, data.count, tau + body_epochs, spec.num_slots,
                               spe * bsz)
    zeros = jax.tree.map(jnp.zeros_like, body)
    return _Carry(head, body, head_opt.init(head), zeros, jnp.zeros(()), zeros, perms,
                  jnp.zeros(4))

  def head_step(c: _Carry, t, data):
    nb = jnp.maximum(_num_batches(data.count, bsz), 1)
    batch = gather_batch(data, c.perms[t // nb], t % nb, bsz)
    size = jnp.sum(batch.mask).astype(jnp.float32)
    active = batch_active(size)
    value, grads = head_grad(c.head, c.body, batch)
    updates, opt = head_opt.update(grads, c.head_opt, c.head)
    keep = lambda new, old: jnp.where(active, new, old)
    head = jax.tree.map(keep, optax.apply_updates(c.head, updates), c.head)
    stats = c.stats + jnp.where(active, jnp.stack([value * size, size, 0.0, 0.0]), 0.0)
    return c._replace(head=head, head_opt=jax.tree.map(keep, opt, c.head_opt), stats=stats)

  def body_step(c: _Carry, t, data):
    u = t - tau
    j, g = u // g_eff, u % g_eff
    if full:
      epoch, slot = tau + j, g
    else:
      nb = jnp.maximum(_num_batches(data.count, bsz), 1)
      epoch, slot = tau + u // nb, u % nb
    batch = gather_batch(data, c.perms[epoch], slot, bsz)
    size = jnp.sum(batch.mask).astype(jnp.float32)
    active = batch_active(size)
    value, grads = body_grad(c.head, c.body, batch)
    acc = jax.tree.map(lambda a, d: a + jnp.where(active, d * size, 0.0), c.acc, grads)
    acc_n = c.acc_n + jnp.where(active, size, 0.0)
    stats = c.stats + jnp.where(active, jnp.stack([0.0, 0.0, value * size, size]), 0.0)
    end = g == g_eff - 1
    mean = jax.tree.map(lambda a: a / jnp.maximum(acc_n, 1.0), acc)
    body = jax.tree.map(lambda b, d: jnp.where(end, b - local_lr * d, b), c.body, mean)
    g_sum = jax.tree.map(lambda s, d: jnp.where(end, s + d, s), c.g_sum, mean)
    acc = jax.tree.map(lambda a: jnp.where(end, jnp.zeros_like(a), a), acc)
    return c._replace(body=body, acc=acc, acc_n=jnp.where(end, 0.0, acc_n), g_sum=g_sum,
                      stats=stats)

  def step(c: _Carry, t, data):
    return jax.lax.cond(t < tau, head_step, body_step, c, t, data)

  def finish(c: _Carry):
    metrics = {"train_loss": c.stats[0] / jnp.maximum(c.stats[1], 1.0),
               "train_examples": c.stats[1],
               "grad_loss": c.stats[2] / jnp.maximum(c.stats[3], 1.0)}
    return (c.g_sum, c.head), metrics

  def active_steps(counts):
    nb = num_batches(int(max(counts, default=0)), bsz)
    if nb == 0:
      return []
    # The last step of each local step applies the body update: never skipped.
    per_step = sorted({*range(min(nb, g_eff)), g_eff - 1}) if full else range(g_eff)
    return list(range(tau)) + [tau + j * g_eff + g for j in range(k) for g in per_step]

  return LocalProgram(init, step, finish, tau + k * g_eff, spe, bsz, active_steps)


def _num_batches(count, bsz):
  """Traced :func:`num_batches`: full batches plus a last one of >= 2 examples."""
  return count // bsz + batch_active(count % bsz).astype(count.dtype)


def client_weights(weights: jax.Array, mode: str) -> jax.Array:
  """Aggregation weights ``[C]`` from the engine's train-set sizes ``[C]`` (0:
  padding or no data): ``"samples"`` keeps them, ``"uniform"`` gives every
  client with data weight 1."""
  return weights if mode == "samples" else (weights > 0).astype(weights.dtype)


def server_optimizer(cfg) -> optax.GradientTransformation:
  """``sgd`` (with momentum) or ``adam`` at ``server_lr``."""
  if cfg.server_optimizer == "adam":
    return optax.adam(cfg.server_lr)
  return optax.sgd(cfg.server_lr, momentum=cfg.server_momentum or None)


def ffgg(*, spec, split: Partition, config: FFGGConfig) -> Algorithm:
  """Builds FFGG (module docstring). Server state :class:`FFGGServer`; client
  state :class:`FFGGClient`; upload: the body (pseudo-)gradient leaves."""
  config.validate()
  cfg, s = config, config.staleness
  program = ffgg_program(spec, split, cfg)
  opt = server_optimizer(cfg)

  def init(params, num_clients, *, key=None):
    body = split.rest(params)
    server = FFGGServer(tuple(jnp.broadcast_to(b, (s + 1,) + b.shape) for b in body),
                        split.select(params), opt.init(body))
    byz = jnp.arange(num_clients) < cfg.num_byzantine
    clients = cohort.stack_clients(FFGGClient(split.select(params), jnp.zeros((), bool)),
                                   num_clients)
    return server, clients._replace(byzantine=byz)

  def broadcast(server: FFGGServer, client: FFGGClient, *, ctx=None):
    head = client.head if cfg.warm_start else server.head0
    return (head, tuple(b[s] for b in server.bodies)), ()

  def finalize(server, client: FFGGClient, trained, extra, *, ctx):
    grad, head = trained
    keys = jax.random.split(ctx.key, len(grad))
    noise = tuple(cfg.byzantine_scale * jax.random.normal(k_, g.shape, g.dtype)
                  for k_, g in zip(keys, grad))
    upload = tuple(jnp.where(client.byzantine, n, g) for n, g in zip(noise, grad))
    return upload, FFGGClient(head, client.byzantine), {"upload_norm": optax.tree.norm(upload)}

  def aggregate(server: FFGGServer, uploads, weights, *, ctx):
    weights = client_weights(weights, cfg.client_weights)
    if cfg.aggregator == "mean":
      grad = weighted_mean(uploads, weights)
    else:
      grad = bucketed_median(uploads, weights, ctx.key, cfg.bucket_size)
    body = tuple(b[0] for b in server.bodies)
    updates, opt_state = opt.update(grad, server.opt_state, body)
    body = optax.apply_updates(body, updates)
    bodies = tuple(jnp.concatenate([n[None], b[:-1]]) for n, b in zip(body, server.bodies))
    return (FFGGServer(bodies, server.head0, opt_state),
            {"server_grad_norm": optax.tree.norm(grad)})

  def personalize(server: FFGGServer, client: FFGGClient):
    return split.merge(client.head, tuple(b[0] for b in server.bodies))

  return Algorithm("ffgg", init, broadcast, program, finalize, aggregate, personalize)


def _build(cfg: FFGGConfig, *, spec, params) -> Algorithm:
  cfg.validate()  # before the regex is used
  if spec.state_mask is not None:
    raise ValueError("ffgg: models with BatchNorm statistics are not supported; "
                     "allowed: model.name=cnn or mlp")
  return ffgg(spec=spec, split=partition(params, {cfg.personal_layers: PERSONAL}, PERSONAL),
              config=cfg)


SPECS = {"ffgg": AlgorithmSpec(
    FFGGConfig, _build,
    "FFGG (Mishchenko et al. 2023): head fine-tuning, then a global body gradient")}
