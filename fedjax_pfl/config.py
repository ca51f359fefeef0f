"""Experiment configuration: frozen dataclasses, validation, ``--set`` overrides.

Every field is checked by :func:`validate` before any compute; errors name the
field, the value and the allowed range.
"""

import dataclasses
import json
import math
import types
import typing
from typing import Any

from fedjax_pfl.errors import ConfigError


def _registry():
  """The algorithm registry, imported on first use (importing this module does
  not import every algorithm)."""
  from fedjax_pfl import algorithms
  return algorithms


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """Dataset and partition (FL-bench Dirichlet procedure by default;
  ``partition="fling"`` is FedCAC/FedPURIN's: per-client class mixes from
  Dir(alpha), ``train_per_client`` / ``test_per_client`` samples drawn from the
  official train / test splits; ``partition="flbench"`` is FL-bench's split bit
  for bit, with numpy's legacy ``RandomState(seed)``).

  ``seed`` is the partition seed, independent of ``train.seed`` (FL-bench and
  the FedOBP configs: 42). ``normalization``: ``"train_stats"`` (default;
  train-split mean and std), ``"flbench"`` (FL-bench's fixed per-dataset
  constants) or ``"none"`` (raw ``[0, 1]`` pixels, Fling's inputs); see
  :mod:`fedjax_pfl.data.sources`."""
  dataset: str = "digits"
  data_dir: str | None = None
  source: str = "auto"
  partition: str = "dirichlet"
  alpha: float = 0.1
  num_clients: int = 20
  shards_per_client: int = 2
  min_samples_per_client: int = 10
  max_retries: int = 1000
  test_ratio: float = 0.25
  seed: int = 42
  max_examples: int | None = None
  train_per_client: int = 500
  test_per_client: int = 100
  normalization: str = "train_stats"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Model name: ``auto`` (MLP for 8x8 inputs, FedAvgCNN otherwise), ``cnn``, ``mlp``,
  ``resnet8``, ``resnet10`` (BatchNorm; running statistics are non-trainable leaves).

  ``conv``: how convolutions run, ``auto`` (im2col + matmul on CPU, XLA's
  convolution elsewhere), ``xla`` or ``im2col`` (:mod:`fedjax_pfl.models.conv`);
  same params and function, different speed.

  ``pool``: how max pooling and its gradient run, ``auto`` (explicit window
  slices on CPU, ``reduce_window`` elsewhere), ``xla`` or ``slices``
  (:mod:`fedjax_pfl.models.pool`). Same params and function, different speed.

  ``bn_running_var``: the batch variance in BatchNorm's running-variance
  update, ``biased`` (flax, default) or ``unbiased`` (PyTorch, as Fling runs
  it); only models with BatchNorm (``resnet8``, ``resnet10``) use it."""
  name: str = "auto"
  conv: str = "auto"
  pool: str = "auto"
  bn_running_var: str = "biased"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Rounds, sampling and local SGD (defaults: the FedOBP logs' setup).

  ``client_stream``: how each round's cohort is drawn, ``"uniform"`` (default;
  from the run's key) or ``"flbench"`` (FL-bench's stream, drawn up front with
  Python's ``random`` seeded by ``train.seed``:
  :func:`fedjax_pfl.data.streams.flbench_client_stream`), which the engine
  reads as a fixed ``[rounds, C]`` table on every execution strategy (the
  compiled multi-round loop included); runs with it are not batched over
  seeds (each seed has its own stream).

  ``eval_batch_size``: test examples per evaluation forward pass; ``None``
  (default): the backend's measured default, 32 on CPU and 256 elsewhere
  (:func:`fedjax_pfl.core.execution.default_eval_batch_size`). Only the speed
  and the float rounding of summed test losses depend on it."""
  rounds: int = 100
  participation: float = 0.1
  local_epochs: int = 5
  batch_size: int = 32
  lr: float = 0.01
  momentum: float = 0.7
  weight_decay: float = 0.0
  seed: int = 0
  eval_every: int = 10
  eval_batch_size: int | None = None
  checkpoint_every: int = 10
  keep_checkpoints: int = 3
  finetune_epochs: int = 0
  client_stream: str = "uniform"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SystemConfig:
  """Client-parallel execution; ``auto`` picks the measured per-backend default.

  ``round_loop``: ``"compiled"`` runs the rounds between two host sync points
  (evaluation, checkpoint, end) as one compiled ``lax.scan`` over rounds
  (needs vmap + scan); ``"host"`` one program per round; ``"auto"``:
  compiled whenever the execution is vmap + scan (accelerators), else host.

  ``data_placement``: ``"replicated"`` puts the pooled dataset on every device;
  ``"by_client"`` lays it out client-major and splits it over the ``clients``
  mesh axis with the client state, so each process materializes (and each
  device holds) only the examples of its own clients (every process still
  reads the dataset files to compute the partition).

  ``lanes``: with vmap + scan, pack the cohort's clients onto this many
  vmapped lanes (a lane that finishes its client takes the next one;
  :mod:`fedjax_pfl.core.lanes`) instead of padding every client to the
  longest; ``None``: no packing. Results are the same.

  ``eval_chunk_size``: with vmap, clients evaluated at once (and mapped at
  once by ``personalize_with_data``); ``None``: 1 on CPU, else ``chunk_size``
  or every client (:meth:`fedjax_pfl.core.execution.Execution.eval_chunk`).
  Results are the same.
  """
  parallelism: str = "auto"
  step_loop: str = "auto"
  chunk_size: int | None = None
  num_devices: int | None = None
  lanes: int | None = None
  eval_chunk_size: int | None = None
  round_loop: str = "auto"
  data_placement: str = "replicated"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
  """A whole run. ``algo`` is the algorithm's own config dataclass.
  ``protocol`` names the reference protocol preset the run started from
  (:mod:`fedjax_pfl.protocols`; ``"none"``: our defaults); fields set
  explicitly after the preset win over it."""
  algorithm: str = "fedobp"
  protocol: str = "none"
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  train: TrainConfig = TrainConfig()
  system: SystemConfig = SystemConfig()
  algo: Any = None

  def __post_init__(self):
    algorithms = _registry()
    name = algorithms.canonical_name(self.algorithm)
    object.__setattr__(self, "algorithm", name)
    cls = algorithms.REGISTRY[name].config_cls
    if self.algo is None:
      object.__setattr__(self, "algo", cls())
    elif not isinstance(self.algo, cls):
      raise ConfigError(f"algo must be a {cls.__name__} for algorithm {name!r}")


