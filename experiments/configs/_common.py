"""Shared setups of the papers' experiments (spec §1.3 FedOBP, §1.4 FedPURIN)."""

import dataclasses

from fedjax_pfl import algorithms
from fedjax_pfl import config as C
from fedjax_pfl.protocols import apply_protocol

# FedOBP Table II: quantile q per (dataset, alpha).
FEDOBP_Q = {
    ("cifar10", 0.1): 0.99998, ("cifar10", 0.5): 0.99979,
    ("cifar100", 0.1): 0.9998, ("cifar100", 0.5): 0.99992,
    ("emnist/byclass", 0.1): 0.995, ("emnist/byclass", 0.5): 0.9991,
    ("svhn_cropped", 0.1): 0.99997, ("svhn_cropped", 0.5): 0.9998,
    ("mnist", 0.1): 0.9998, ("mnist", 0.5): 0.99993,
    ("fashion_mnist", 0.1): 0.99993, ("fashion_mnist", 0.5): 0.9999,
}

# The thirteen methods of FedOBP's Tables III/IV, in the paper's row order.
FEDOBP_METHODS = ["local", "fedavg", "fedper", "apfl", "lgfedavg", "fedrep", "pfedfda",
                  "flute", "feddpa", "floco", "fedala", "fedselect", "fedobp"]
ROW_NAMES = {"local": "Local-Only", "fedavg": "FedAvg", "fedper": "FedPer", "apfl": "APFL",
             "lgfedavg": "LG-FedAvg", "fedrep": "FedRep", "pfedfda": "pFedFDA",
             "flute": "FLUTE", "feddpa": "FedDPA", "floco": "FLOCO", "fedala": "FedALA",
             "fedselect": "FedSelect", "fedobp": "FedOBP", "fedcac": "FedCAC",
             "fedpurin": "FedPURIN", "fedbn": "FedBN", "pfedsd": "pFedSD",
             "separate": "Separate", "fedavg_bn": "FedAvg"}


def algo_config(method: str, **fields):
  """The algorithm config of ``method`` with ``fields`` set.

  Raises:
    ConfigError: a field the algorithm does not have (named, with the allowed names).
  """
  name = algorithms.canonical_name(method)
  cls = algorithms.REGISTRY[name].config_cls
  allowed = sorted(f.name for f in dataclasses.fields(cls))
  unknown = sorted(set(fields) - set(allowed))
  if unknown:
    raise C.ConfigError(f"{name}: unknown algorithm argument(s) {unknown}; allowed: {allowed}")
  return cls(**fields)


# FL-bench's baselines as the FedOBP logs ran them (reference-protocols.md §1):
# the options that reproduce what the reference code computed. Methods not
# listed (Local-Only, FedAvg, FedDPA, FedSelect, FedOBP) have no difference.
FLBENCH_OPTIONS = {
    "fedper": {"unseen_personal": "server_mean"},
    "fedrep": {"unseen_personal": "server_mean"},
    "lgfedavg": {"unseen_personal": "server_mean"},
    "apfl": {"reuse_global_grad": True},
    "flute": {"detach_features": True, "unseen_personal": "server_mean"},
    "fedala": {"eval_mode": "flbench"},
    "pfedfda": {"mode": "flbench"},
    "floco": {"mode": "flbench"},
}
# Methods whose FL-bench behaviour differs from the published algorithm enough
# to get a second, paper-faithful row (defaults) next to the FL-bench one.
PAPER_VARIANTS = ("flute", "fedala", "pfedfda", "floco")
# Fling's baselines (reference-protocols.md §2).
FLING_OPTIONS = {"separate": {"init": "per_client"}}


def fedobp_setup(method: str, dataset: str, alpha: float, seed: int, *,
                 smoke: bool = False, rounds: int = 400, protocol: str = "flbench",
                 reference_options: bool = True, **algo) -> C.ExperimentConfig:
  """FedOBP's protocol (spec §1.3, the authors' logs): 100 clients, Dir(alpha)
  with partition seed 42, 10% participation, E=5, batch 32, SGD lr 0.01
  momentum 0.7, FedAvgCNN, evaluation of all clients every 100 rounds
  (FL-bench's "Max Accuracy" = best over those evaluations).

  ``protocol`` (default ``"flbench"``): the reference protocol preset
  (:mod:`fedjax_pfl.protocols`: FL-bench's partition, client stream and input
  constants); ``"none"``: our defaults. ``reference_options`` (default True):
  the method's :data:`FLBENCH_OPTIONS` (what FL-bench's baseline computed);
  False: the published algorithm. Explicit ``algo`` fields win.
  ``smoke``: digits, 10 clients, 1 round, 1 local epoch (CI)."""
  name = algorithms.canonical_name(method)
  if reference_options:
    algo = {**FLBENCH_OPTIONS.get(name, {}), **algo}
  if name == "fedobp" and "quantile" not in algo:
    algo["quantile"] = FEDOBP_Q.get((dataset, alpha), 0.9999)
  cfg = C.ExperimentConfig(algorithm=name, algo=algo_config(name, **algo))
  data = dict(dataset=dataset, alpha=alpha, num_clients=100, seed=42)
  train = dict(rounds=rounds, participation=0.1, local_epochs=5, batch_size=32, lr=0.01,
               momentum=0.7, seed=seed, eval_every=100)
  if smoke:
    data.update(dataset="digits", num_clients=10)
    train.update(rounds=1, local_epochs=1, eval_every=1, participation=0.2)
  cfg = dataclasses.replace(cfg, data=C.DataConfig(**data), train=C.TrainConfig(**train))
  cfg = apply_protocol(cfg, protocol)
  if smoke and protocol == "flbench":  # digits has no official constants: its own statistics
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                            normalization="train_stats"))
  return cfg


