"""Milliseconds per round of workload W (FedAvg and FedOBP).

Workload W (Fashion-MNIST shaped): 100 clients, Dirichlet(0.1) label split
(FL-bench procedure, 25% local test), 10 clients per round, 5 local epochs,
batch 32, SGD lr 0.01 (momentum: the project default 0.7), FedAvgCNN. Built
with :func:`fedjax_pfl.experiment.build_simulation` and run with
:meth:`fedjax_pfl.core.rounds.Simulation.run_round` (evaluation excluded).

Uses the real Fashion-MNIST when ``/usr/share/datasets/fashion-mnist`` (or
``--data-dir``) has it, else synthetic images with the client-size
distribution of the same Dirichlet partition of 70,000 labels.

Reported per algorithm: AOT compile seconds of every program a round runs,
the first round (after compile), the median and each of ``R`` timed rounds,
and their total; with vmap + scan also ``multi_round``: the ``R`` rounds as ONE
compiled program (:meth:`Simulation.run_rounds`), its first call (compile
included) and its steady-state ms per round. Targets: <= 25 ms/round on one H100; on CPU,
<= 8 s per round and faster than FL-bench (measured on the same cohorts by
:mod:`benchmarks.flbench_side_by_side`: 9-15 s per round with 1 thread on this 2-core
machine). ``--torch`` adds the same CNN
trained by a plain sequential PyTorch loop over the same cohorts (PyTorch is
optional and imported only then).

Usage::

  python -m benchmarks.bench_round                 # W, R=3 rounds on CPU
  python -m benchmarks.bench_round --rounds 10 --torch
  python -m benchmarks.bench_round --smoke         # 6 tiny clients, MLP, seconds
"""

import dataclasses
import os
import time

import jax
import numpy as np

from benchmarks import common
from fedjax_pfl import config as config_lib
from fedjax_pfl import experiment, protocols
from fedjax_pfl.data import FederatedData, pad_indices
from fedjax_pfl.data import partition as partition_lib
from fedjax_pfl.data.sources import DEFAULT_IDX_DIRS

FLBENCH_CPU_S_PER_ROUND = 9.7  # quiet 2-core machine, 1 thread, 2026-12-02 (median)
H100_TARGET_MS = 25.0


def synthetic_like_fmnist(num_clients: int, alpha: float, seed: int, total: int = 70_000,
                          test_ratio: float = 0.25) -> FederatedData:
  """Random 28x28x1 images split by the Dirichlet partition of random labels
  (the same client-size distribution as the real dataset's partition)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 10, total).astype(np.int32)
  clients = partition_lib.dirichlet_partition(y, num_clients, alpha, rng=rng)
  train, test = partition_lib.split_train_test(clients, test_ratio, rng=rng)
  train_idx, train_counts = pad_indices(train)
  test_idx, test_counts = pad_indices(test)
  x = rng.standard_normal((total, 28, 28, 1), dtype=np.float32)
  return FederatedData(x, y, train_idx, train_counts, test_idx, test_counts, 10,
                       "synthetic_fashion_mnist")


def load_workload(args) -> tuple[FederatedData, str]:
  """The federated data of the run and where it came from (``--protocol
  flbench``: FL-bench's own partition of the real Fashion-MNIST)."""
  if getattr(args, "protocol", None) and not args.smoke:
    cfg = make_config(args, "fedavg").data
    return experiment.load_data(cfg), f"fashion_mnist idx ({cfg.data_dir}), {cfg.partition}"
  if args.smoke:
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.integers(8, 40, args.clients)]
    return common.synthetic_federated(sizes, seed=0), "synthetic (smoke)"
  data_dir = args.data_dir or DEFAULT_IDX_DIRS["fashion_mnist"]
  if os.path.exists(os.path.join(data_dir, "train-images-idx3-ubyte.gz")):
    cfg = config_lib.DataConfig(dataset="fashion_mnist", data_dir=data_dir, source="idx",
                                num_clients=args.clients, alpha=args.alpha, seed=args.data_seed)
    return experiment.load_data(cfg), f"fashion_mnist idx ({data_dir})"
  return (synthetic_like_fmnist(args.clients, args.alpha, args.data_seed),
          "synthetic (Fashion-MNIST not found)")