def _check(cond: bool, field: str, value: Any, allowed: str) -> None:
  if not cond:
    raise ConfigError(f"{field}={value!r} is invalid; allowed: {allowed}")


def _check_finite_floats(config: "ExperimentConfig") -> None:
  """Every float field of every section (``algo`` included) is finite."""
  for section in ("data", "model", "train", "system", "algo"):
    obj = getattr(config, section)
    for f in dataclasses.fields(obj):
      value = getattr(obj, f.name)
      if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{section}.{f.name}={value!r} is invalid; allowed: a finite number")


def validate(config: ExperimentConfig) -> ExperimentConfig:
  """Checks every field; returns ``config`` unchanged or raises ConfigError."""
  from fedjax_pfl.data import (
    CLIENT_STREAMS,
    FLBENCH_STATS,
    KNOWN_DATASETS,
    NORMALIZATIONS,
    PARTITIONS,
    SOURCES,
  )
  from fedjax_pfl.protocols import PROTOCOLS
  _check_finite_floats(config)
  d, t, s = config.data, config.train, config.system
  _check(config.protocol in ("none", *PROTOCOLS), "protocol", config.protocol,
         ", ".join(("none", *PROTOCOLS)))
  _check(d.dataset in KNOWN_DATASETS, "data.dataset", d.dataset, str(sorted(KNOWN_DATASETS)))
  _check(d.source in SOURCES, "data.source", d.source, ", ".join(SOURCES))
  _check(d.partition in PARTITIONS, "data.partition", d.partition, ", ".join(PARTITIONS))
  _check(d.alpha > 0, "data.alpha", d.alpha, "> 0")
  _check(d.num_clients >= 1, "data.num_clients", d.num_clients, ">= 1")
  _check(d.shards_per_client >= 1, "data.shards_per_client", d.shards_per_client, ">= 1")
  _check(d.min_samples_per_client >= 0, "data.min_samples_per_client",
         d.min_samples_per_client, ">= 0")
  _check(d.max_retries >= 1, "data.max_retries", d.max_retries, ">= 1")
  _check(0 <= d.test_ratio < 1, "data.test_ratio", d.test_ratio, "[0, 1)")
  _check(d.test_ratio > 0 or d.partition == "fling", "data.test_ratio", d.test_ratio,
         "(0, 1) (0 leaves every client without test data; data.partition=fling takes "
         "data.test_per_client from the official test split instead)")
  _check(d.train_per_client >= 1, "data.train_per_client", d.train_per_client, ">= 1")
  _check(d.test_per_client >= 1, "data.test_per_client", d.test_per_client, ">= 1")
  _check(d.max_examples is None or d.max_examples >= d.num_clients, "data.max_examples",
         d.max_examples, f"None or >= data.num_clients ({d.num_clients})")
  _check(d.normalization in NORMALIZATIONS, "data.normalization", d.normalization,
         ", ".join(NORMALIZATIONS))
  _check(d.normalization != "flbench" or d.dataset in FLBENCH_STATS, "data.normalization",
         d.normalization, f"flbench only for {', '.join(FLBENCH_STATS)} (data.dataset="
         f"{d.dataset!r}); train_stats or none otherwise")
  from fedjax_pfl.models import MODELS
  _check(config.model.name in ("auto", *MODELS), "model.name", config.model.name,
         str(["auto", *sorted(MODELS)]))
  from fedjax_pfl.models.conv import CONV_IMPLS
  _check(config.model.conv in CONV_IMPLS, "model.conv", config.model.conv,
         ", ".join(CONV_IMPLS))
  from fedjax_pfl.models.resnet import BN_RUNNING_VARS
  _check(config.model.bn_running_var in BN_RUNNING_VARS, "model.bn_running_var",
         config.model.bn_running_var, ", ".join(BN_RUNNING_VARS))
  from fedjax_pfl.models.pool import POOL_IMPLS
  _check(config.model.pool in POOL_IMPLS, "model.pool", config.model.pool,
         ", ".join(POOL_IMPLS))
  _check(t.rounds >= 1, "train.rounds", t.rounds, ">= 1")
  _check(0 < t.participation <= 1, "train.participation", t.participation, "(0, 1]")
  _check(t.local_epochs >= 1, "train.local_epochs", t.local_epochs, ">= 1")
  _check(t.batch_size >= 2, "train.batch_size", t.batch_size, ">= 2 (batches of 1 are skipped)")
  _check(t.lr > 0, "train.lr", t.lr, "> 0")
  _check(0 <= t.momentum < 1, "train.momentum", t.momentum, "[0, 1)")
  _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
  _check(t.eval_every >= 1, "train.eval_every", t.eval_every, ">= 1")
  _check(t.eval_batch_size is None or t.eval_batch_size >= 1, "train.eval_batch_size",
         t.eval_batch_size, ">= 1 or None (auto: 32 on CPU, 256 elsewhere)")
  _check(t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every,
         ">= 0 (0: only at the end)")
  _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, ">= 1")
  _check(t.finetune_epochs >= 0, "train.finetune_epochs", t.finetune_epochs,
         ">= 0 (0: no evaluation after fine-tuning)")
  _check(t.client_stream in CLIENT_STREAMS, "train.client_stream", t.client_stream,
         ", ".join(CLIENT_STREAMS))
  _check(s.parallelism in ("auto", "vmap", "sequential"), "system.parallelism",
         s.parallelism, "auto, vmap, sequential")
  _check(s.step_loop in ("auto", "scan", "python"), "system.step_loop", s.step_loop,
         "auto, scan, python")
  _check(s.chunk_size is None or s.chunk_size >= 1, "system.chunk_size", s.chunk_size,
         "None or >= 1")
  _check(s.num_devices is None or s.num_devices >= 1, "system.num_devices", s.num_devices,
         "None or >= 1")
  _check(s.lanes is None or s.lanes >= 1, "system.lanes", s.lanes, "None or >= 1")
  _check(s.eval_chunk_size is None or s.eval_chunk_size >= 1, "system.eval_chunk_size",
         s.eval_chunk_size, "None or >= 1")
  _check(s.lanes is None or s.chunk_size is None, "system.lanes", s.lanes,
         "None when system.chunk_size is set (lanes bound the clients vmapped at once)")
  _check(s.lanes is None or (s.parallelism in ("auto", "vmap")
                             and s.step_loop in ("auto", "scan")), "system.lanes", s.lanes,
         "None unless system.parallelism and system.step_loop are vmap and scan (or auto)")
  _check(s.data_placement in ("replicated", "by_client"), "system.data_placement",
         s.data_placement, "replicated, by_client")
  _check(s.round_loop in ("auto", "host", "compiled"), "system.round_loop", s.round_loop,
         "auto, host, compiled")
  _check(s.round_loop != "compiled" or (s.parallelism, s.step_loop) == ("vmap", "scan"),
         "system.round_loop", s.round_loop,
         "compiled only with system.parallelism=vmap and system.step_loop=scan")
  try:
    config.algo.validate()
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return config


