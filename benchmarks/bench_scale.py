"""Client-state memory and round time vs the number of clients N.

FedOBP keeps one full model per client (``theta^last``), so its stacked
client state is ``N x P x 4`` bytes. For N = 100, 1,000, 10,000 (cohort fixed
at C = 10, identical local work per round) this reports the estimate, the
bytes of the materialized stacked state, the process RSS, the AOT compile
time and the median round time (evaluation excluded), through
:func:`fedjax_pfl.experiment.build_simulation` and ``Simulation.run_round``.
Target: round time independent of N.

Two series: ``cnn`` (FedAvgCNN, 28x28x1, P = 582,026) is measured only
where the state fits ``--max-bytes`` (default 4 GB; N = 10,000 needs 23 GB:
estimate only) and ``mlp`` (the MLP on 8x8x1 digits-shaped inputs,
P = 26,122; N = 10,000 needs 1.0 GB) is measured at every N. Each client has
``--train`` synthetic examples and trains one epoch.

Usage::

  python -m benchmarks.bench_scale
  python -m benchmarks.bench_scale --clients 100,1000 --series cnn
  python -m benchmarks.bench_scale --smoke
"""

import resource
import time

import jax
import numpy as np

from benchmarks import common
from fedjax_pfl import config as config_lib
from fedjax_pfl import experiment
from fedjax_pfl.models import get_model

SERIES = {"cnn": ("cnn", (28, 28, 1)), "mlp": ("mlp", (8, 8, 1))}


def max_rss_bytes() -> int:
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def bench_one(args, series: str, n: int) -> dict:
  model_name, shape = SERIES[series]
  num_params = common.num_params(jax.eval_shape(get_model(model_name, shape, 10).init,
                                                jax.random.key(0)))
  estimate = n * num_params * 4
  row = {"series": series, "model": model_name, "input_shape": list(shape), "N": n,
         "params": num_params, "state_bytes_estimate": estimate}
  if estimate > args.max_bytes:
    return {**row, "skipped": f"estimated state {estimate / 1e9:.2f} GB > --max-bytes "
                              f"{args.max_bytes / 1e9:.2f} GB"}
  data = common.synthetic_federated([args.train] * n, input_shape=shape,
                                    test_sizes=[args.test] * n, seed=n)
  cfg = config_lib.ExperimentConfig(
      algorithm="fedobp", model=config_lib.ModelConfig(name=model_name),
      train=config_lib.TrainConfig(participation=args.cohort / n, local_epochs=args.epochs,
                                   batch_size=32, lr=0.01, seed=0),
      system=config_lib.SystemConfig(parallelism=args.parallelism, step_loop=args.step_loop,
                                     chunk_size=args.chunk_size))
  rss0 = common.rss_bytes()
  sim, params0 = experiment.build_simulation(cfg, data)
  t0 = time.perf_counter()
  state = common.block(sim.init(params0))
  init_s = time.perf_counter() - t0
  rss1 = common.rss_bytes()
  compile_s = common.compile_round(sim, state)
  t0 = time.perf_counter()
  state, _ = sim.run_round(state)
  common.block(state)
  first = time.perf_counter() - t0
  times = []
  for _ in range(args.rounds):
    t0 = time.perf_counter()
    state, _ = sim.run_round(state)
    common.block(state)
    times.append(time.perf_counter() - t0)
  ex = sim.backend.execution
  out = {**row, "C": sim.cohort_size, "parallelism": ex.parallelism, "step_loop": ex.step_loop,
         "chunk_size": ex.chunk_size,
         "state_bytes": common.tree_bytes(state.clients),
         "rss_delta_init_bytes": None if rss0 is None else rss1 - rss0,
         "max_rss_bytes": max_rss_bytes(), "init_s": round(init_s, 4),
         "compile_s": round(compile_s["total"], 3), "first_round_s": round(first, 4),
         "median_ms_per_round": 1e3 * float(np.median(times)),
         "round_s": [round(t, 4) for t in times]}
  common.log(f"{series} N={n}: {out['median_ms_per_round']:.1f} ms/round")
  del sim, state
  return out


def main(argv=None) -> dict:
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--clients", type=common.ints, default=None, help="N values")
  p.add_argument("--series", type=common.names, default=["mlp", "cnn"])
  p.add_argument("--cohort", type=int, default=None, help="clients per round (default 10)")
  p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
  p.add_argument("--train", type=int, default=32, help="train examples per client")
  p.add_argument("--test", type=int, default=8, help="test examples per client")
  p.add_argument("--epochs", type=int, default=1)
  p.add_argument("--max-bytes", type=float, default=4e9, help="largest state to measure")
  p.add_argument("--parallelism", default="auto", choices=["auto", "vmap", "sequential"])
  p.add_argument("--step-loop", default="auto", choices=["auto", "scan", "python"])
  p.add_argument("--chunk-size", type=int, default=None)
  args = p.parse_args(argv)
  smoke = args.smoke
  clients = args.clients or ([20, 40] if smoke else [100, 1000, 10000])
  args.cohort = args.cohort or (2 if smoke else 10)
  args.rounds = args.rounds or (args.repeats or (1 if smoke else 3))
  series = [s for s in args.series if not (smoke and s == "cnn")] or ["mlp"]
  results = [bench_one(args, s, n) for s in series for n in clients]
  summary = {}
  for s in series:
    rows = [r for r in results if r["series"] == s and "median_ms_per_round" in r]
    if len(rows) >= 2:
      summary[s] = {"N_min": rows[0]["N"], "N_max": rows[-1]["N"],
                    "round_time_ratio_max_over_min_N":
                        rows[-1]["median_ms_per_round"] / rows[0]["median_ms_per_round"]}
  record = {"benchmark": "scale", **common.env_info(),
            "settings": {"algorithm": "fedobp", "clients": clients, "series": series,
                         "C": args.cohort, "train_per_client": args.train,
                         "epochs": args.epochs, "batch_size": 32, "rounds": args.rounds,
                         "parallelism": args.parallelism, "step_loop": args.step_loop,
                         "chunk_size": args.chunk_size, "max_bytes": args.max_bytes,
                         "smoke": smoke},
            "results": results, "summary": summary}
  return common.emit(record, args.out)


if __name__ == "__main__":
  common.main_guard(main)