def make_config(args, algorithm: str) -> config_lib.ExperimentConfig:
  """W's config; ``args.protocol`` (``flbench``): FL-bench's partition, client
  stream and normalization (:mod:`fedjax_pfl.protocols`), so the cohorts are
  FL-bench's own rounds' clients."""
  cfg = config_lib.ExperimentConfig(
      algorithm=algorithm,
      model=config_lib.ModelConfig(name=args.model, conv=args.conv),
      train=config_lib.TrainConfig(rounds=args.rounds, participation=args.participation,
                                   local_epochs=args.epochs, batch_size=32, lr=0.01,
                                   momentum=args.momentum, seed=0),
      system=config_lib.SystemConfig(parallelism=args.parallelism, step_loop=args.step_loop,
                                     chunk_size=args.chunk_size,
                                     lanes=getattr(args, "lanes", None)))
  if getattr(args, "protocol", None):
    cfg = protocols.apply_protocol(cfg, args.protocol)
    data_dir = args.data_dir or DEFAULT_IDX_DIRS["fashion_mnist"]
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, dataset="fashion_mnist", data_dir=data_dir, source="idx",
        num_clients=args.clients, alpha=args.alpha, seed=args.data_seed))
    # FL-bench's common.seed = 42 seeds its stream; the stream covers every round run.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, rounds=3 * args.rounds + 2, seed=args.data_seed))
  return cfg


def bench_algorithm(args, algorithm: str, data: FederatedData) -> dict:
  """Compile, first round and ``R`` timed rounds of one algorithm."""
  cfg = make_config(args, algorithm)
  sim, params0 = experiment.build_simulation(cfg, data)
  state = common.block(sim.init(params0))
  compile_s = common.compile_round(sim, state)
  common.log(f"{algorithm}: compiled in {compile_s['total']:.1f} s")
  t0 = time.perf_counter()
  state, _ = sim.run_round(state)
  common.block(state)
  first = time.perf_counter() - t0
  common.log(f"{algorithm}: first round {first:.2f} s")
  times, cohorts, steps, lane_util = [], [], [], []
  for _ in range(args.rounds):
    ids = sim.cohort(state.round)
    cohorts.append(ids.tolist())
    steps.append(common.cohort_steps(sim, ids))
    t0 = time.perf_counter()
    state, metrics = sim.run_round(state)
    common.block(state)
    times.append(time.perf_counter() - t0)
    lane_util.append(metrics.get("lane_utilization")
                     or steps[-1] / common.lane_steps(sim, sim.backend.pad_cohort(ids)[0]))
    common.log(f"{algorithm}: round {len(times)}/{args.rounds} {times[-1]:.2f} s, "
               f"{steps[-1]} client steps, lane utilization {lane_util[-1]:.3f}")
  ex = sim.backend.execution
  multi = None
  if sim.backend.fused:  # all R rounds as ONE program (Simulation.run_rounds)
    t0 = time.perf_counter()
    state, _ = sim.run_rounds(state, args.rounds)
    common.block(state)
    first_call = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, chunk = sim.run_rounds(state, args.rounds)
    common.block(state)
    steady = time.perf_counter() - t0
    multi = {"rounds_per_call": args.rounds, "compile_and_first_call_s": round(first_call, 4),
             "ms_per_round": 1e3 * steady / args.rounds}
    common.log(f"{algorithm}: {args.rounds} rounds in one program: "
               f"{multi['ms_per_round']:.1f} ms/round (first call {first_call:.2f} s)")
  return {"algorithm": algorithm, "multi_round": multi, "parallelism": ex.parallelism, "step_loop": ex.step_loop,
          "chunk_size": ex.chunk_size, "num_devices": ex.num_devices, "lanes": ex.lanes,
          "lane_utilization": lane_util,
          "ms_per_client_step": [1e3 * t / max(n, 1) for t, n in zip(times, steps)],
          "compile_s": {k: round(v, 3) for k, v in compile_s.items()},
          "first_round_s": round(first, 4),
          "median_ms_per_round": 1e3 * float(np.median(times)),
          "round_s": [round(t, 4) for t in times], "total_s": round(sum(times), 4),
          "client_steps_per_round": steps, "train_loss": metrics.get("train_loss"),
          "cohorts": cohorts, "C": sim.cohort_size, "N": sim.num_clients}