# -- overrides and serialization ------------------------------------------------
def _parse(value: str, annotation: Any) -> Any:
  origin = typing.get_origin(annotation)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(annotation)
    if value.lower() in ("none", "null") and type(None) in args:
      return None
    annotation = next(a for a in args if a is not type(None))
  if annotation is bool:
    if value.lower() in ("1", "true", "yes", "on"):
      return True
    if value.lower() in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"expected a boolean, got {value!r}")
  if annotation in (int, float, str):
    return annotation(value)
  return value


def _replace_path(obj: Any, path: list[str], value: str, full: str) -> Any:
  names = {f.name: f for f in dataclasses.fields(obj)}
  if path[0] not in names:
    raise ConfigError(f"--set {full}: unknown field {path[0]!r}; allowed: {sorted(names)}")
  field = names[path[0]]
  if len(path) > 1:
    child = getattr(obj, path[0])
    return dataclasses.replace(obj, **{path[0]: _replace_path(child, path[1:], value, full)})
  try:
    parsed = _parse(value, field.type)
  except ValueError as e:
    raise ConfigError(f"--set {full}: {e}") from None
  return dataclasses.replace(obj, **{path[0]: parsed})


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
  """Applies ``section.field=value`` overrides (``algo.`` or the algorithm's
  name selects the algorithm config, e.g. ``fedobp.quantile=0.999``)."""
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set {item!r}: expected section.field=value")
    key, value = item.split("=", 1)
    path = key.strip().split(".")
    if path[0] in (config.algorithm, "algo"):
      path[0] = "algo"
    if path[0] == "algorithm" and len(path) == 1:
      raise ConfigError("--set algorithm=...: use --algorithm")
    if path[0] == "protocol" and len(path) == 1:
      raise ConfigError("--set protocol=...: use --protocol (it also sets the preset's fields)")
    config = _replace_path(config, path, value.strip(), item)
  return config


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
  """JSON-ready dict (``config.json``)."""
  return dataclasses.asdict(config)


