"""Client-training throughput vs centralized training of the same model.

Measures samples/s of local SGD of FedAvgCNN (28x28x1, batch 32) for a cohort
of ``C`` clients under each execution strategy of
:mod:`fedjax_pfl.core.backend` backends (vmap+scan, vmap+python,
sequential+python, sequential+scan), and samples/s of centralized training of
the same model on one "client" holding all ``C x steps x 32`` examples with
batch ``C x 32`` (same program, same device). ``ratio`` = client-parallel
throughput / centralized throughput (target >= 0.7).

On CPU, vmap strategies are skipped for C > ``--cpu-vmap-max-c`` (10): vmap
over clients turns each convolution into a grouped convolution, and XLA:CPU's
cost for those grows faster than linearly in the group count (a full run
including vmap at C = 100 had not finished after 50 minutes on the loaded
2-core machine).

``--smoke`` uses C = 1, 2, one step per client and the MLP (FedAvgCNN's
backward pass takes ~10 s per program to compile on a loaded 2-core CPU).

Every client holds exactly ``steps x 32`` synthetic examples and trains one
epoch, so every step is a full batch and both sides do the same work.

Usage::

  python -m benchmarks.bench_throughput            # C = 1, 10, 100
  python -m benchmarks.bench_throughput --smoke    # C = 1, 2; seconds
"""

import jax
import numpy as np

from benchmarks import common
from fedjax_pfl.core import aot, backend, cohort
from fedjax_pfl.core.local import LocalSpec, make_optimizer
from fedjax_pfl.models import get_model

BATCH = 32


def client_task(spec: LocalSpec) -> cohort.ClientTask:
  """Plain local SGD as a ClientTask; ``shared = (params, round_key)``."""
  prog = spec.program()

  def prologue(shared, client, cdata, cid):
    params, key = shared
    return prog.init(params, cdata, jax.random.fold_in(key, cid))

  def epilogue(shared, client, state):
    return prog.finish(state)

  return cohort.ClientTask(prologue, prog.step, epilogue, prog.num_steps, prog.active_steps)


def measure(execution: backend.Execution, model, params, num_clients: int, steps: int,
            batch: int, repeats: int, budget_s: float) -> dict:
  """Compile seconds and steady-state samples/s of training ``num_clients``
  clients of ``steps`` full batches each under ``execution``."""
  fd = common.synthetic_federated([steps * batch] * num_clients, test_sizes=[1] * num_clients)
  data = common.device_data(fd)
  spec = LocalSpec(model.apply, make_optimizer(0.01, 0.0), 1, batch, steps * batch)
  task = client_task(spec)
  executor = backend.make_backend(execution, num_clients)
  ids, _ = executor.pad_cohort(np.arange(num_clients))
  counts = np.asarray(fd.train_counts)[np.minimum(ids, num_clients - 1)]
  shared = (params, jax.random.key(0))
  stacked = ()
  if executor.fused:
    run = jax.jit(lambda sh, st, d, i: executor.map_cohort(task, sh, st, d, i))
    compiled, compile_s = common.timed_compile(run, shared, stacked, data, ids)
    compile_pieces = {"map_traced": compile_s}
    fn = lambda: compiled(shared, stacked, data, ids)
  else:
    compile_pieces, _ = aot.compile_task(executor, task, shared, stacked, data, ids)
    compile_s = sum(compile_pieces.values())
    fn = lambda: executor.map_cohort(task, shared, stacked, data, ids, counts)
  t = common.time_calls(fn, repeats, budget_s=budget_s)
  samples = num_clients * steps * batch
  return {"compile_s": round(compile_s, 4),
          "compile_pieces_s": {k: round(v, 4) for k, v in compile_pieces.items()},
          "first_call_s": round(t["first_s"], 4), "median_s": round(t["median_s"], 5),
          "times_s": t["times_s"], "samples": samples,
          "samples_per_s": samples / t["median_s"]}


def main(argv=None) -> dict:
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--cohorts", type=common.ints, default=None, help="C values (default 1,10,100)")
  p.add_argument("--strategies", type=common.names, default=list(common.STRATEGIES))
  p.add_argument("--steps", type=int, default=None, help="full batches per client")
  p.add_argument("--chunk-size", type=int, default=None, help="vmap chunk size")
  p.add_argument("--central-loops", type=common.names, default=None,
                 help="step loops for the centralized reference (default: python on CPU, "
                      "python,scan elsewhere)")
  p.add_argument("--model", choices=["cnn", "mlp"], default=None,
                 help="default: cnn (FedAvgCNN); --smoke uses mlp (fast compiles)")
  p.add_argument("--budget-s", type=float, default=60.0,
                 help="stop repeating a configuration after this many timed seconds")
  p.add_argument("--cpu-vmap-max-c", type=int, default=10,
                 help="on CPU, skip vmap strategies for larger cohorts (default 10)")
  args = p.parse_args(argv)
  smoke = args.smoke
  on_cpu = jax.default_backend() == "cpu"
  cohorts = args.cohorts or ([1, 2] if smoke else [1, 10, 100])
  steps = args.steps or (1 if smoke else 2)
  repeats = args.repeats or (2 if smoke else 3)
  central_loops = args.central_loops or (["python"] if on_cpu else ["python", "scan"])
  model_name = args.model or ("mlp" if smoke else "cnn")
  model = get_model(model_name, (28, 28, 1), 10)
  params = model.init(jax.random.key(0))

  results = []
  for c in cohorts:
    central = {}
    for loop in central_loops:
      ex = common.execution(f"sequential+{loop}")
      central[loop] = measure(ex, model, params, 1, steps, c * BATCH, repeats, args.budget_s)
    best_central = max(v["samples_per_s"] for v in central.values())
    for name in args.strategies:
      ex = common.execution(name, args.chunk_size)
      if on_cpu and ex.parallelism == "vmap" and c > args.cpu_vmap_max_c:
        results.append({"C": c, "strategy": name, "skipped": (
            f"vmap over {c} clients on CPU: vmapped convolutions become grouped convolutions "
            f"whose cost grows faster than linearly (see README); raise --cpu-vmap-max-c")})
        continue
      r = measure(ex, model, params, c, steps, BATCH, repeats, args.budget_s)
      common.log(f"C={c} {name}: {r['samples_per_s']:.0f} samples/s")
      results.append({
          "C": c, "strategy": name, "parallelism": ex.parallelism, "step_loop": ex.step_loop,
          "chunk_size": ex.chunk_size, **r,
          "central_samples_per_s": best_central,
          "ratio": r["samples_per_s"] / best_central})
    results.append({"C": c, "strategy": "centralized", "batch": c * BATCH,
                    **{f"central_{k}": v for k, v in central.items()}})
  best = {}
  for r in results:
    if "ratio" in r and r["ratio"] > best.get(str(r["C"]), {}).get("ratio", -1):
      best[str(r["C"])] = {"strategy": r["strategy"], "ratio": r["ratio"]}
  record = {"benchmark": "throughput", **common.env_info(),
            "settings": {"model": model_name, "input_shape": [28, 28, 1], "batch_size": BATCH,
                         "steps_per_client": steps, "epochs": 1, "cohorts": cohorts,
                         "strategies": args.strategies, "chunk_size": args.chunk_size,
                         "central_loops": central_loops, "repeats": repeats, "smoke": smoke,
                         "cpu_vmap_max_c": args.cpu_vmap_max_c},
            "results": results, "best_ratio_per_C": best, "target_ratio": 0.7}
  return common.emit(record, args.out)


if __name__ == "__main__":
  common.main_guard(main)
