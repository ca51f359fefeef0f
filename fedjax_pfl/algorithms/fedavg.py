"""FedAvg.

McMahan, Moore, Ramage, Hampson, Aguera y Arcas. "Communication-Efficient
Learning of Deep Networks from Decentralized Data." AISTATS 2017,
arXiv:1602.05629.

Sampled clients run E epochs of SGD from the global model; the server takes the
train-size-weighted mean of their models. Evaluation: the global model on every
client's test set (FL-bench's "before fine-tuning" number).
"""

import dataclasses

from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram
from fedjax_pfl.ops.aggregation import weighted_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvgConfig:
  """FedAvg has no hyperparameters beyond the shared training config."""

  def validate(self) -> None:
    pass


def fedavg(*, local: LocalProgram) -> Algorithm:
  """Builds FedAvg. Server state: the global params; no client state."""

  def init(params, num_clients, *, key=None):
    del num_clients
    return params, ()

  def broadcast(server, client, *, ctx=None):
    return server, ()

  def finalize(server, client, trained, extra, *, ctx=None):
    return trained, client, {}

  def aggregate(server, uploads, weights, *, ctx=None):
    return weighted_mean(uploads, weights), {}

  def personalize(server, client):
    return server

  return Algorithm("fedavg", init, broadcast, local, finalize, aggregate, personalize)


SPECS = {"fedavg": AlgorithmSpec(FedAvgConfig,
                                 lambda cfg, *, spec, params: fedavg(local=spec.program()),
                                 "FedAvg (McMahan et al. 2017)")}