def from_dict(d: dict[str, Any]) -> ExperimentConfig:
  """Inverse of :func:`to_dict`."""
  algorithms = _registry()
  name = algorithms.canonical_name(d["algorithm"])
  algo_cls = algorithms.REGISTRY[name].config_cls
  return ExperimentConfig(
      algorithm=name, protocol=d.get("protocol", "none"), data=DataConfig(**d["data"]),
      model=ModelConfig(**d["model"]),
      train=TrainConfig(**d["train"]), system=SystemConfig(**d["system"]),
      algo=algo_cls(**(d.get("algo") or {})))


def dumps(config: ExperimentConfig) -> str:
  return json.dumps(to_dict(config), indent=2, sort_keys=True)


# -- resume ---------------------------------------------------------------------
# Fields a resumed run may change: they cannot change what has been computed
# (train.rounds only upward; checked against the checkpoint when resuming;
# train.eval_batch_size and system.eval_chunk_size change only the float rounding
# of later summed test losses).
RESUME_SAFE_FIELDS = ("train.rounds", "train.eval_every", "train.checkpoint_every",
                      "train.keep_checkpoints", "train.eval_batch_size",
                      "system.eval_chunk_size")


def check_resume_overrides(config: ExperimentConfig, overrides: list[str]) -> None:
  """Refuses ``--set`` items that a resumed run may not change.

  Raises:
    ConfigError: naming the first field outside :data:`RESUME_SAFE_FIELDS`.
  """
  for item in overrides:
    key = item.split("=", 1)[0].strip()
    path = key.split(".")
    if path[0] == config.algorithm:
      path[0] = "algo"
    if ".".join(path) not in RESUME_SAFE_FIELDS:
      raise ConfigError(f"--resume --set {item}: {key} would change the computation of the run "
                        f"being resumed; allowed with --resume: {', '.join(RESUME_SAFE_FIELDS)} "
                        "(start a new run in another --workdir to change it)")


def computation_dict(config: ExperimentConfig) -> dict[str, Any]:
  """:func:`to_dict` without :data:`RESUME_SAFE_FIELDS`: the fields that
  determine the computation (compared when a run is resumed)."""
  d = to_dict(config)
  for name in RESUME_SAFE_FIELDS:
    section, field = name.split(".")
    d[section].pop(field, None)
  return d
