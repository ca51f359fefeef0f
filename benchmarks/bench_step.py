"""One client SGD step against the machine's GEMM rate, and workload W's round.

Reports, in one run:

* ``gemm``: XLA's float32 matmul rate (GFLOP/s, best and median of repeated
  calls) at 2048^3 and at the shapes of FedAvgCNN's GEMMs (conv2 im2col
  2048x800x64, fc1 32x1024x512, conv1 im2col 18432x25x32). ``gemm_rate_gflops``
  (the best rate over these shapes in the run: measured first and again after
  every step variant, since a shared machine's load changes; short calls
  escape a loaded machine's preemption best, so on the loaded 2-core
  development machine the conv2 shape usually gave the highest rate) is the
  denominator of every utilization below;
* ``steps``: per model (FedAvgCNN at batch 32, the workload W step; ResNet-8 at
  batch 100, FedPURIN's configs) and per ``model.conv`` x ``model.pool``
  choice: the compiled SGD step of :func:`fedjax_pfl.core.local.sgd_program`
  (cross-entropy, SGD with momentum, the masked-step ``where``), stepped from
  Python as the CPU default executes it. ``flops`` is XLA's cost analysis of
  the step lowered with XLA's convolution and ``reduce_window`` pooling (the
  same for every choice, so utilizations compare); ``flops_compiled`` is the
  cost analysis of the timed program itself. ``utilization = flops / best
  step time / gemm_rate``. Also, to locate the overheads: ``loop_ms_per_step``
  (the same steps inside one compiled ``fori_loop``: the difference to the
  Python-stepped time bounds the per-step dispatch cost), ``threads2`` (two
  host threads each stepping its own client with the same executable:
  ms per client step) and ``vmap2`` (``jax.vmap`` of the step over two
  clients: ms per client step);
* ``round``: workload W's FedAvg round through
  :func:`fedjax_pfl.experiment.build_simulation` and ``Simulation.run_round``
  (compile + first round, then ``R`` rounds; ms per client step = round time /
  client steps of that round's cohort).

Usage::

  python -m benchmarks.bench_step                       # CNN + ResNet-8 + W, ~3 min idle
  python -m benchmarks.bench_step --pools xla,slices --w-rounds 0
  python -m benchmarks.bench_step --smoke               # seconds
"""

import argparse
import statistics
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_round, common
from fedjax_pfl.core import local as local_lib
from fedjax_pfl.models import get_model

GEMM_SHAPES = {"2048^3": (2048, 2048, 2048), "conv2_im2col": (2048, 800, 64),
               "fc1": (32, 1024, 512), "conv1_im2col": (18432, 25, 32)}
# FedAvgCNN: workload W (batch 32, lr 0.01, momentum 0.7); ResNet-8: FedPURIN
# (Fashion-MNIST 28x28x1, batch 100, lr 0.1, momentum 0.9).
MODEL_SETUPS = {"cnn": dict(shape=(28, 28, 1), batch=32, lr=0.01, momentum=0.7),
                "resnet8": dict(shape=(28, 28, 1), batch=100, lr=0.1, momentum=0.9)}


