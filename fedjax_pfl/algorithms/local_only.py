"""Local-Only: every client trains a private model; nothing is shared.

As in FL-bench's ``local.py``: a client trains (E epochs) only in rounds where it
is sampled, starting from its own previous model (initially theta^0), and is
evaluated with its own model. Degenerate property: clients never mix, so each
client's model depends only on its own data and keys.
"""

import dataclasses

import jax.numpy as jnp

from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalOnlyConfig:
  """Local-Only has no hyperparameters beyond the shared training config."""

  def validate(self) -> None:
    pass


def local_only(*, local: LocalProgram) -> Algorithm:
  """Builds Local-Only. Server state: none; client state: params ``[N, ...]``."""

  def init(params, num_clients, *, key=None):
    return (), cohort.stack_clients(params, num_clients)

  def broadcast(server, client, *, ctx=None):
    return client, ()

  def finalize(server, client, trained, extra, *, ctx=None):
    zero = jnp.zeros((), jnp.float32)   # no communication at all
    return (), trained, {"downlink_values": zero, "downlink_bytes": zero}

  def aggregate(server, uploads, weights, *, ctx=None):
    return server, {}

  def personalize(server, client):
    return client

  return Algorithm("local", init, broadcast, local, finalize, aggregate, personalize)


SPECS = {"local": AlgorithmSpec(LocalOnlyConfig,
                                lambda cfg, *, spec, params: local_only(local=spec.program()),
                                "Local-Only: private models, no communication")}
ALIASES = {"local_only": "local", "localonly": "local"}
