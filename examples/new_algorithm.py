"""Defining a new algorithm in one file: FedAvg with server momentum (FedAvgM).

Hsu, Qi, Brown. "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification." arXiv:1909.06335.

The server treats ``global - weighted_mean(uploads)`` as a pseudo-gradient and
applies optax SGD with momentum to it. Registering the spec makes it available
to the whole engine (CLI included, when this module is imported). Run:

  .venv/bin/python examples/new_algorithm.py
"""

import dataclasses

import jax
import optax

from fedjax_pfl import algorithms, config, experiment
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.ops.aggregation import weighted_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvgMConfig:
  server_lr: float = 1.0
  server_momentum: float = 0.9

  def validate(self) -> None:
    if self.server_lr <= 0:
      raise ValueError(f"fedavgm.server_lr={self.server_lr}; allowed: > 0")


def fedavgm(*, local, cfg: FedAvgMConfig) -> Algorithm:
  server_opt = optax.sgd(cfg.server_lr, momentum=cfg.server_momentum)

  def init(params, num_clients):
    return (params, server_opt.init(params)), ()

  def broadcast(server, client):
    return server[0], ()

  def finalize(server, client, trained, extra):
    return trained, client, {}

  def aggregate(server, uploads, weights):
    params, opt_state = server
    pseudo_grad = jax.tree.map(lambda g, m: g - m, params, weighted_mean(uploads, weights))
    updates, opt_state = server_opt.update(pseudo_grad, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {}

  def personalize(server, client):
    return server[0]

  return Algorithm("fedavgm", init, broadcast, local, finalize, aggregate, personalize)


algorithms.REGISTRY["fedavgm"] = AlgorithmSpec(
    FedAvgMConfig, lambda cfg, *, spec, params: fedavgm(local=spec.program(), cfg=cfg),
    "FedAvg with server momentum (example)")


def main(workdir: str = "runs/example-fedavgm", rounds: int = 20) -> dict:
  cfg = config.ExperimentConfig(algorithm="fedavgm")
  cfg = config.apply_overrides(cfg, [f"train.rounds={rounds}", "train.participation=0.25",
                                     "fedavgm.server_momentum=0.5"])
  summary = experiment.run(cfg, workdir, overwrite=True)  # a fresh run each time
  print(summary)
  return summary


if __name__ == "__main__":
  main()
