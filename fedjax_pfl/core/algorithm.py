"""The algorithm contract: six pure slots over one round skeleton.

An algorithm is a :class:`Algorithm` of pure functions, built by a keyword-only
builder that closes over its hyperparameters (the optax pattern). Per-client
slots are written for ONE client; :mod:`fedjax_pfl.core.cohort` maps them.

Round ``t`` (driver: :mod:`fedjax_pfl.core.rounds`)::

  for each sampled client i (mapped):
    train_params, extra = broadcast(server, client_i)
    trained, train_metrics = local_train (the LocalProgram) from train_params
    upload_i, client_i, m_i = finalize(server, client_i, trained, extra)
  server, agg_metrics = aggregate(server, uploads [C], weights [C])

``weights`` are the clients' train-set sizes, 0 for cohort padding. Evaluation
uses ``personalize(server, client_i)``: the model client i is judged by,
applied with ``eval_apply(personalized, x) -> logits`` when the algorithm sets
it (e.g. APFL's logit mixture), else with the model's ``apply``.
"""

from typing import Callable, NamedTuple, Protocol

import jax

from fedjax_pfl.core.local import LocalProgram
from fedjax_pfl.types import Metrics, Params, PyTree


class InitFn(Protocol):
  def __call__(self, params: Params, num_clients: int) -> tuple[PyTree, PyTree]:
    """``(initial params, N) -> (server_state, stacked_client_state [N])``."""


class BroadcastFn(Protocol):
  def __call__(self, server: PyTree, client: PyTree) -> tuple[Params, PyTree]:
    """``-> (params to train locally, extra passed to finalize)``."""


class FinalizeFn(Protocol):
  def __call__(self, server: PyTree, client: PyTree, trained: Params,
               extra: PyTree) -> tuple[PyTree, PyTree, Metrics]:
    """``-> (upload, new client state, per-client metrics)``."""


class AggregateFn(Protocol):
  def __call__(self, server: PyTree, uploads: PyTree,
               weights: jax.Array) -> tuple[PyTree, Metrics]:
    """``uploads`` stacked ``[C]``; ``weights [C]`` float32 (0 = padding)."""


class PersonalizeFn(Protocol):
  def __call__(self, server: PyTree, client: PyTree) -> Params:
    """The parameters client ``i`` is evaluated with."""


class Algorithm(NamedTuple):
  """A federated algorithm as pure slots (see the module docstring)."""
  name: str
  init: InitFn
  broadcast: BroadcastFn
  local_train: LocalProgram
  finalize: FinalizeFn
  aggregate: AggregateFn
  personalize: PersonalizeFn
  eval_apply: Callable[..., jax.Array] | None = None
