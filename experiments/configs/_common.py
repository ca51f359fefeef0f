"""Shared setups of the papers' experiments (spec §1.3 FedOBP, §1.4 FedPURIN)."""

import dataclasses

from fedjax_pfl import algorithms
from fedjax_pfl import config as C

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


def fedobp_setup(method: str, dataset: str, alpha: float, seed: int, *,
                 smoke: bool = False, rounds: int = 400, **algo) -> C.ExperimentConfig:
  """FedOBP's protocol (spec §1.3, the authors' logs): 100 clients, Dir(alpha)
  with partition seed 42, 10% participation, E=5, batch 32, SGD lr 0.01
  momentum 0.7, FedAvgCNN, evaluation of all clients every 100 rounds
  (FL-bench's "Max Accuracy" = best over those evaluations).
  ``smoke``: digits, 10 clients, 1 round, 1 local epoch (CI)."""
  name = algorithms.canonical_name(method)
  if name == "fedobp" and "quantile" not in algo:
    algo["quantile"] = FEDOBP_Q.get((dataset, alpha), 0.9999)
  cfg = C.ExperimentConfig(algorithm=name, algo=algo_config(name, **algo))
  data = dict(dataset=dataset, alpha=alpha, num_clients=100, seed=42)
  train = dict(rounds=rounds, participation=0.1, local_epochs=5, batch_size=32, lr=0.01,
               momentum=0.7, seed=seed, eval_every=100)
  if smoke:
    data.update(dataset="digits", num_clients=10)
    train.update(rounds=1, local_epochs=1, eval_every=1, participation=0.2)
  return dataclasses.replace(cfg, data=C.DataConfig(**data), train=C.TrainConfig(**train))


def fedobp_cells(dataset: str, alphas, seeds, *, smoke: bool = False, label: str = ""):
  """One cell per FedOBP-paper method x alpha x seed (the paper's row order):
  names ``<method>[-<label>]-a<alpha>-s<seed>``, columns ``[<label> ]α=<alpha>``."""
  from fedjax_pfl.sweep import Cell
  tag, col = (f"-{label}", f"{label} ") if label else ("", "")
  return [Cell(f"{m}{tag}-a{a}-s{s}", fedobp_setup(m, dataset, a, s, smoke=smoke),
               ROW_NAMES[m], f"{col}α={a}")
          for m in FEDOBP_METHODS for a in alphas for s in seeds]


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
  absent)."""
  name = algorithms.canonical_name(method)
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
  return dataclasses.replace(cfg, data=C.DataConfig(**data), train=C.TrainConfig(**train),
                             model=C.ModelConfig(name=model))