def bench_torch(args, data: FederatedData, cohorts: list[list[int]]) -> dict:
  """The same CNN and local SGD in a plain sequential PyTorch loop."""
  if args.model != "cnn":
    return {"skipped": "the PyTorch loop implements FedAvgCNN only (use --model cnn)"}
  try:
    import torch
    from torch import nn
  except ImportError:
    return {"skipped": "PyTorch is not installed (pip install torch)"}
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  model = nn.Sequential(
      nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5), nn.ReLU(),
      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))
  x_all = torch.from_numpy(np.ascontiguousarray(np.transpose(data.x, (0, 3, 1, 2))))
  y_all = torch.from_numpy(data.y.astype(np.int64))
  loss_fn = nn.CrossEntropyLoss()
  gen = torch.Generator().manual_seed(0)

  def train_client(global_state, idx):
    model.load_state_dict(global_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=args.momentum)
    for _ in range(args.epochs):
      order = idx[torch.randperm(len(idx), generator=gen)]
      for s in range(0, len(order), 32):
        b = order[s:s + 32]
        if len(b) < 2:
          continue
        opt.zero_grad()
        loss_fn(model(x_all[b]), y_all[b]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

  state = {k: v.clone() for k, v in model.state_dict().items()}
  times = []
  for ids in cohorts:
    t0 = time.perf_counter()
    weights, uploads = [], []
    for i in ids:
      idx = torch.from_numpy(data.train_idx[i, :data.train_counts[i]].astype(np.int64))
      uploads.append(train_client(state, idx))
      weights.append(float(data.train_counts[i]))
    w = torch.tensor(weights) / sum(weights)
    state = {k: sum(wi * u[k] for wi, u in zip(w, uploads)) for k in state}
    times.append(time.perf_counter() - t0)
    common.log(f"torch: round {len(times)}/{len(cohorts)} {times[-1]:.2f} s")
  return {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
          "median_ms_per_round": 1e3 * float(np.median(times)),
          "round_s": [round(t, 4) for t in times], "total_s": round(sum(times), 4)}


def main(argv=None) -> dict:
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--algorithms", type=common.names, default=["fedavg", "fedobp"])
  p.add_argument("--rounds", type=int, default=None, help="timed rounds R (default 3 on CPU)")
  p.add_argument("--clients", type=int, default=None, help="N (default 100)")
  p.add_argument("--participation", type=float, default=None, help="default 0.1")
  p.add_argument("--epochs", type=int, default=None, help="local epochs (default 5)")
  p.add_argument("--alpha", type=float, default=0.1)
  p.add_argument("--momentum", type=float, default=0.7)
  p.add_argument("--data-seed", type=int, default=42)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--parallelism", default="auto", choices=["auto", "vmap", "sequential"])
  p.add_argument("--step-loop", default="auto", choices=["auto", "scan", "python"])
  p.add_argument("--chunk-size", type=int, default=None)
  p.add_argument("--lanes", type=int, default=None,
                 help="system.lanes: pack the cohort onto this many lanes (vmap + scan)")
  p.add_argument("--protocol", default=None, choices=["flbench"],
                 help="FL-bench's partition and client stream: the cohorts of FL-bench's "
                 "own rounds (for a side-by-side run with FL-bench)")
  p.add_argument("--model", choices=["cnn", "mlp", "resnet8"], default=None,
                 help="default cnn (FedAvgCNN); --smoke uses mlp (fast compiles); resnet8: "
                 "the FedPURIN configs' model")
  p.add_argument("--conv", default="auto", choices=["auto", "xla", "im2col"],
                 help="model.conv: convolution implementation (auto: im2col on CPU)")
  p.add_argument("--torch", action="store_true", help="also time a sequential PyTorch loop")
  args = p.parse_args(argv)
  on_cpu = jax.default_backend() == "cpu"
  args.clients = args.clients or (6 if args.smoke else 100)
  args.participation = args.participation or (0.34 if args.smoke else 0.1)
  args.epochs = args.epochs or (1 if args.smoke else 5)
  args.model = args.model or ("mlp" if args.smoke else "cnn")
  args.rounds = args.rounds or (1 if args.smoke else (3 if on_cpu else 20))
  data, source = load_workload(args)
  results = [bench_algorithm(args, name, data) for name in args.algorithms]
  record = {"benchmark": "round", **common.env_info(),
            "settings": {"workload": "smoke" if args.smoke else "W", "data": source,
                         "N": args.clients, "participation": args.participation,
                         "epochs": args.epochs, "batch_size": 32, "lr": 0.01,
                         "momentum": args.momentum, "alpha": args.alpha, "model": args.model,
                         "conv": args.conv,
                         "rounds": args.rounds, "parallelism": args.parallelism,
                         "step_loop": args.step_loop, "chunk_size": args.chunk_size,
                         "lanes": args.lanes, "protocol": args.protocol,
                         "train_sizes": {"min": int(data.train_counts.min()),
                                         "median": float(np.median(data.train_counts)),
                                         "max": int(data.train_counts.max()),
                                         "total": int(data.train_counts.sum())}},
            "results": results,
            "targets": {"h100_ms_per_round": H100_TARGET_MS,
                        "cpu_flbench_s_per_round": FLBENCH_CPU_S_PER_ROUND}}
  if args.torch:
    record["torch"] = bench_torch(args, data, results[0]["cohorts"])
  for r in results:  # cohorts were needed for --torch only; keep the line short
    r["cohorts"] = [len(c) for c in r["cohorts"]]
  return common.emit(record, args.out)


if __name__ == "__main__":
  common.main_guard(main)
