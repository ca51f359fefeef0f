"""Config files for ``fedjax-pfl run|compare --config FILE``.

Accepted files:

* ``.json`` / ``.yaml`` / ``.yml``: the config sections as in a run's
  ``config.json`` (``algorithm``, ``data``, ``model``, ``train``, ``system``,
  ``algo``); any subset, the rest keeps its defaults. A run's own
  ``config.json`` reproduces that run.
* ``.py``: config as code, defining ``get_config()`` (an
  :class:`~fedjax_pfl.config.ExperimentConfig` or such a dict) or
  ``get_sweep(smoke=False)`` (a sweep config of ``experiments/configs/``;
  ``--cell`` picks one of its cells by name or fnmatch pattern).

The command's named flags, then its ``--set`` overrides, apply on top.
"""

import dataclasses
import fnmatch
import importlib.util
import json
import os
import sys
from typing import Any

from fedjax_pfl import algorithms
from fedjax_pfl import config as config_lib
from fedjax_pfl.errors import ConfigError

_SECTIONS = {"data": config_lib.DataConfig, "model": config_lib.ModelConfig,
             "train": config_lib.TrainConfig, "system": config_lib.SystemConfig}


def from_partial_dict(d: dict[str, Any]) -> config_lib.ExperimentConfig:
  """An :class:`ExperimentConfig` from a dict with any subset of the sections.

  Raises:
    ConfigError: an unknown section or field (names it and the allowed ones),
      or no ``algorithm``.
  """
  # "run" is what a run's config.json records about how it ran (not a setting).
  unknown = set(d) - {"algorithm", "algo", "protocol", "run", *_SECTIONS}
  if unknown:
    raise ConfigError(f"config file: unknown sections {sorted(unknown)}; allowed: "
                      f"{sorted(['algorithm', 'algo', 'protocol', *_SECTIONS])}")
  if "algorithm" not in d:
    raise ConfigError("config file: algorithm is missing; allowed: "
                      + ", ".join(sorted(algorithms.REGISTRY)))
  name = algorithms.canonical_name(d["algorithm"])
  sections = {}
  for section, cls in [*_SECTIONS.items(), ("algo", algorithms.REGISTRY[name].config_cls)]:
    fields = d.get(section) or {}
    if not isinstance(fields, dict):
      raise ConfigError(f"config file: {section}={fields!r} is invalid; allowed: a mapping of "
                        "fields")
    names = {f.name for f in dataclasses.fields(cls)}
    bad = set(fields) - names
    if bad:
      raise ConfigError(f"config file: {section}.{sorted(bad)[0]} is unknown; allowed: "
                        f"{sorted(names)}")
    sections[section] = cls(**fields)
  return config_lib.ExperimentConfig(algorithm=name, protocol=d.get("protocol", "none"),
                                     **sections)


def _import(path: str):
  folder = os.path.dirname(os.path.abspath(path))
  if folder not in sys.path:
    sys.path.insert(0, folder)  # sweep configs import their sibling `_common.py`
  spec = importlib.util.spec_from_file_location("fedjax_pfl_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(path: str, cell: str | None = None) -> config_lib.ExperimentConfig:
  """Reads a config file (see the module docstring); not yet validated.

  Args:
    path: ``.json``, ``.yaml``, ``.yml`` or ``.py`` file.
    cell: for a sweep config, the cell's name or an fnmatch pattern that
      matches exactly one cell.

  Raises:
    ConfigError: a missing file, another suffix, bad contents, or a sweep
      config whose cell is not named uniquely.
  """
  if not os.path.exists(path):
    raise ConfigError(f"--config {path!r} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".json":
    with open(path) as f:
      return from_partial_dict(json.load(f))
  if ext in (".yaml", ".yml"):
    try:
      import yaml
    except ImportError:
      raise ConfigError(f"--config {path}: reading YAML needs PyYAML (pip install pyyaml); "
                        "allowed without it: .json, .py") from None
    with open(path) as f:
      return from_partial_dict(yaml.safe_load(f) or {})
  if ext != ".py":
    raise ConfigError(f"--config {path!r} is invalid; allowed: a .json, .yaml, .yml or .py file")
  module = _import(path)
  if hasattr(module, "get_config"):
    config = module.get_config()
    return from_partial_dict(config) if isinstance(config, dict) else config
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"--config {path}: defines neither get_config() nor get_sweep(smoke)")
  cells = module.get_sweep(smoke=False).cells
  names = [c.name for c in cells]
  if cell is None and len(cells) == 1:
    return cells[0].config
  if cell is None:
    raise ConfigError(f"--config {path} is a sweep of {len(cells)} cells: --cell NAME is "
                      f"required; allowed: e.g. {', '.join(names[:4])}, ...")
  hits = [c for c in cells if c.name == cell] or [
      c for c in cells if fnmatch.fnmatchcase(c.name, cell)]
  if len(hits) != 1:
    raise ConfigError(f"--cell {cell!r} matches {len(hits)} cells of {path}; allowed: one of "
                      f"{', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
  return hits[0].config


def base_config(path: str | None, algorithm: str | None,
                cell: str | None = None) -> config_lib.ExperimentConfig:
  """The config that the command's flags start from.

  Args:
    path: ``--config`` file, or None for the defaults.
    algorithm: ``--algorithm`` (or one of ``compare``'s), or None to keep the
      file's. A different algorithm than the file's keeps the file's data,
      model, train and system sections and takes its own algorithm defaults.
    cell: ``--cell`` (sweep configs).

  Raises:
    ConfigError: see :func:`load`; neither a file nor an algorithm.
  """
  if path is None:
    if cell is not None:
      raise ConfigError(f"--cell {cell!r} is invalid without --config; allowed: with a sweep "
                        "config file")
    if not algorithm:
      raise ConfigError("--algorithm is required (or --config FILE)")
    return config_lib.ExperimentConfig(algorithm=algorithm)
  if cell is not None and os.path.splitext(path)[1].lower() != ".py":
    raise ConfigError(f"--cell {cell!r}: only for a sweep config (.py with get_sweep)")
  config = load(path, cell)
  if algorithm and algorithms.canonical_name(algorithm) != config.algorithm:
    config = dataclasses.replace(config, algorithm=algorithms.canonical_name(algorithm),
                                 algo=None)
  return config
