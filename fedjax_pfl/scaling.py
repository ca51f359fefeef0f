"""Memory needed per device for N clients: a calculator (``fedjax-pfl memory``).

The resident state is measured, not guessed: the algorithm's ``init`` is run
under ``jax.eval_shape`` for the real model, giving the exact bytes of the
server state and of the stacked ``[N, ...]`` client state. The stacked client
state is split over the ``clients`` mesh axis when N is a multiple of the
device count (else replicated); server state is replicated; the dataset is
replicated (pooled) or, with ``data_placement="by_client"``, client-major and
split like the client state (each client padded to the largest client).
The per-client working set of local training (params, gradients, optimizer
state, activations of one batch) comes from XLA's memory analysis of one
compiled SGD step.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# name -> (input shape, classes, pooled examples)
DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int, int]] = {
    "digits": ((8, 8, 1), 10, 1_797),
    "fashion_mnist": ((28, 28, 1), 10, 70_000),
    "mnist": ((28, 28, 1), 10, 70_000),
    "cifar10": ((32, 32, 3), 10, 60_000),
    "cifar100": ((32, 32, 3), 100, 60_000),
    "emnist/byclass": ((28, 28, 1), 62, 814_255),
    "svhn_cropped": ((32, 32, 3), 10, 99_289),
}


def _bytes(tree: Any) -> int:
  return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def check_memory_args(*, algorithm: str, dataset: str, num_clients: int, devices: int,
                      participation: float, batch_size: int, model: str,
                      max_client_examples: int | None) -> None:
  """Checks the ``memory`` command's values (before anything is traced).

  Raises:
    ConfigError: ``--<flag>=<value>; allowed: <range>`` for the first bad value.
  """
  from fedjax_pfl import algorithms
  from fedjax_pfl.errors import ConfigError
  from fedjax_pfl.models import MODELS

  def check(ok: bool, flag: str, value: Any, allowed: str) -> None:
    if not ok:
      raise ConfigError(f"--{flag}={value!r} is invalid; allowed: {allowed}")
  algorithms.canonical_name(algorithm)
  check(dataset in DATASET_SHAPES, "dataset", dataset, str(sorted(DATASET_SHAPES)))
  check(num_clients >= 1, "clients", num_clients, ">= 1")
  check(devices >= 1, "devices", devices, ">= 1")
  check(math.isfinite(participation) and 0 < participation <= 1, "participation",
        participation, "(0, 1]")
  check(batch_size >= 1, "batch-size", batch_size, ">= 1")
  check(model in ("auto", *MODELS), "model", model, str(["auto", *sorted(MODELS)]))
  check(max_client_examples is None or max_client_examples >= 1, "max-client-examples",
        max_client_examples, "None or >= 1")


def memory_estimate(*, algorithm: str, dataset: str, num_clients: int, devices: int,
                    participation: float = 0.1, batch_size: int = 32, model: str = "auto",
                    examples: int | None = None, algo_config: Any = None,
                    data_placement: str = "replicated",
                    max_client_examples: int | None = None) -> dict[str, Any]:
  """Bytes per device for a run (see the module docstring).

  ``max_client_examples`` (train + test of the largest client) sizes the
  client-major layout; default: an even split of the pooled examples.

  Returns:
    A dict with ``params``, ``server_bytes``, ``client_state_bytes`` (all N),
    ``client_state_per_device``, ``data_bytes`` (resident dataset, all
    devices), ``data_per_device``, ``step_working_bytes`` (one client),
    ``cohort_per_device`` and ``total_per_device`` (bytes).

  Raises:
    ValueError: unknown dataset/algorithm, non-positive counts or sizes, a
      participation outside (0, 1] (:func:`check_memory_args`).
  """
  check_memory_args(algorithm=algorithm, dataset=dataset, num_clients=num_clients,
                    devices=devices, participation=participation, batch_size=batch_size,
                    model=model, max_client_examples=max_client_examples)
  from fedjax_pfl import algorithms
  from fedjax_pfl.core.local import LocalSpec, make_optimizer
  from fedjax_pfl.models import get_model
  if dataset not in DATASET_SHAPES:
    raise ValueError(f"dataset={dataset!r}; allowed: {sorted(DATASET_SHAPES)}")
  if num_clients < 1 or devices < 1:
    raise ValueError(f"num_clients={num_clients}, devices={devices}; allowed: >= 1")
  if data_placement not in ("replicated", "by_client"):
    raise ValueError(f"data_placement={data_placement!r}; allowed: replicated, by_client")
  shape, classes, pooled = DATASET_SHAPES[dataset]
  examples = examples or pooled
  net = get_model(model, shape, classes)
  params = jax.eval_shape(net.init, jax.random.key(0))
  name = algorithms.canonical_name(algorithm)
  cfg = algo_config or algorithms.REGISTRY[name].config_cls()
  spec = LocalSpec(net.apply, make_optimizer(0.01, 0.9), 1, batch_size, 64)
  concrete = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  alg = algorithms.build(name, cfg, spec=spec, params=concrete)
  server, clients = jax.eval_shape(lambda p: alg.init(p, num_clients), params)
  client_bytes = _bytes(clients)
  sharded = num_clients % devices == 0
  per_device_clients = client_bytes // devices if sharded else client_bytes
  example_bytes = int(np.prod(shape)) * 4 + 4  # float32 pixels + int32 label
  if data_placement == "replicated":
    data_bytes = examples * example_bytes + examples * 4  # + index tables
    data_per_device = data_bytes
  else:
    m = max_client_examples or math.ceil(examples / num_clients)
    data_bytes = num_clients * m * (example_bytes + 4)
    data_per_device = data_bytes // devices if sharded else data_bytes
  x = jax.ShapeDtypeStruct((batch_size,) + shape, jnp.float32)

  def step(p, xb):
    return jax.grad(lambda q: jnp.sum(net.apply(q, xb)))(p)
  analysis = jax.jit(step).lower(params, x).compile().memory_analysis()
  working = int(getattr(analysis, "temp_size_in_bytes", 0)) + 4 * _bytes(params)
  cohort = max(1, math.floor(participation * num_clients))
  cohort_per_device = math.ceil(cohort / devices)
  total = (_bytes(server) + per_device_clients + data_per_device + cohort_per_device * working)
  return {
      "algorithm": name, "dataset": dataset, "model": net.name,
      "params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(params))),
      "num_clients": num_clients, "devices": devices, "client_state_sharded": sharded,
      "server_bytes": _bytes(server), "client_state_bytes": client_bytes,
      "client_state_per_device": per_device_clients, "data_placement": data_placement,
      "data_bytes": data_bytes, "data_per_device": data_per_device,
      "step_working_bytes": working, "cohort_per_device": cohort_per_device,
      "total_per_device": total,
  }


def format_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return str(n)
