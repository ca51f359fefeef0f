"""Cost of S seeds of one experiment vmapped together vs one run.

One "run" is a cohort's whole local training and aggregation: one FedAvg
round of :class:`fedjax_pfl.core.rounds.Simulation` (built by
:func:`fedjax_pfl.experiment.build_simulation`, the compiled backend (vmap+scan), the
cohort fixed to all ``C`` clients), traced as one program from an initial
model and a training key. The seed axis is a ``jax.vmap`` over a batch of
``S`` initial models and keys, added here in the benchmark; the library is
unchanged. Reported: compile seconds and median seconds of one run (no seed
axis) and of ``S`` = 1, 2, 4 vmapped seeds, and ``ratio = t(S) / t(one run)``
(target: ``S=4`` at most 1.5x one run).

Usage::

  python -m benchmarks.bench_seeds             # C=10 clients x 2 batches, CNN
  python -m benchmarks.bench_seeds --smoke     # C=2 x 1 batch, MLP; seconds
"""

import jax
import numpy as np

from benchmarks import common
from fedjax_pfl import config as config_lib
from fedjax_pfl import experiment
from fedjax_pfl.core import rounds
from fedjax_pfl.models import get_model

BATCH = 32


def make_run(sim, ids: np.ndarray, valid: np.ndarray):
  """``(params, seed key) -> (server params, metrics)``: init + one round
  (the pure round function of :mod:`fedjax_pfl.core.rounds`)."""
  def run(params, root):
    keys = rounds.RunKeys(*(jax.random.fold_in(root, i) for i in range(4)))
    server, clients = sim.algorithm.init(params, sim.num_clients, key=keys.algorithm)
    server, _, metrics = rounds.round_fn(sim.algorithm, sim.task, sim.backend.map_cohort,
                                         server, clients, sim.data, ids, valid, 0, keys)
    return server, metrics
  return run


def main(argv=None) -> dict:
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--seeds", type=common.ints, default=None, help="S values (default 1,2,4)")
  p.add_argument("--clients", type=int, default=None, help="C (default 10)")
  p.add_argument("--steps", type=int, default=None, help="full batches per client (default 2)")
  p.add_argument("--epochs", type=int, default=1)
  p.add_argument("--chunk-size", type=int, default=None, help="clients per vmap chunk")
  p.add_argument("--model", choices=["cnn", "mlp"], default=None,
                 help="default cnn; --smoke uses mlp (fast compiles)")
  p.add_argument("--budget-s", type=float, default=60.0)
  args = p.parse_args(argv)
  smoke = args.smoke
  seeds = args.seeds or ([1, 2] if smoke else [1, 2, 4])
  clients = args.clients or (2 if smoke else 10)
  steps = args.steps or (1 if smoke else 2)
  repeats = args.repeats or (2 if smoke else 3)
  model_name = args.model or ("mlp" if smoke else "cnn")

  data = common.synthetic_federated([steps * BATCH] * clients, test_sizes=[1] * clients)
  cfg = config_lib.ExperimentConfig(
      algorithm="fedavg", model=config_lib.ModelConfig(name=model_name),
      train=config_lib.TrainConfig(participation=1.0, local_epochs=args.epochs,
                                   batch_size=BATCH, lr=0.01, seed=0),
      system=config_lib.SystemConfig(parallelism="vmap", step_loop="scan",
                                     chunk_size=args.chunk_size, num_devices=1))
  sim, params0 = experiment.build_simulation(cfg, data)
  model = get_model(model_name, data.x.shape[1:], data.num_classes)
  ids, valid = sim.backend.pad_cohort(np.arange(clients))
  run = make_run(sim, ids, valid)

  def timed(fn, *inputs):
    compiled, compile_s = common.timed_compile(jax.jit(fn), *inputs)
    t = common.time_calls(lambda: compiled(*inputs), repeats, budget_s=args.budget_s)
    return {"compile_s": round(compile_s, 4), "median_s": round(t["median_s"], 5),
            "times_s": t["times_s"]}

  one = timed(run, params0, sim.train_key)
  results = []
  for s in seeds:
    keys = jax.random.split(jax.random.key(1), s)
    params = jax.vmap(model.init)(keys)
    train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
    r = timed(jax.vmap(run), params, train_keys)
    common.log(f"S={s}: {r['median_s']:.3f} s (one run {one['median_s']:.3f} s)")
    results.append({"S": s, **r, "ratio": r["median_s"] / one["median_s"],
                    "seeds_per_one_run_time": s * one["median_s"] / r["median_s"]})
  ratio4 = next((r["ratio"] for r in results if r["S"] == 4), None)
  record = {"benchmark": "seeds", **common.env_info(),
            "settings": {"model": model_name, "algorithm": "fedavg", "C": clients,
                         "N": clients, "steps_per_client": steps, "epochs": args.epochs,
                         "batch_size": BATCH, "parallelism": "vmap", "step_loop": "scan",
                         "chunk_size": args.chunk_size, "seeds": seeds, "repeats": repeats,
                         "smoke": smoke},
            "one_run": one, "results": results,
            "target": {"S": 4, "max_ratio": 1.5, "ratio": ratio4,
                       "met": None if ratio4 is None else bool(ratio4 <= 1.5)}}
  return common.emit(record, args.out)


if __name__ == "__main__":
  common.main_guard(main)
