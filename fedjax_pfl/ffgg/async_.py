"""Asynchronous FFGG as an event-driven simulation (Mishchenko et al., spec
reference-protocols §3; the Asynchronous notebook of
``Rustem-Islamov/FL_representations``).

Each of M clients repeatedly (1) reads the server's current model, (2)
computes for a random duration (mean ``delays[m]``; heterogeneous when the
means differ), (3) sends one gradient, which the server applies ON ARRIVAL:
``theta <- theta - lr g_m(theta_read)``; the client then reads the new model
and starts again. The arrival order depends only on the durations, so it is
drawn on the host (:func:`arrival_order`) and the model updates run as one
``lax.scan`` over events; the notebook gets the same scheme from Ray's
wall-clock timings.

Methods (:func:`async_run`, on a :class:`~.instances.Gram` instance):

* ``"ffgg"``: asynchronous FFGG with exact inner solves (the notebook's
  ``exact_comp=True``): ``g_m = grad F_m(x) = Q_m x - r_m``; reported metric
  ``||grad F(x)||`` with F's uniform weights ``1/M``.
* ``"joint"``: asynchronous SGD on one joint model ``theta = (x, y)`` (y shared):
  ``g_m = grad f_m(theta) = K_m theta - k_m``; metric ``||1/M sum_m grad
  f_m(theta)||``, the gradient of the joint objective.

With heterogeneous delays fast clients send more gradients, so the iteration
is pulled to the rate-weighted stationary point ``sum_m pi_m g_m = 0``
instead of the uniform one: a heterogeneity bias. On an overpersonalized
instance every ``grad F_m`` vanishes at the shared ``x*``, so asynchronous
FFGG has no such bias, while the joint model (no personal y) keeps it.
"""

import heapq

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_pfl.ffgg.instances import Gram

METHODS = ("ffgg", "joint")


def arrival_order(delays, events: int, seed: int = 0, jitter: str = "exponential"):
  """Which client's gradient arrives at each event, and its staleness.

  Args:
    delays: ``[M]`` mean computation time per client (> 0).
    events: number of arrivals to simulate.
    seed: seed of the durations.
    jitter: ``"exponential"`` (durations ``delays[m] * Exp(1)``) or ``"fixed"``.

  Returns:
    ``(order [events] int32, staleness [events] int32)``: ``staleness[t]`` =
    server updates applied since the arriving client read its model.

  Raises:
    ValueError: non-positive delays or an unknown ``jitter``.
  """
  delays = np.asarray(delays, np.float64)
  if np.any(delays <= 0):
    raise ValueError(f"delays={delays.min()}; allowed: > 0")
  if jitter not in ("exponential", "fixed"):
    raise ValueError(f"jitter={jitter!r}; allowed: exponential, fixed")
  rng = np.random.default_rng(seed)
  draw = (lambda m: delays[m] * rng.exponential()) if jitter == "exponential" else (
      lambda m: delays[m])
  heap = [(draw(m), m) for m in range(len(delays))]
  heapq.heapify(heap)
  read = np.zeros(len(delays), np.int64)
  order, stale = np.empty(events, np.int32), np.empty(events, np.int32)
  for t in range(events):
    now, m = heapq.heappop(heap)
    order[t], stale[t] = m, t - read[m]
    read[m] = t + 1
    heapq.heappush(heap, (now + draw(m), m))
  return order, stale


def async_run(g: Gram, order, *, lr: float, method: str = "ffgg", record_every: int = 1):
  """Applies one gradient per event in ``order`` (module docstring), from 0.

  Args:
    g: the instance.
    order: ``[T]`` client ids (:func:`arrival_order`); ``T`` a multiple of
      ``record_every``.
    lr: server step size.
    method: ``"ffgg"`` or ``"joint"``.
    record_every: events between two recorded metrics.

  Returns:
    ``(theta_T, norms [T / record_every + 1])``; ``theta`` is ``x [dx]`` for
    ``"ffgg"`` and ``(x, y) [dx + dy]`` for ``"joint"``.

  Raises:
    ValueError: unknown method or ``T`` not a multiple of ``record_every``.
  """
  if method not in METHODS:
    raise ValueError(f"method={method!r}; allowed: {METHODS}")
  order = jnp.asarray(order, jnp.int32)
  if order.shape[0] % record_every:
    raise ValueError(f"events={order.shape[0]}; allowed: a multiple of "
                     f"record_every={record_every}")
  mat, vec = (g.Q, g.r) if method == "ffgg" else (g.K, g.k)
  return _run(mat, vec, order.reshape(-1, record_every), jnp.asarray(lr, mat.dtype))


def sync_run(g: Gram, rounds: int, *, lr: float, method: str = "ffgg"):
  """Synchronous reference: every round applies ``lr * mean_m g_m(theta)``
  (all ``M`` clients at the same model). Returns ``(theta_T, norms [rounds + 1])``."""
  if method not in METHODS:
    raise ValueError(f"method={method!r}; allowed: {METHODS}")
  mat, vec = (g.Q, g.r) if method == "ffgg" else (g.K, g.k)
  mean_mat, mean_vec = mat.mean(0), vec.mean(0)

  def step(theta, _):
    theta = theta - lr * (mean_mat @ theta - mean_vec)
    return theta, jnp.linalg.norm(mean_mat @ theta - mean_vec)
  theta0 = jnp.zeros(vec.shape[1], vec.dtype)
  theta, norms = jax.lax.scan(step, theta0, None, length=rounds)
  return theta, jnp.concatenate([jnp.linalg.norm(mean_vec)[None], norms])


@jax.jit
def _run(mat, vec, order, lr):
  mean_mat, mean_vec = mat.mean(0), vec.mean(0)
  metric = lambda theta: jnp.linalg.norm(mean_mat @ theta - mean_vec)

  def event(carry, m):
    theta, read = carry
    theta = theta - lr * (mat[m] @ read[m] - vec[m])
    return (theta, read.at[m].set(theta)), None

  def chunk(carry, ids):
    carry, _ = jax.lax.scan(event, carry, ids)
    return carry, metric(carry[0])

  theta0 = jnp.zeros(vec.shape[1], vec.dtype)
  init = (theta0, jnp.zeros_like(vec))
  (theta, _), norms = jax.lax.scan(chunk, init, order)
  return theta, jnp.concatenate([metric(theta0)[None], norms])


def delay_profile(num_clients: int, spread: float) -> np.ndarray:
  """Mean delays ``geomspace(1, spread, M)``: client M-1 is ``spread`` times
  slower than client 0 (``spread = 1``: homogeneous)."""
  return np.geomspace(1.0, spread, num_clients)


__all__ = ["METHODS", "arrival_order", "async_run", "delay_profile", "sync_run"]
