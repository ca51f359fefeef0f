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

Degenerate equivalence: an empty personal set (a regex matching no parameter
path) is FedAvg round for round.

:func:`fedper` is also the builder of FedRep and LG-FedAvg, which differ only
in the personal set and the local program.
"""

import dataclasses
import re

from fedjax_pfl.algorithms._compose import Partition, partition
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core import cohort
from fedjax_pfl.core.algorithm import Algorithm
from fedjax_pfl.core.local import LocalProgram
from fedjax_pfl.models.base import HEAD_REGEX
from fedjax_pfl.ops.aggregation import weighted_mean

PERSONAL = "personal"
CLASSIFIER = HEAD_REGEX


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
  """
  personal_layers: str = CLASSIFIER

  def validate(self) -> None:
    check_regex("fedper", "personal_layers", self.personal_layers)


def fedper(*, local: LocalProgram, personal: Partition, name: str = "fedper") -> Algorithm:
  """Builds a personal-layers algorithm (FedPer, FedRep, LG-FedAvg).

  Args:
    local: the local program, trained from the merged (shared + own personal)
      params; returns the full trained params.
    personal: which leaves are personal.
    name: algorithm name.

  Returns:
    The :class:`Algorithm`. Server state: global params (personal leaves
    unused). Client state: tuple of the client's personal leaves ``[N, ...]``.
    Upload: tuple of the shared leaves.
  """

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


def _build(cfg: FedPerConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  split = partition(params, {cfg.personal_layers: PERSONAL}, PERSONAL)
  return fedper(local=spec.program(), personal=split)


SPECS = {"fedper": AlgorithmSpec(FedPerConfig, _build,
                                 "FedPer (Arivazhagan et al. 2019): personal classifier")}
