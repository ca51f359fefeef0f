"""Defining a new algorithm in one file: FedAvg with server momentum (FedAvgM).

Hsu, Qi, Brown. "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification." arXiv:1909.06335.

The server treats ``global - weighted_mean(uploads)`` as a pseudo-gradient and
applies optax SGD with momentum to it. To show the slots' context argument,
each sampled client also loses its upload with probability ``drop_prob``
(drawn from ``ctx.key``, which depends on the run's seed, the round and the
client id, never on the client's position in the cohort), and the server
reports the round index it aggregated (``ctx.round``) as ``aggregated_round``. Registering the spec makes it available
to the whole engine (CLI included, when this module is imported). Run:

  .venv/bin/python examples/new_algorithm.py
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedjax_pfl import algorithms, config, experiment
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.ops.aggregation import weighted_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedAvgMConfig:
  server_lr: float = 1.0
  server_momentum: float = 0.9
  drop_prob: float = 0.0

  def validate(self) -> None:
    if self.server_lr <= 0:
      raise ValueError(f"fedavgm.server_lr={self.server_lr}; allowed: > 0")
    if not 0 <= self.drop_prob < 1:
      raise ValueError(f"fedavgm.drop_prob={self.drop_prob}; allowed: [0, 1)")


def fedavgm(*, local, cfg: FedAvgMConfig) -> Algorithm:
  server_opt = optax.sgd(cfg.server_lr, momentum=cfg.server_momentum)

  def init(params, num_clients, *, key=None):
    return (params, server_opt.init(params)), ()

  def broadcast(server, client, *, ctx=None):
    return server[0], ()

  def finalize(server, client, trained, extra, *, ctx):
    dropped = jax.random.bernoulli(ctx.key, cfg.drop_prob)  # ctx: round, client_id, key
    return (trained, dropped), client, {"dropped": dropped.astype(jnp.float32)}

  def aggregate(server, uploads, weights, *, ctx):
    (trained, dropped), (params, opt_state) = uploads, server
    weights = jnp.where(dropped, 0.0, weights)
    mean = weighted_mean(trained, weights)
    mean = jax.tree.map(lambda m, p: jnp.where(jnp.sum(weights) > 0, m, p), mean, params)
    pseudo_grad = jax.tree.map(lambda g, m: g - m, params, mean)
    updates, opt_state = server_opt.update(pseudo_grad, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"aggregated_round": ctx.round}

  def personalize(server, client):
    return server[0]

  return Algorithm("fedavgm", init, broadcast, local, finalize, aggregate, personalize)


algorithms.REGISTRY["fedavgm"] = AlgorithmSpec(
    FedAvgMConfig, lambda cfg, *, spec, params: fedavgm(local=spec.program(), cfg=cfg),
    "FedAvg with server momentum (example)")


def main(workdir: str = "runs/example-fedavgm", rounds: int = 20) -> dict:
  cfg = config.ExperimentConfig(algorithm="fedavgm")
  cfg = config.apply_overrides(cfg, [f"train.rounds={rounds}", "train.participation=0.25",
                                     "fedavgm.server_momentum=0.5",
                                     "fedavgm.drop_prob=0.2"])
  summary = experiment.run(cfg, workdir, overwrite=True)  # a fresh run each time
  print(summary)
  return summary


if __name__ == "__main__":
  main()