def gemm_rates(shapes: dict, repeats: int) -> dict:
  """GFLOP/s of ``jnp.dot`` (float32) per ``(m, k, n)``: best and median timed
  call. A timed call dispatches ``inner`` products (at least 2e8 FLOP in all)
  and waits for the last, so dispatch overhead stays small."""
  out = {}
  for name, (m, k, n) in shapes.items():
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(jnp.dot)
    inner = max(1, int(2e8 // (2 * m * k * n)))
    t = common.time_calls(lambda: [f(a, b) for _ in range(inner)], repeats, warmup=2)
    flop = 2.0 * m * k * n * inner
    out[name] = {"m": m, "k": k, "n": n, "gflops_best": flop / t["min_s"] / 1e9,
                 "gflops_median": flop / t["median_s"] / 1e9}
  return out


def _setup(model_name: str, conv: str, pool: str, batch: int, lr: float, momentum: float,
           shape, num_examples: int = 2048):
  """The model's SGD program, its initial carry and one client's data."""
  model = get_model(model_name, shape, 10, conv=conv, pool=pool)
  params = model.init(jax.random.key(0))
  # 5 epochs of 10 batches (as W: the carry holds [epochs, slots] permutations).
  spec = local_lib.LocalSpec(model.apply, local_lib.make_optimizer(lr, momentum), 5, batch,
                             10 * batch, model.apply_train, model.state_mask)
  prog = spec.program()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((num_examples,) + tuple(shape), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, num_examples).astype(np.int32))
  data = local_lib.ClientData(x, y, jnp.arange(10 * batch, dtype=jnp.int32),
                              jnp.int32(10 * batch))
  carry = jax.jit(prog.init)(params, data, jax.random.key(1))
  return prog, carry, data


def _flops(cost) -> float:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def step_flops(model_name: str, setup: dict) -> float:
  """XLA's FLOP count of the step with XLA's convolution and reduce_window."""
  prog, carry, data = _setup(model_name, "xla", "xla", setup["batch"], setup["lr"],
                             setup["momentum"], setup["shape"])
  return _flops(jax.jit(prog.step).lower(carry, np.int32(0), data).cost_analysis())


def bench_step_variant(model_name: str, conv: str, pool: str, setup: dict, args) -> dict:
  """Times one model/conv/pool step: Python-stepped, in a compiled loop, in two
  threads and vmapped over two clients."""
  prog, carry, data = _setup(model_name, conv, pool, setup["batch"], setup["lr"],
                             setup["momentum"], setup["shape"])
  step, compile_s = common.timed_compile(jax.jit(prog.step), carry, np.int32(0), data)
  n = args.steps_per_call

  def run_steps(c):
    for t in range(n):
      c = step(c, np.int32(t), data)
    return c
  state = {"c": carry}

  def python_loop():
    state["c"] = run_steps(state["c"])
    return state["c"]
  py = common.time_calls(python_loop, args.repeats, warmup=1)
  row = {"model": model_name, "conv": conv, "pool": pool, "batch": setup["batch"],
         "compile_s": round(compile_s, 3), "flops_compiled": _flops(step.cost_analysis()),
         "ms_per_step_best": 1e3 * py["min_s"] / n,
         "ms_per_step_median": 1e3 * py["median_s"] / n}
  if args.loop:
    loop = jax.jit(lambda c: jax.lax.fori_loop(0, n, lambda t, c: prog.step(c, t, data), c))
    loop_c, row["loop_compile_s"] = common.timed_compile(loop, carry)
    lt = common.time_calls(lambda: loop_c(carry), args.repeats, warmup=1)
    row["loop_ms_per_step_best"] = 1e3 * lt["min_s"] / n
  if args.threads:  # two clients stepped at once from two host threads
    carries = [carry, jax.tree.map(jnp.copy, carry)]

    def two_threads():
      def work(i):
        carries[i] = run_steps(carries[i])
        jax.block_until_ready(carries[i])
      ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
      for t in ts:
        t.start()
      for t in ts:
        t.join()
      return carries
    tt = common.time_calls(two_threads, args.repeats, warmup=1)
    row["threads2_ms_per_client_step_best"] = 1e3 * tt["min_s"] / (2 * n)
  if args.vmap:  # a 2-lane vmap of two clients
    both = jax.tree.map(lambda a: jnp.stack([a, a]), carry)
    vstep, row["vmap2_compile_s"] = common.timed_compile(
        jax.jit(jax.vmap(prog.step, in_axes=(0, None, None))), both, np.int32(0), data)
    vstate = {"c": both}

    def vloop():
      for t in range(n):
        vstate["c"] = vstep(vstate["c"], np.int32(t), data)
      return vstate["c"]
    vt = common.time_calls(vloop, args.repeats, warmup=1)
    row["vmap2_ms_per_client_step_best"] = 1e3 * vt["min_s"] / (2 * n)
  common.log(f"{model_name} conv={conv} pool={pool}: {row['ms_per_step_best']:.2f} ms/step "
             f"(median {row['ms_per_step_median']:.2f})")
  return row


def bench_w_round(args) -> dict:
  """Workload W (FedAvg) through the public Simulation API."""
  from fedjax_pfl import experiment
  ns = argparse.Namespace(
      smoke=args.smoke, clients=6 if args.smoke else 100, alpha=0.1, data_seed=42,
      data_dir=args.data_dir, participation=0.34 if args.smoke else 0.1,
      epochs=1 if args.smoke else 5, momentum=0.7, rounds=args.w_rounds,
      model="mlp" if args.smoke else "cnn", conv=args.round_conv, parallelism="auto",
      step_loop="auto", chunk_size=None)
  data, source = bench_round.load_workload(ns)
  cfg = bench_round.make_config(ns, "fedavg")
  cfg = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.__class__(
      name=cfg.model.name, conv=args.round_conv, pool=args.round_pool)})
  sim, params0 = experiment.build_simulation(cfg, data)
  state = common.block(sim.init(params0))
  t0 = time.perf_counter()
  state, _ = sim.run_round(state)
  common.block(state)
  first = time.perf_counter() - t0
  times, steps = [], []
  for _ in range(args.w_rounds):
    ids = sim.cohort(state.round)
    steps.append(common.cohort_steps(sim, ids))
    t0 = time.perf_counter()
    state, metrics = sim.run_round(state)
    common.block(state)
    times.append(time.perf_counter() - t0)
    common.log(f"W round {len(times)}/{args.w_rounds}: {times[-1]:.2f} s, {steps[-1]} steps")
  out = {"data": source, "model": cfg.model.name, "conv": args.round_conv,
         "pool": args.round_pool, "compile_and_first_round_s": round(first, 3),
         "round_s": [round(t, 3) for t in times], "client_steps": steps}
  if times:
    out.update(median_s_per_round=statistics.median(times), min_s_per_round=min(times),
               ms_per_client_step=[1e3 * t / max(s, 1) for t, s in zip(times, steps)],
               train_loss=float(metrics["train_loss"]))
  return out