def fedobp_cells(dataset: str, alphas, seeds, *, smoke: bool = False, label: str = "",
                 paper_variants: bool = True):
  """One cell per FedOBP-paper method x alpha x seed (the paper's row order),
  run under the FL-bench protocol with FL-bench's baseline options:
  names ``<method>[-<label>]-a<alpha>-s<seed>``, columns ``[<label> ]α=<alpha>``.
  With ``paper_variants``, each method of :data:`PAPER_VARIANTS` also gets a
  row with the published algorithm (cells ``<method>-paper...``, row
  ``"<Method> (published)"``); the FL-bench rows are named
  ``"<Method> (FL-bench)"`` for those methods."""
  from fedjax_pfl.sweep import Cell
  tag, col = (f"-{label}", f"{label} ") if label else ("", "")
  cells = []
  for m in FEDOBP_METHODS:
    variants = [("", ROW_NAMES[m], True)]
    if paper_variants and m in PAPER_VARIANTS:
      variants = [("-flbench", f"{ROW_NAMES[m]} (FL-bench)", True),
                  ("-paper", f"{ROW_NAMES[m]} (published)", False)]
    for suffix, row, ref in variants:
      cells += [Cell(f"{m}{suffix}{tag}-a{a}-s{s}",
                     fedobp_setup(m, dataset, a, s, smoke=smoke, reference_options=ref),
                     row, f"{col}α={a}")
                for a in alphas for s in seeds]
  return cells


def paper_rows(paper: dict) -> dict:
  """``paper`` with the published value of each :data:`PAPER_VARIANTS` method
  also keyed by its ``(FL-bench)`` and ``(published)`` rows."""
  out = dict(paper)
  for m in PAPER_VARIANTS:
    for (row, col), value in paper.items():
      if row == ROW_NAMES[m]:
        out[(f"{row} (FL-bench)", col)] = value
        out[(f"{row} (published)", col)] = value
  return out


def cell_metrics(sweep_out: str, cell: str) -> list[dict]:
  """The evaluation records of one finished cell."""
  import os

  from fedjax_pfl import io
  return io.read_jsonl(os.path.join(sweep_out, "cells", cell, "metrics.jsonl"))


# FedPURIN Table 1 rows -> registry names (Fling's FedAvg keeps BN statistics local).
FEDPURIN_METHODS = [("Separate", "separate"), ("FedAvg", "fedavg_bn"), ("FedPer", "fedper"),
                    ("FedBN", "fedbn"), ("pFedSD", "pfedsd"), ("FedCAC", "fedcac"),
                    ("FedPURIN", "fedpurin")]


def fling_setup(method: str, dataset: str, alpha: float, seed: int, *, smoke: bool = False,
                **algo) -> C.ExperimentConfig:
  """FedPURIN's protocol (spec §1.4): 20 clients, Fling partition (500 train / 100
  test per client from the official splits, class mix Dir(alpha)), full
  participation, E=5, batch 100, SGD lr 0.1 momentum 0.9, ResNet-8 (ResNet-10 for
  CIFAR-100), T=200 (300 for CIFAR-100), evaluation every round; metric: best over
  rounds of the client-mean accuracy. ``smoke`` (CI): 4 clients with 40 / 20
  samples, FedAvgCNN, 1 round of 1 epoch; Fling needs an official test split, so
  the smoke size reads Fashion-MNIST whatever ``dataset`` is (tests skip it when
  absent). Run under the Fling reference protocol (``protocol="fling"``: raw
  ``[0, 1]`` inputs, PyTorch's BN running variance) with Fling's baseline
  options (:data:`FLING_OPTIONS`: Separate's per-client initial models)."""
  name = algorithms.canonical_name(method)
  algo = {**FLING_OPTIONS.get(name, {}), **algo}
  cfg = C.ExperimentConfig(algorithm=name, algo=algo_config(name, **algo))
  rounds = 300 if dataset == "cifar100" else 200
  model = "resnet10" if dataset == "cifar100" else "resnet8"
  data = dict(dataset=dataset, partition="fling", alpha=alpha, num_clients=20, seed=seed)
  train = dict(rounds=rounds, participation=1.0, local_epochs=5, batch_size=100, lr=0.1,
               momentum=0.9, seed=seed, eval_every=1)
  if smoke:
    data.update(dataset="fashion_mnist", num_clients=4, train_per_client=40, test_per_client=20)
    train.update(rounds=1, local_epochs=1, batch_size=20)
    model = "cnn"
  cfg = dataclasses.replace(cfg, data=C.DataConfig(**data), train=C.TrainConfig(**train),
                            model=C.ModelConfig(name=model))
  return apply_protocol(cfg, "fling")
