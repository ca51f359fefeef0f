"""What a workdir holds and what ran in it.

* :func:`fingerprint`: everything that determines a run's computation (the
  config without :data:`config.RESUME_SAFE_FIELDS`, a digest of the pooled
  examples, a digest of the partition, the package version). It is stored
  with every checkpoint and compared when a run is resumed, so a workdir is
  never continued with another run's state.
* :func:`check_new_workdir`: a new run refuses a workdir that already holds a
  run (unless asked to overwrite it), before any data is loaded.
* :func:`load_run_config`: the config a resumed run continues with.
* :func:`environment`: versions, devices and git commit for ``config.json``.
"""

import hashlib
import json
import os
import shutil
import subprocess
from typing import Any

import numpy as np

from fedjax_pfl import config as config_lib
from fedjax_pfl import io
from fedjax_pfl.errors import ConfigError, CorruptFileError, WorkdirError

# Files and folders of a run inside its workdir (removed by ``--overwrite``).
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "summary.md", "accuracy.png",
             "loss.png", "client_accuracy_hist.png", "checkpoints")


def _digest(arrays) -> str:
  h = hashlib.blake2b(digest_size=16)
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def data_digests(data) -> dict[str, str]:
  """Digests of a loaded ``FederatedData``: ``data`` (pooled examples and
  labels) and ``partition`` (the per-client index rows and counts)."""
  return {"data": _digest([data.x, data.y]),
          "partition": _digest([data.train_idx, data.train_counts, data.test_idx,
                                data.test_counts])}


def fingerprint(config: config_lib.ExperimentConfig, digests: dict[str, str]) -> dict[str, Any]:
  """The identity of a run's computation (JSON-ready).

  Args:
    config: the run's config.
    digests: :func:`data_digests` of its loaded data.

  Returns:
    ``{"config": computation dict, "data": digest, "partition": digest,
    "code": package version}``.
  """
  from fedjax_pfl import __version__
  fp = {"config": config_lib.computation_dict(config), **digests, "code": __version__}
  return json.loads(io.dumps(fp))  # as stored (tuples become lists)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_differences(before: dict, now: dict) -> list[str]:
  """``field (before -> now)`` for every differing leaf of two config dicts."""
  a, b = _flatten(before), _flatten(now)
  return [f"{k} ({a.get(k, '-')!r} -> {b.get(k, '-')!r})" for k in sorted(set(a) | set(b))
          if a.get(k, "-") != b.get(k, "-")]


def check_fingerprint(workdir: str, stored: dict | None, current: dict) -> None:
  """Refuses to resume ``workdir`` when its checkpoint was written by another run.

  Raises:
    WorkdirError: naming what differs (config fields, data, partition, code).
  """
  advice = ("; start the new run in another --workdir (or replace the old one with "
            "--overwrite)")
  if stored is None:
    raise WorkdirError(f"--resume {workdir}: its checkpoint has no fingerprint (written by an "
                       "older fedjax-pfl), so it cannot be checked against this run" + advice)
  diffs = config_differences(stored.get("config", {}), current["config"])
  for key, what in (("data", "the examples"), ("partition", "the client partition"),
                    ("code", "the fedjax-pfl version")):
    if stored.get(key) != current[key]:
      diffs.append(f"{what} ({key} {stored.get(key)} -> {current[key]})")
  if diffs:
    raise WorkdirError(f"--resume {workdir}: the checkpoint belongs to a different run; it "
                       f"differs in {'; '.join(diffs)}" + advice)


def held_run(workdir: str) -> list[str]:
  """The run files present in ``workdir`` (empty: no run there)."""
  if not os.path.isdir(workdir):
    return []
  return [name for name in RUN_FILES if os.path.exists(os.path.join(workdir, name))]


def check_new_workdir(workdir: str, config: config_lib.ExperimentConfig, *,
                      overwrite: bool = False) -> None:
  """Lets a new run start in ``workdir``: refuses a workdir holding a run, or
  (``overwrite``) removes that run's files (:data:`RUN_FILES` only).

  Raises:
    WorkdirError: ``workdir`` holds a run and ``overwrite`` is False (the
      message says whether its config differs and how to proceed).
  """
  held = held_run(workdir)
  if not held:
    return
  if overwrite:
    for name in held:
      path = os.path.join(workdir, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      else:
        os.unlink(path)
    return
  what = "a run"
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    try:
      before = config_lib.computation_dict(config_lib.from_dict(io.read_json(path)))
      diffs = config_differences(before, config_lib.computation_dict(config))
      what = (f"a different run (it differs in {'; '.join(diffs[:4])}"
              f"{'; ...' if len(diffs) > 4 else ''})" if diffs else "a run of this config")
    except (CorruptFileError, ConfigError, KeyError, TypeError, ValueError):
      what = "a run (its config.json is unreadable)"
  raise WorkdirError(f"--workdir {workdir} holds {what}; continue it with `fedjax-pfl run "
                     f"--resume {workdir}`, choose another --workdir, or pass --overwrite to "
                     "replace it")


def load_run_config(workdir: str, overrides: list[str]) -> config_lib.ExperimentConfig:
  """The config of the run in ``workdir`` with resume-safe ``overrides``.

  Raises:
    ConfigError: no config.json there, or an override outside
      :data:`config.RESUME_SAFE_FIELDS`.
    CorruptFileError: config.json is not valid JSON or not a config.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"--resume {workdir}: no config.json there; allowed: the workdir of an "
                      "earlier run")
  d = io.read_json(path)
  try:
    config = config_lib.from_dict(d)
  except (KeyError, TypeError, AttributeError) as e:
    raise CorruptFileError(f"{path} is corrupt (not a run config: {type(e).__name__} "
                           f"{e})") from None
  config_lib.check_resume_overrides(config, overrides)
  return config_lib.validate(config_lib.apply_overrides(config, overrides))


def git_commit() -> str | None:
  """The git commit of the fedjax_pfl source tree (``+dirty`` with local
  changes), or None outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=5, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return out + ("+dirty" if dirty else "") if out else None


def environment() -> dict[str, Any]:
  """Versions (fedjax_pfl, jax, jaxlib), devices (backend, kind, count,
  processes) and the git commit, for ``config.json``."""
  import jax
  import jaxlib

  from fedjax_pfl import __version__
  devices = jax.devices()
  return {"fedjax_pfl": __version__, "jax": jax.__version__,
          "jaxlib": getattr(jaxlib, "__version__", None),
          "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "process_count": jax.process_count(),
          "git_commit": git_commit()}