def main(argv=None) -> dict:
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--models", type=common.names, default=None, help="default cnn,resnet8")
  p.add_argument("--convs", type=common.names, default=["auto"], help="model.conv choices")
  p.add_argument("--pools", type=common.names, default=["xla", "slices"],
                 help="model.pool choices")
  p.add_argument("--steps-per-call", type=int, default=None, help="steps per timed call")
  p.add_argument("--w-rounds", type=int, default=None, help="timed W rounds (0: skip)")
  p.add_argument("--round-conv", default="auto")
  p.add_argument("--round-pool", default="auto")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--no-loop", dest="loop", action="store_false")
  p.add_argument("--no-threads", dest="threads", action="store_false")
  p.add_argument("--no-vmap", dest="vmap", action="store_false")
  args = p.parse_args(argv)
  args.models = args.models or (["cnn"] if args.smoke else ["cnn", "resnet8"])
  args.repeats = args.repeats or (2 if args.smoke else 7)
  # At most the program's 50 steps (5 epochs x 10 batches).
  args.steps_per_call = min(50, args.steps_per_call or (2 if args.smoke else 10))
  if args.smoke:
    args.pools = ["auto"] if args.pools == ["xla", "slices"] else args.pools
    args.loop = args.vmap = False
  args.w_rounds = (1 if args.smoke else 2) if args.w_rounds is None else args.w_rounds
  gemm_shapes = {"256^3": (256, 256, 256)} if args.smoke else GEMM_SHAPES
  gemm = gemm_rates(gemm_shapes, args.repeats)
  rates = [max(g["gflops_best"] for g in gemm.values())]
  common.log(f"GEMM rate {rates[0]:.1f} GFLOP/s")
  steps = []
  for name in args.models:
    setup = dict(MODEL_SETUPS[name])
    if args.smoke:
      setup["batch"] = 8
    flops = step_flops(name, setup)
    for conv in args.convs:
      for pool in args.pools:
        row = bench_step_variant(name, conv, pool, setup, args)
        # The machine's rate right after this variant (load changes during a run).
        row["gemm_rate_after"] = max(g["gflops_best"] for g in gemm_rates(gemm_shapes, 3).values())
        rates.append(row["gemm_rate_after"])
        row["flops"] = flops
        row["gflops"] = flops / (row["ms_per_step_best"] * 1e-3) / 1e9
        steps.append(row)
  # Utilization against the best GEMM rate seen in this run.
  rate = max(rates)
  for row in steps:
    row["utilization"] = row["gflops"] / rate
  record = {"benchmark": "step", **common.env_info(),
            "settings": {"models": args.models, "convs": args.convs, "pools": args.pools,
                         "repeats": args.repeats, "steps_per_call": args.steps_per_call,
                         "w_rounds": args.w_rounds, "setups": {
                             m: MODEL_SETUPS[m] for m in args.models}},
            "gemm": gemm, "gemm_rate_gflops": rate, "steps": steps}
  if args.w_rounds:
    record["round"] = bench_w_round(args)
  return common.emit(record, args.out)


if __name__ == "__main__":
  common.main_guard(main)
