"""The algorithm contract: six pure slots over one round skeleton.

An algorithm is a :class:`Algorithm` of pure functions, built by a keyword-only
builder that closes over its hyperparameters (the optax pattern). Per-client
slots are written for ONE client; :mod:`fedjax_pfl.core.backend` maps them.

Round ``t`` (driver: :func:`fedjax_pfl.core.rounds.round_fn`)::

  for each sampled client i (mapped):
    train_params, extra = broadcast(server, client_i, ctx=ClientContext(t, i, key_ti))
    trained, train_metrics = local_train (the LocalProgram) from train_params
    upload_i, client_i, m_i = finalize(server, client_i, trained, extra, ctx=...)
  (the new client states are written into the stacked [N] client state)
  server, agg_metrics[, clients] = aggregate(server, uploads [C], weights [C],
                                             ctx=ServerContext(t, ids, valid, key_t, clients))

``weights`` are the clients' train-set sizes, 0 for cohort padding. Evaluation
uses ``personalize(server, client_i)``: the model client i is judged by,
applied with ``eval_apply(personalized, x) -> logits`` when the algorithm sets
it (e.g. APFL's logit mixture), else with the model's ``apply``. An algorithm
whose evaluated model needs the client's own TRAIN data (pFedFDA's LDA head
from the current body's features) sets ``personalize_with_data(server,
client_i, train_data, *, ctx)`` instead: evaluation and fine-tuning then call
it (mapped over all clients like every per-client slot, on every backend) and
``personalize`` is unused there.

Context (optax's extra-arguments pattern): ``broadcast``, ``finalize`` and
``aggregate`` receive a keyword-only ``ctx`` with the round index, the client
id(s) and a key from the run's ``"algorithm"`` stream; slots that need none
accept and ignore it (``ctx=None``). ``init`` receives ``key=`` from the same
stream. ``aggregate`` sees the whole stacked client state (``ctx.clients``,
``[N, ...]``, sharded like the client state) and may return it changed as a
third output: per-client tables live in the client state, never in the server
state. :meth:`ServerContext.write` writes rows of the cohort.

Full-participation rounds: an algorithm may name static round indices
(``full_rounds``) in which every client trains; ``aggregate`` then also gets
the round's normally sampled cohort as ``ctx.sampled``.
"""

from typing import Callable, NamedTuple, Protocol

import jax

from fedjax_pfl.core import cohort
from fedjax_pfl.core.local import ClientData, LocalProgram
from fedjax_pfl.types import Metrics, Params, PyTree


class ClientContext(NamedTuple):
  """What a per-client slot knows about its call (all traced).

  Attributes:
    round: ``[]`` int32, the round index ``t`` (0 for the first round).
    client_id: ``[]`` int32, the client's id ``i`` in ``0..N-1`` (``N`` for
      cohort padding, whose outputs are dropped).
    key: typed PRNG key ``fold_in(fold_in(algorithm_stream, t), i)``: it depends
      on (seed, round, id), never on the cohort position.
  """
  round: jax.Array
  client_id: jax.Array
  key: jax.Array


class ServerContext(NamedTuple):
  """What ``aggregate`` knows about its call (all traced).

  Attributes:
    round: ``[]`` int32, the round index ``t``.
    client_ids: ``[C]`` int32 cohort ids (``N`` for padding).
    valid: ``[C]`` bool, False for padding.
    key: typed PRNG key ``fold_in(aggregate_stream, t)``.
    clients: the stacked ``[N, ...]`` client state after this round's
      ``finalize`` outputs were written.
    sampled: ``[C]`` bool, the clients of the round's normally sampled cohort:
      equal to ``valid`` except in a full-participation round
      (``Algorithm.full_rounds``), where the cohort is all ``N`` clients and
      ``sampled`` marks those the round would otherwise have had. None when
      a caller builds a context by hand (read it through :meth:`in_sample`).
  """
  round: jax.Array
  client_ids: jax.Array
  valid: jax.Array
  key: jax.Array
  clients: PyTree
  sampled: jax.Array | None = None

  def in_sample(self) -> jax.Array:
    """``[C]`` bool: ``sampled`` if given, else ``valid``."""
    return self.valid if self.sampled is None else self.sampled

  def write(self, rows: PyTree, *, clients: PyTree | None = None,
            where: jax.Array | None = None) -> PyTree:
    """``clients`` (default ``self.clients``) with the cohort's rows replaced by
    ``rows`` (stacked ``[C, ...]``, same structure); padding rows, and rows
    where ``where [C]`` (default ``self.valid``) is False, are dropped."""
    base = self.clients if clients is None else clients
    return cohort.scatter(base, self.client_ids, rows, self.valid if where is None else where)


class InitFn(Protocol):
  def __call__(self, params: Params, num_clients: int, *,
               key: jax.Array | None = None) -> tuple[PyTree, PyTree]:
    """``(initial params, N; key) -> (server_state, stacked_client_state [N])``."""


class BroadcastFn(Protocol):
  def __call__(self, server: PyTree, client: PyTree, *,
               ctx: ClientContext | None = None) -> tuple[Params, PyTree]:
    """``-> (params to train locally, extra passed to finalize)``."""


class FinalizeFn(Protocol):
  def __call__(self, server: PyTree, client: PyTree, trained: Params, extra: PyTree, *,
               ctx: ClientContext | None = None) -> tuple[PyTree, PyTree, Metrics]:
    """``-> (upload, new client state, per-client metrics)``."""


class AggregateFn(Protocol):
  def __call__(self, server: PyTree, uploads: PyTree, weights: jax.Array, *,
               ctx: ServerContext | None = None) -> tuple:
    """``uploads`` stacked ``[C]``; ``weights [C]`` float32 (0 = padding).

    Returns ``(server, metrics)`` or ``(server, metrics, clients)`` where
    ``clients`` replaces the stacked ``[N]`` client state (``ctx.clients``)."""


class PersonalizeFn(Protocol):
  def __call__(self, server: PyTree, client: PyTree) -> Params:
    """The parameters client ``i`` is evaluated with."""


class PersonalizeWithDataFn(Protocol):
  def __call__(self, server: PyTree, client: PyTree, train_data: ClientData, *,
               ctx: ClientContext) -> Params:
    """The parameters client ``i`` is evaluated with, computed from its own
    train data (``train_data``: its :class:`ClientData` train view; ``ctx``:
    the evaluated round ``t`` = rounds run so far, the client id and the key
    ``fold_in(fold_in(eval_stream, t), i)``)."""


class Algorithm(NamedTuple):
  """A federated algorithm as pure slots (see the module docstring).

  ``personalize_with_data`` (optional): replaces ``personalize`` in
  evaluation and fine-tuning when set (module docstring).

  ``full_rounds`` (static): round indices in which the cohort is ALL ``N``
  clients (FL-bench FLOCO's all-client round); ``aggregate`` sees the
  normally sampled cohort as ``ctx.sampled``. Every backend runs such a round
  as its own program with ``C = N``; the compiled round loop splits its scan
  there."""
  name: str
  init: InitFn
  broadcast: BroadcastFn
  local_train: LocalProgram
  finalize: FinalizeFn
  aggregate: AggregateFn
  personalize: PersonalizeFn
  eval_apply: Callable[..., jax.Array] | None = None
  personalize_with_data: PersonalizeWithDataFn | None = None
  full_rounds: tuple[int, ...] = ()
