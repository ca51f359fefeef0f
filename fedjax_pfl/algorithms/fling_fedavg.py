"""FedAvg as run in Fling (``base_group``): BN running statistics stay local.

McMahan, Moore, Ramage, Hampson, Aguera y Arcas. "Communication-Efficient
Learning of Deep Networks from Decentralized Data." AISTATS 2017,
arXiv:1602.05629. Protocol of the FedPURIN/FedCAC baselines (spec §1.2, §3.5;
Fling ``include_non_param=False``).

Round t, sampled client i: start from the global model with the client's OWN
BN running statistics (``θ^0``'s until it first trains); E epochs of SGD;
upload the trainable leaves; ``θ̄ = Σ n_i θ_i / Σ n_i`` over them. Running
statistics are per-client state and are never aggregated (plain ``fedavg``
averages them, FL-bench's ``buffers: global``).

Evaluation "before aggregation" (Fling's ``test_place``): the client's model
right after its local training, i.e. the global model plus E local epochs
(``eval_model="trained"``); ``"next"`` evaluates global + own statistics.
Communication: uplink = downlink = the trainable values (4 bytes each).

:func:`fling_fedavg` is also the builder of FedBN (BN parameters kept local
too), pFedSD (a distillation loss whose teacher is the stored model) and
Separate (everything local, nothing sent).

Degenerate equivalence: for a model without BatchNorm, ``fedavg_bn`` trains
exactly like ``fedavg`` (same server model round for round); only the
evaluated model differs (trained vs global).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms import _critical
from fedjax_pfl.algorithms._compose import Partition
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalInput, LocalProgram
from fedjax_pfl.ops.aggregation import weighted_mean
from fedjax_pfl.types import Params

EVAL_MODELS = ("trained", "next")


def check_eval_model(algo: str, value: str) -> None:
  if value not in EVAL_MODELS:
    raise ValueError(f"{algo}.eval_model={value!r}; allowed: {list(EVAL_MODELS)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvgBNConfig:
  """``fedavg_bn`` options.

  Attributes:
    eval_model: ``"trained"`` (before aggregation) or ``"next"``.
  """
  eval_model: str = "trained"

  def validate(self) -> None:
    check_eval_model("fedavg_bn", self.eval_model)


class FlingClient(NamedTuple):
  """Client state (stacked ``[N, ...]``): the last post-training model
  (holding the client's own local leaves) and the rounds trained so far."""
  trained: Params
  rounds: jax.Array


def complement(part: Partition) -> Partition:
  """The leaves ``part`` does not select."""
  return Partition(part.treedef, tuple(not f for f in part.flags))


def fling_fedavg(*, name: str, local: LocalProgram, keep: Partition, num_shared: int,
                 eval_model: str = "trained", teacher: bool = False) -> Algorithm:
  """FedAvg over the leaves not in ``keep``; ``keep`` leaves are per client.

  Args:
    name: algorithm name.
    local: the local program.
    keep: the leaves that stay local (running statistics; FedBN: all BN).
    num_shared: entries of the shared leaves (communication per direction).
    eval_model: ``"trained"`` or ``"next"``.
    teacher: hand ``LocalInput(params, (last trained model, has_trained))``
      to ``local`` (pFedSD's self-distillation teacher).

  Returns:
    The :class:`Algorithm`. Server state: the params (``keep`` leaves unused).
    Client state: :class:`FlingClient`. Upload: tuple of shared leaves.
  """
  comm = {k: jnp.float32(v) for k, v in (
      ("uplink_values", num_shared), ("downlink_values", num_shared),
      ("uplink_bytes", 4 * num_shared), ("downlink_bytes", 4 * num_shared))}

  def init(params, num_clients, *, key=None):
    client = FlingClient(params, jnp.zeros((), jnp.int32))
    return params, cohort.stack_clients(client, num_clients)

  def start(server, client):
    return keep.replace(server, keep.select(client.trained))

  def broadcast(server, client, *, ctx=None):
    params = start(server, client)
    if teacher:
      return LocalInput(params, (client.trained, client.rounds > 0)), ()
    return params, ()

  def finalize(server, client, trained, extra, *, ctx=None):
    return keep.rest(trained), FlingClient(trained, client.rounds + 1), dict(comm)

  def aggregate(server, uploads, weights, *, ctx=None):
    return keep.merge(keep.select(server), weighted_mean(uploads, weights)), {}

  def personalize(server, client):
    return start(server, client) if eval_model == "next" else client.trained

  return Algorithm(name, init, broadcast, local, finalize, aggregate, personalize)


def state_partition(params: Params, state_mask) -> Partition:
  """The BN running-statistics leaves (none for stateless models)."""
  return complement(_critical.leaf_partition(params, state_mask, exclude_bn=False))


def fedavg_bn(config: FedAvgBNConfig, *, spec, params) -> Algorithm:
  """Builds ``fedavg_bn`` from a LocalSpec and the initial params."""
  config.validate()
  keep = state_partition(params, spec.state_mask)
  shared = _critical.num_entries(complement(keep), params)
  return fling_fedavg(name="fedavg_bn", local=spec.program(), keep=keep, num_shared=shared,
                      eval_model=config.eval_model)


SPECS = {"fedavg_bn": AlgorithmSpec(
    FedAvgBNConfig, fedavg_bn,
    "FedAvg with local BN statistics, evaluated after local training (Fling base_group)")}
ALIASES = {"fling_fedavg": "fedavg_bn"}
