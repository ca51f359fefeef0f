"""FlexP-SFL: flexible personalized split federated learning (working definition).

Yuan, Geng, Han, Chen, Luo. "Flexible Personalized Split Federated Learning for
On-Device Fine-Tuning of Foundation Models." arXiv:2508.10349, 2025.

ONLY THE ABSTRACT IS AVAILABLE (``shared/papers/flexp-sfl-abstract.txt``): no
paper body, no code. The arXiv entry has since been replaced by v2, "FlexP-SFT:
A Flexible Aggregation-Free Framework for On-Device Personalized Split
Federated Fine-Tuning of LLMs" (spec reference-protocols §4), whose abstract
contradicts choices below: no client-side aggregation, an alignment without
global synchronization, a split ratio from a resource-aware optimisation and
(third-party summary) a U-shaped split. No equations or numbers of either
version are available. This module implements the project's working
definition (spec §5); every choice below is a config field, and the ones v2
contradicts are switchable (the defaults keep the v1 reading; v2's
aggregation-free design is ``aggregate_client_side=False, alignment="none" or
"feature"``, optionally ``server_side="per_client"``, ``u_shaped=True``).

The model is a sequence of L blocks (top-level parameter groups in definition
order). Client i has a compute budget ``r_i`` (``budgets`` assigned round-robin
by id or drawn from the run's ``algorithm_init`` key) and cut ``k_i`` = the largest number of leading
blocks whose training FLOPs per sample are ``<= r_i`` x the model's (>= 1;
:mod:`fedjax_pfl.models.flops`, from the model's shapes). Round t, client i:

* client side = blocks ``[0, k_i)`` (``u_shaped``: and the head, block L-1,
  with the loss; a cut ``k_i >= L - 1`` then puts every block on the client):
  personal, start from the client's own weights; server side = the other
  blocks: with ``server_side="shared"`` a per-client copy initialised from the
  global weights every round (kept afterwards as the client's server-side
  model), with ``"per_client"`` the client's own persistent server-side copy;
* E epochs of SGD on ``CE(y, f_i(x)) + lambda_align * align``:
  ``alignment="logit_kl"``: ``T^2 KL(softmax(f_g(x)/T) || softmax(f_i(x)/T))``
  with ``f_g`` the global model (frozen, the loss context); ``"feature"``: the
  mean squared difference between the smashed data (input of block ``k_i``)
  and that of the client's round-start model (no global model; 0 for ``k_i =
  L``); ``"none"``: CE only. The split forward/backward equals end-to-end
  backprop, so the composed model is trained and the split is *accounted*;
* global model = block-wise sample-weighted mean over the participating
  clients of the copies they hold (client side: personal blocks; server side:
  their per-client copies), i.e. the mean of the trained full models; with
  ``aggregate_client_side=False`` only over the clients that ran the block on
  the server (a block no client ran there keeps its value; client sides are
  never averaged nor uploaded).

Per client and round (cohort-mean metrics), with e trained examples, ``C_k`` /
``S_k`` the forward FLOPs per sample of blocks ``[0, k)`` / ``[k, L)``, ``a_k``
the per-sample size of block k's input (0 for k = L), ``P_k`` the parameters of
blocks ``[0, k)`` and ``d = 1`` when the alignment term is on: ``client_flops =
e (3 + d) C_k``, ``server_flops = e (3 + d) S_k`` (the teacher's forward runs at
the same split), ``act_uplink_bytes = 4 e a_k (1 + d)`` (activations at the
cut), ``act_downlink_bytes = 4 e a_k`` (their gradients), ``model_up_bytes = 4
P_k`` (the client side, for aggregation), ``model_down_bytes = 4 P_k`` when the
client side is refreshed from the global model or the teacher is on, else 0
(fp32); ``uplink_bytes`` / ``downlink_bytes`` (the engine's communication keys,
summed over the cohort into ``round_*``) are activations + model. U-shaped
(server part non-empty): the head's FLOPs and parameters count on the client
and its input ``a_{L-1}`` crosses twice more (server output down, its gradient
up; the teacher's output down again): ``act_uplink = 4 e (a_k (1 + d) +
a_{L-1})``, ``act_downlink = 4 e (a_k + a_{L-1} (1 + d))``.
``aggregate_client_side=False``: ``model_up_bytes = 0``. Feature alignment:
``client_flops += e C_k`` (the round-start model's forward to the cut).

Evaluation (``eval_server_side``): the client's model (client side + its last
server-side copy), or its client side + the global server side.

Degenerate equivalences: every cut at L with ``align_lambda = 0`` is Local-Only,
and so is every cut at L with ``aggregate_client_side=False`` and alignment
``"none"`` or ``"feature"`` (nothing is averaged); ``align_lambda = 0`` and one
cut k for all clients is FedPer with personal blocks ``[0, k)`` (FedAvg over the
server-side blocks), with or without ``aggregate_client_side``.

:func:`split_learning` also builds the SplitFed baselines (:mod:`.splitfed`).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.algorithms._compose import layer_names
from fedjax_pfl.algorithms._flexp_options import (
  client_block,
  feature_alignment_loss,
  server_side_mean,
  u_cut,
)
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalInput, LocalProgram, softmax_cross_entropy
from fedjax_pfl.models import flops
from fedjax_pfl.ops.aggregation import weighted_mean

PERSONAL_MODES = ("client_side", "head", "none")
PER_ROUND = ("model_up_bytes", "model_down_bytes", "cut")  # not per trained example
SERVER_SIDES = ("shared", "per_client")
ALIGNMENTS = ("logit_kl", "none", "feature")


def parse_budgets(value) -> tuple[float, ...] | None:
  """``"0.25,0.5,1"`` or a sequence -> tuple of floats; None if unparsable."""
  try:
    items = value.replace("(", "").replace(")", "").split(",") if isinstance(value, str) else value
    return tuple(float(v) for v in items if str(v).strip() != "")
  except (TypeError, ValueError):
    return None


def check_budgets(algo: str, budgets) -> None:
  parsed = parse_budgets(budgets)
  if not parsed or any(not 0 < b <= 1 for b in parsed):
    raise ValueError(f"{algo}.budgets={budgets!r}; allowed: a non-empty list of fractions "
                     "in (0, 1], e.g. 0.25,0.5,1.0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlexPSFLConfig:
  """FlexP-SFL hyperparameters (module docstring).

  Attributes:
    budgets: compute budgets ``r`` (fractions of the model's training FLOPs);
      a tuple or a comma-separated string.
    assignment: ``"round_robin"`` (client i gets ``budgets[i % len]``) or
      ``"random"`` (a uniform draw per client from the run's
      ``algorithm_init`` key, fixed for the run).
    align_lambda: weight of the alignment term (0 switches it off).
    temperature: distillation temperature ``T > 0``.
    eval_server_side: ``"personal"`` (the client's last server-side copy) or
      ``"global"`` (the global server-side blocks).
    aggregate_client_side: average the client-side blocks into the global
      model (False: they are never averaged nor uploaded; only server-side
      blocks are, v2's aggregation-free design).
    server_side: ``"shared"`` (every round the server side starts from the
      global blocks) or ``"per_client"`` (a persistent server-side copy per
      client, starting from its own last copy).
    u_shaped: head (last block) and loss on the client too.
    alignment: ``"logit_kl"`` (KL to the global model), ``"none"`` or
      ``"feature"`` (smashed activations kept near the round-start model's; no
      global model).
  """
  budgets: tuple[float, ...] | str = (0.25, 0.5, 1.0)
  assignment: str = "round_robin"
  align_lambda: float = 0.5
  temperature: float = 1.0
  eval_server_side: str = "personal"
  aggregate_client_side: bool = True
  server_side: str = "shared"
  u_shaped: bool = False
  alignment: str = "logit_kl"

  def __post_init__(self):
    parsed = parse_budgets(self.budgets)
    if parsed:
      object.__setattr__(self, "budgets", parsed)

  def validate(self) -> None:
    check_budgets("flexp_sfl", self.budgets)
    if self.assignment not in ("round_robin", "random"):
      raise ValueError(f"flexp_sfl.assignment={self.assignment!r}; allowed: round_robin, random")
    if self.align_lambda < 0:
      raise ValueError(f"flexp_sfl.align_lambda={self.align_lambda}; allowed: >= 0")
    if self.temperature <= 0:
      raise ValueError(f"flexp_sfl.temperature={self.temperature}; allowed: > 0")
    if self.eval_server_side not in ("personal", "global"):
      raise ValueError(f"flexp_sfl.eval_server_side={self.eval_server_side!r}; "
                       "allowed: personal, global")
    if self.server_side not in SERVER_SIDES:
      raise ValueError(f"flexp_sfl.server_side={self.server_side!r}; "
                       f"allowed: {', '.join(SERVER_SIDES)}")
    if self.alignment not in ALIGNMENTS:
      raise ValueError(f"flexp_sfl.alignment={self.alignment!r}; "
                       f"allowed: {', '.join(ALIGNMENTS)}")


class SplitClient(NamedTuple):
  params: Any          # the client's full model (personal modes) or ()
  budget: jax.Array    # [] float32 compute budget r_i
  cut: jax.Array       # [] int32 cut of the last training (0: never trained)


def alignment_loss(spec, align_lambda: float, temperature: float):
  """``(params, batch, key, global_params) -> CE + lambda T^2 KL(p_g || p_i)``
  (train-mode student, eval-mode teacher; with BatchNorm also returns the
  params with new statistics, as ``LocalSpec.ce_loss``)."""
  def loss(params, batch, key=None, context=()):
    logits, new = spec.forward(params, batch)
    value = softmax_cross_entropy(logits, batch.y, batch.mask)
    if align_lambda > 0:
      teacher = jax.lax.stop_gradient(spec.apply(context, batch.x)) / temperature
      log_p_g = jax.nn.log_softmax(teacher)
      kl = jnp.sum(jnp.exp(log_p_g) * (log_p_g - jax.nn.log_softmax(logits / temperature)), -1)
      n = jnp.maximum(jnp.sum(batch.mask), 1)
      value = value + align_lambda * temperature ** 2 * jnp.sum(jnp.where(batch.mask, kl, 0.0)) / n
    return value if spec.state_mask is None else (value, new)
  return loss


def accounting(costs: flops.BlockCosts, cut, examples, *, teacher: bool,
               refresh_client_side: bool, u_shaped: bool = False,
               client_side_upload: bool = True, feature_teacher: bool = False) -> dict:
  """Per-client, per-round communication and compute figures (module docstring);
  ``examples`` = 1 gives the per-example rates. ``u_shaped``: ``cut`` is
  already :func:`u_cut`-normalised; below ``L`` the head (last block) runs on
  the client and its input crosses the link twice more (the server's output
  forward, its gradient backward). ``client_side_upload=False``: the client
  side is never uploaded. ``feature_teacher``: one more client-side forward up
  to the cut (the round-start model, :func:`feature_alignment_loss`)."""
  d = 1.0 if teacher else 0.0
  fwd = jnp.asarray(flops.prefix(costs.forward), jnp.float32)
  acts = jnp.asarray(list(costs.inputs) + [0], jnp.float32)
  params = jnp.asarray(flops.prefix(costs.params), jnp.float32)
  c_k, s_k, a_k, p_k = fwd[cut], fwd[-1] - fwd[cut], acts[cut], params[cut]
  a_back = jnp.float32(0.0)
  if u_shaped:
    last = len(costs.forward) - 1
    split = cut < last + 1                          # a server part exists
    head_f = jnp.where(split, fwd[-1] - fwd[last], 0.0)
    c_k, s_k = c_k + head_f, s_k - head_f
    p_k = p_k + jnp.where(split, params[-1] - params[last], 0.0)
    a_back = jnp.where(split, acts[last], 0.0)
  extra = fwd[cut] if feature_teacher else 0.0
  return {"client_flops": examples * ((3 + d) * c_k + extra),
          "server_flops": examples * (3 + d) * s_k,
          "act_uplink_bytes": 4 * examples * (a_k * (1 + d) + a_back),
          "act_downlink_bytes": 4 * examples * (a_k + a_back * (1 + d)),
          "model_up_bytes": 4 * p_k * (1.0 if client_side_upload else 0.0),
          "model_down_bytes": 4 * p_k * (1.0 if (teacher or refresh_client_side) else 0.0),
          "cut": jnp.asarray(cut).astype(jnp.float32)}


def with_totals(acct: dict) -> dict:
  """Adds the engine's communication keys: ``uplink_bytes`` / ``downlink_bytes``
  (activations + model) and ``uplink_values`` / ``downlink_values`` (bytes / 4)."""
  up = acct["act_uplink_bytes"] + acct["model_up_bytes"]
  down = acct["act_downlink_bytes"] + acct["model_down_bytes"]
  return {**acct, "uplink_bytes": up, "downlink_bytes": down, "uplink_values": up / 4,
          "downlink_values": down / 4}


def split_learning(*, spec, params, name: str, budgets, assignment: str = "round_robin",
                   shared_cut: bool = False, personal: str = "client_side",
                   align_lambda: float = 0.0, temperature: float = 1.0,
                   eval_server_side: str = "personal", aggregate_client_side: bool = True,
                   server_side: str = "shared", u_shaped: bool = False,
                   alignment: str = "logit_kl") -> Algorithm:
  """Split federated learning with per-client or shared cuts.

  Args:
    spec: the :class:`~fedjax_pfl.core.local.LocalSpec`.
    params: the initial params as returned by ``model.init`` (block order).
    name: algorithm name.
    budgets: compute budgets; ``shared_cut`` uses the smallest for everyone.
    assignment: budget assignment (``round_robin`` / ``random``: drawn from
      ``init``'s key).
    shared_cut: one cut for all clients (the weakest client's).
    personal: which blocks stay with the client: ``"client_side"`` (blocks
      before the cut), ``"head"`` (the last block) or ``"none"``.
    align_lambda, temperature: the alignment term.
    eval_server_side, aggregate_client_side, server_side, u_shaped, alignment:
      see :class:`FlexPSFLConfig` (``server_side="per_client"`` needs
      ``personal="client_side"``).

  Returns:
    The :class:`Algorithm`. Server state: the global params; client state:
    :class:`SplitClient`; upload: the full trained model.

  The block costs need the per-sample input shape, which ``LocalSpec`` does not
  carry: they are computed (once per shape, cached) when the local program is
  traced, from the resident data's ``x.shape[1:]``.
  """
  if personal not in PERSONAL_MODES:
    raise ValueError(f"personal={personal!r}; allowed: {PERSONAL_MODES}")
  if server_side == "per_client" and personal != "client_side":
    raise ValueError(f"server_side={server_side!r} with personal={personal!r}; "
                     "allowed: personal=client_side")
  names = layer_names(params)
  last = len(names) - 1
  budgets = parse_budgets(budgets)
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  feature = alignment == "feature" and align_lambda > 0
  teacher = alignment == "logit_kl" and align_lambda > 0
  if alignment == "feature":
    inner = spec.program(feature_alignment_loss(spec, names, align_lambda))
  else:
    inner = spec.program(alignment_loss(spec, align_lambda if teacher else 0.0, temperature))

  @functools.lru_cache(maxsize=None)
  def costs_for(input_shape):
    return flops.block_costs(spec.apply, {n: shapes[n] for n in names}, input_shape, names)

  def personal_mask(cut):
    """Per block: True where the client's own weights are used."""
    if personal == "client_side":
      return {n: client_block(cut, j, last, u_shaped) for j, n in enumerate(names)}
    return {n: jnp.asarray(personal == "head" and j == last) for j, n in enumerate(names)}

  def merge(own, global_params, cut):
    if personal == "none":
      return global_params
    mask = personal_mask(cut)
    return {n: jax.tree.map(lambda a, b, m=mask[n]: jnp.where(m, a, b), own[n], global_params[n])
            for n in names}

  def init_program(inputs, data, key):
    own, global_params, budget = inputs
    costs = costs_for(tuple(data.x.shape[1:]))
    cut = (jnp.int32(flops.select_cut(costs, min(budgets))) if shared_cut
           else flops.cut_traced(costs, budget))
    cut = u_cut(cut, last + 1) if u_shaped else cut
    rates = accounting(costs, cut, jnp.float32(1.0), teacher=teacher,
                       refresh_client_side=personal != "client_side", u_shaped=u_shaped,
                       client_side_upload=aggregate_client_side, feature_teacher=feature)
    params_start = own if server_side == "per_client" else merge(own, global_params, cut)
    context = (params_start, cut) if alignment == "feature" else global_params
    start = LocalInput(params_start, context)
    return inner.init(start, data, key), cut, rates

  def finish(carry):
    state, cut, rates = carry
    trained, metrics = inner.finish(state)
    acct = {k: v if k in PER_ROUND else v * metrics["train_examples"] for k, v in rates.items()}
    return (trained, cut, with_totals(acct)), metrics

  program = LocalProgram(init_program, lambda c, t, d: (inner.step(c[0], t, d),) + c[1:],
                         finish, inner.num_steps, inner.steps_per_epoch, inner.batch_size)

  def init(params0, num_clients, *, key=None):
    if assignment == "random":
      if key is None:
        raise ValueError(f"{name}: init with assignment='random' needs key=")
      r = jax.random.choice(key, jnp.asarray(budgets, jnp.float32), (num_clients,))
    else:
      r = np.asarray([budgets[i % len(budgets)] for i in range(num_clients)])
    own = () if personal == "none" else params0
    clients = cohort.stack_clients(SplitClient(own, jnp.zeros(()), jnp.zeros((), jnp.int32)),
                                   num_clients)
    return params0, clients._replace(budget=jnp.asarray(r, jnp.float32))

  def broadcast(server, client: SplitClient, *, ctx=None):
    return (client.params, server, client.budget), ()

  def finalize(server, client: SplitClient, trained, extra, *, ctx=None):
    params, cut, acct = trained
    own = () if personal == "none" else params
    upload = params if aggregate_client_side else (params, cut)
    return upload, SplitClient(own, client.budget, cut), acct

  def aggregate(server, uploads, weights, *, ctx=None):
    if aggregate_client_side:
      return weighted_mean(uploads, weights), {}
    return server_side_mean(server, *uploads, weights, names, u_shaped=u_shaped), {}

  def personalize(server, client: SplitClient):
    if personal == "client_side" and eval_server_side == "personal":
      return client.params
    return merge(client.params, server, client.cut)

  return Algorithm(name, init, broadcast, program, finalize, aggregate, personalize)


def _build(cfg: FlexPSFLConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  return split_learning(spec=spec, params=params, name="flexp_sfl", budgets=cfg.budgets,
                        assignment=cfg.assignment, personal="client_side",
                        align_lambda=cfg.align_lambda, temperature=cfg.temperature,
                        eval_server_side=cfg.eval_server_side,
                        aggregate_client_side=cfg.aggregate_client_side,
                        server_side=cfg.server_side, u_shaped=cfg.u_shaped,
                        alignment=cfg.alignment)


SPECS = {"flexp_sfl": AlgorithmSpec(
    FlexPSFLConfig, _build,
    "FlexP-SFL (Yuan et al. 2025; working definition): per-client cuts, alignment")}
ALIASES = {"flexpsfl": "flexp_sfl", "flexp": "flexp_sfl"}
