"""FedPer: federated learning with personalization layers.

Arivazhagan, Aggarwal, Singh, Choudhary. "Federated Learning with
Personalization Layers." arXiv:1912.00818, 2019. Reference: FL-bench
``src/{server,client}/fedper.py``.

Parameters are split once, from path regexes, into personal ``phi_i`` (default:
the ``classifier`` layer) and shared ``theta``. Round t, sampled client i:

* start from ``(theta^t, phi_i)`` (global shared part, own stored head);
* E epochs of joint SGD on cross-entropy (body and head together);
* upload only the shared part; keep the trained head as the new ``phi_i``;
* ``theta^{t+1} = sum_i n_i theta_i / sum_i n_i`` over the shared part.

Evaluation: global shared part + the client's own head (``phi_i = theta^0``
until the client is first sampled). The server's copy of the personal leaves
stays at ``theta^0`` (FL-bench averages it too but always overrides it).

Reference protocol (``unseen_personal="server_mean"``, FL-bench
``src/server/fedavg.py`` + ``src/client/fedper.py``): clients upload ALL
parameters and the server averages all of them, personal ones included; a
client with no stored personal part (never trained: it was never sampled)
trains from and is evaluated with that AVERAGE for its personal leaves instead
of ``theta^0``. The client state then carries a per-client ``trained`` flag.
The default ``"init"`` is the published algorithm.

Degenerate equivalence: an empty personal set (a regex matching no parameter
path) is FedAvg round for round.

:func:`fedper` is also the builder of FedRep and LG-FedAvg, which differ only
in the personal set and the local program.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp

from fedjax_pfl.algorithms._compose import Partition, partition
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram
from fedjax_pfl.models.base import HEAD_REGEX
from fedjax_pfl.ops.aggregation import weighted_mean

PERSONAL = "personal"
CLASSIFIER = HEAD_REGEX
UNSEEN_PERSONAL = ("init", "server_mean")


def check_unseen(algo: str, value: str) -> None:
  """Raises ValueError unless ``value`` is one of :data:`UNSEEN_PERSONAL`."""
  if value not in UNSEEN_PERSONAL:
    raise ValueError(f"{algo}.unseen_personal={value!r}; allowed: {list(UNSEEN_PERSONAL)}")


def own_or_mean(trained, own, mean):
  """``unseen_personal="server_mean"``: the client's own personal leaves once
  it has trained (``trained``: ``[]`` bool), else the server's average."""
  return jax.tree.map(lambda c, m: jnp.where(trained, c, m), own, mean)


def check_regex(algo: str, field: str, value: str) -> None:
  """Raises ValueError if ``value`` is not a valid regular expression."""
  try:
    re.compile(value)
  except re.error as e:
    raise ValueError(f"{algo}.{field}={value!r}; allowed: a Python regex ({e})") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedPerConfig:
  """FedPer hyperparameters.

  Attributes:
    personal_layers: regex over parameter paths (``"fc1/kernel"``); matching
      leaves are personal. Default: the classifier.
    unseen_personal: ``"init"`` (published: ``theta^0``'s personal leaves
      until a client first trains) or ``"server_mean"`` (FL-bench: the server
      averages all leaves and an untrained client uses that average).
  """
  personal_layers: str = CLASSIFIER
  unseen_personal: str = "init"

  def validate(self) -> None:
    check_regex("fedper", "personal_layers", self.personal_layers)
    check_unseen("fedper", self.unseen_personal)


def fedper(*, local: LocalProgram, personal: Partition, name: str = "fedper",
           unseen_personal: str = "init") -> Algorithm:
  """Builds a personal-layers algorithm (FedPer, FedRep, LG-FedAvg).

  Args:
    local: the local program, trained from the merged (shared + own personal)
      params; returns the full trained params.
    personal: which leaves are personal.
    name: algorithm name.
    unseen_personal: ``"init"`` or ``"server_mean"`` (module docstring).

  Returns:
    The :class:`Algorithm`. Server state: global params (personal leaves
    unused with ``"init"``; the cohort's average with ``"server_mean"``).
    Client state: tuple of the client's personal leaves ``[N, ...]``; with
    ``"server_mean"`` the pair ``(personal leaves, trained [N] bool)``.
    Upload: tuple of the shared leaves (``"server_mean"``: all params).
  """
  check_unseen(name, unseen_personal)
  if unseen_personal == "server_mean":
    return _fedper_server_mean(local=local, personal=personal, name=name)

  def init(params, num_clients, *, key=None):
    return params, cohort.stack_clients(personal.select(params), num_clients)

  def broadcast(server, client, *, ctx=None):
    return personal.replace(server, client), ()

  def finalize(server, client, trained, extra, *, ctx=None):
    return personal.rest(trained), personal.select(trained), {}

  def aggregate(server, uploads, weights, *, ctx=None):
    return personal.merge(personal.select(server), weighted_mean(uploads, weights)), {}

  def personalize(server, client):
    return personal.replace(server, client)

  return Algorithm(name, init, broadcast, local, finalize, aggregate, personalize)


def _fedper_server_mean(*, local: LocalProgram, personal: Partition, name: str) -> Algorithm:
  """FL-bench's variant (``unseen_personal="server_mean"``, module docstring)."""

  def own(server, client):
    leaves, trained = client
    return personal.replace(server, own_or_mean(trained, leaves, personal.select(server)))

  def init(params, num_clients, *, key=None):
    client = (personal.select(params), jnp.asarray(False))
    return params, cohort.stack_clients(client, num_clients)

  def broadcast(server, client, *, ctx=None):
    return own(server, client), ()

  def finalize(server, client, trained, extra, *, ctx=None):
    return trained, (personal.select(trained), jnp.asarray(True)), {}

  def aggregate(server, uploads, weights, *, ctx=None):
    return weighted_mean(uploads, weights), {}

  return Algorithm(name, init, broadcast, local, finalize, aggregate, own)


def _build(cfg: FedPerConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  split = partition(params, {cfg.personal_layers: PERSONAL}, PERSONAL)
  return fedper(local=spec.program(), personal=split, unseen_personal=cfg.unseen_personal)


SPECS = {"fedper": AlgorithmSpec(FedPerConfig, _build,
                                 "FedPer (Arivazhagan et al. 2019): personal classifier")}
