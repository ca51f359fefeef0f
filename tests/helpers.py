"""Shared test fixtures: a tiny synthetic federated dataset and simulation builder."""

import dataclasses

import numpy as np

from fedjax_pfl import config as config_lib
from fedjax_pfl.core import backend
from fedjax_pfl.core.simulation import Simulation
from fedjax_pfl.data import FederatedData, pad_indices
from fedjax_pfl.experiment import algorithm_builder
from fedjax_pfl.models.base import from_flax
from fedjax_pfl.models.mlp import MLP


def tiny_data(num_clients=8, seed=0, sizes=None, num_classes=3, label_seed=None):
  """Synthetic federated data: 4x4x1 inputs, client-specific label skew.

  Client sizes vary (one client has a single train example, so its only batch
  is skipped); ``label_seed`` redraws labels of every client but client 0.
  """
  rng = np.random.default_rng(seed)
  sizes = sizes or [int(s) for s in rng.integers(6, 20, num_clients)]
  sizes[1] = 1 + 3  # 1 train example after the 3 test examples below
  train_lists, test_lists, xs, ys, start = [], [], [], [], 0
  for i, n in enumerate(sizes):
    x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
    y = (rng.integers(0, 2, n) + i) % num_classes
    if label_seed is not None and i != 0:
      y = np.random.default_rng(label_seed + i).integers(0, num_classes, n)
    x[np.arange(n), y, 0, 0] += 2.0
    xs.append(x)
    ys.append(y.astype(np.int32))
    ids = np.arange(start, start + n)
    test_lists.append(ids[:3])
    train_lists.append(ids[3:])
    start += n
  train_idx, train_counts = pad_indices(train_lists)
  test_idx, test_counts = pad_indices(test_lists)
  return FederatedData(np.concatenate(xs), np.concatenate(ys), train_idx, train_counts,
                       test_idx, test_counts, num_classes, "tiny")


def tiny_model(num_classes=3):
  return from_flax("mlp", MLP(num_classes=num_classes, hidden=(8,)), (4, 4, 1), num_classes)


def tiny_resnet(num_classes=3, input_shape=(16, 16, 1)):
  """A BatchNorm ResNet small enough for CPU tests."""
  from fedjax_pfl.models.base import from_flax_stateful
  from fedjax_pfl.models.resnet import ResNet
  return from_flax_stateful("resnet-tiny", ResNet(num_classes=num_classes, widths=(4, 8)),
                            input_shape, num_classes)


def tiny_image_data(num_clients=6, seed=0, hw=16):
  """Like :func:`tiny_data` with ``hw x hw`` images (for the tiny ResNet)."""
  small = tiny_data(num_clients=num_clients, seed=seed)
  x = np.zeros((small.x.shape[0], hw, hw, 1), np.float32)
  x[:, :4, :4] = small.x
  x += np.random.default_rng(seed + 1).normal(scale=0.1, size=x.shape).astype(np.float32)
  return small._replace(x=x)


def make_sim(name="fedavg", algo_config=None, *, data=None, execution=None, participation=0.5,
             epochs=2, batch_size=4, lr=0.1, momentum=0.5, seed=0, model=None,
             finetune_epochs=0, donate=True, data_placement="replicated",
             eval_batch_size=2, cohort_table=None):
  data = data or tiny_data()
  model = model or tiny_model(data.num_classes)
  import jax
  params0 = model.init(jax.random.key(seed))

  # The production builder: rebuild() replaces {"train.lr": v, "algo.<field>": v}.
  cfg = config_lib.ExperimentConfig(
      algorithm=name, algo=algo_config,
      train=config_lib.TrainConfig(local_epochs=epochs, batch_size=batch_size, lr=lr,
                                   momentum=momentum))
  build = algorithm_builder(cfg, model, params0, int(data.train_idx.shape[1]))
  alg, spec = build()
  execution = execution or backend.Execution()
  finetune = spec.program(epochs=finetune_epochs) if finetune_epochs else None
  sim = Simulation(alg, model.apply, data, seed=seed, participation=participation,
                   execution=execution, eval_batch_size=eval_batch_size, finetune=finetune,
                   donate=donate, data_placement=data_placement,
                   rebuild=lambda hp: build(hp)[0], cohort_table=cohort_table)
  return sim, params0


def run_rounds(sim, params0, rounds):
  """``rounds`` calls of ``run_round``; history keeps copies of every state
  (``run_round`` donates the client state it is given)."""
  import jax
  import jax.numpy as jnp
  state = sim.init(params0)
  history = []
  for _ in range(rounds):
    state, metrics = sim.run_round(state)
    kept = state._replace(clients=jax.tree.map(jnp.copy, state.clients))
    history.append((kept, metrics))
  return state, history


def seen_and_unseen(sim, state):
  """For ``unseen_personal="server_mean"`` states ``(personal, trained [N])``
  after round 0: checks ``trained`` marks exactly round 0's cohort and returns
  ``(a trained client's row, a never-sampled client's row)``."""
  import jax
  _, trained = state.clients
  picked = sim.cohort(0).tolist()
  np.testing.assert_array_equal(np.asarray(trained),
                                [i in picked for i in range(sim.num_clients)])
  unseen = next(i for i in range(sim.num_clients) if i not in picked)
  row = lambda i: jax.tree.map(lambda a: a[i], state.clients)
  return row(picked[0]), row(unseen)


def replace(obj, **kw):
  return dataclasses.replace(obj, **kw)


def client_ctx(client_id=0, round_idx=0, seed=0):
  """A :class:`ClientContext` for calling a per-client slot directly."""
  import jax
  import jax.numpy as jnp

  from fedjax_pfl.core.algorithm import ClientContext
  return ClientContext(jnp.int32(round_idx), jnp.int32(client_id),
                       jax.random.fold_in(jax.random.key(seed), client_id))


def server_ctx(cohort, clients=(), round_idx=0, seed=0, valid=None):
  """A :class:`ServerContext` for calling ``aggregate`` directly on a cohort
  of ids ``cohort`` (all valid unless ``valid``)."""
  import jax
  import jax.numpy as jnp

  from fedjax_pfl.core.algorithm import ServerContext
  ids = jnp.asarray(cohort, jnp.int32)
  valid = jnp.ones(ids.shape, bool) if valid is None else jnp.asarray(valid)
  return ServerContext(jnp.int32(round_idx), ids, valid, jax.random.key(seed), clients)
