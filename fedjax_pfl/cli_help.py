"""Help texts of the command line: one line per option, its default (read
from the config dataclasses, so it cannot drift) and its allowed values
(read from the registries: datasets, partitions, models, algorithms, FedOBP's
norms, scopes and scores).

Choices are listed in the help rather than enforced by argparse, so a bad
value still stops with the project's ``error: <field>=<value> is invalid;
allowed: ...`` line and exit status 2.
"""

import dataclasses
from typing import Any

# flag -> (one-line description, allowed values or range)
_TEXT: dict[str, tuple[str, str]] = {
    "dataset": ("dataset", "{datasets}"),
    "data_dir": ("folder with the dataset's files (IDX files or a TFDS data_dir); None: "
                 "each source's standard location", "a folder"),
    "source": ("where the data is read from (auto: sklearn for digits, IDX files if present, "
               "else tfds)", "{sources}"),
    "partition": ("how examples are split over clients", "{partitions}"),
    "alpha": ("Dirichlet concentration α of the label skew (smaller: more skewed)", "> 0"),
    "clients": ("number of clients N", ">= 1 (at most examples / data.min_samples_per_client "
                "for dirichlet)"),
    "test_ratio": ("share of each client's examples held out as its test set", "[0, 1)"),
    "max_examples": ("use a random subset of this many pooled examples", "None or >= N"),
    "train_per_client": ("train examples per client (partition fling)", ">= 1"),
    "test_per_client": ("test examples per client (partition fling)", ">= 1"),
    "participation": ("share of clients sampled each round", "(0, 1]"),
    "rounds": ("communication rounds", ">= 1"),
    "local_epochs": ("local epochs per round", ">= 1"),
    "batch_size": ("local SGD batch size", ">= 2"),
    "lr": ("local SGD learning rate", "> 0"),
    "momentum": ("local SGD momentum", "[0, 1)"),
    "weight_decay": ("L2 weight decay of local SGD", ">= 0"),
    "seed": ("training seed (model init, client sampling, batches)", "any integer"),
    "eval_every": ("evaluate (and log) every this many rounds, and after the last", ">= 1"),
    "model": ("model (auto: MLP for 8x8 inputs, FedAvgCNN otherwise)", "{models}"),
    "step_loop": ("how local SGD steps run (auto: measured per backend)",
                  "auto, scan, python"),
    "chunk_size": ("clients vmapped at once (None: the whole cohort)", "None or >= 1"),
    "num_devices": ("devices of the clients mesh axis (None: all local devices for vmap)",
                    "None or >= 1"),
    "lanes": ("pack the cohort's clients onto this many vmapped lanes, a lane that finishes "
              "its client takes the next; implies vmap + scan (None: no packing)",
              "None or >= 1"),
    "protocol": ("evaluation protocol of the reference code", "flbench, fling"),
    "quantile": ("FedOBP quantile q: the 1-q share of entries with the highest importance "
                 "scores stays personal", "[0, 1]"),
    "norm": ("FedOBP score normalization", "{norms}"),
    "scope": ("FedOBP: which layers may be personalized", "all, classifier"),
    "score": ("FedOBP importance score", "{scores}"),
}

# flag -> (section, field) of a default that is not in _FLAGS (FedOBP's options).
_FEDOBP = {"quantile", "norm", "scope", "score"}


def _choices() -> dict[str, str]:
  from fedjax_pfl.algorithms.fedobp import SCORES
  from fedjax_pfl.data import KNOWN_DATASETS, PARTITIONS, SOURCES
  from fedjax_pfl.models import MODELS
  from fedjax_pfl.ops.threshold import NORMS
  return {"datasets": ", ".join(KNOWN_DATASETS), "sources": ", ".join(SOURCES),
          "partitions": ", ".join(PARTITIONS), "models": ", ".join(["auto", *sorted(MODELS)]),
          "norms": ", ".join(NORMS), "scores": ", ".join(SCORES)}


def default_of(section: str, field: str) -> Any:
  """The default of ``config.<section>.<field>`` (``algo`` = FedOBP's config)."""
  from fedjax_pfl import config as config_lib
  if section == "algo":
    from fedjax_pfl import algorithms
    cls = algorithms.REGISTRY["fedobp"].config_cls
  else:
    cls = {"data": config_lib.DataConfig, "model": config_lib.ModelConfig,
           "train": config_lib.TrainConfig, "system": config_lib.SystemConfig}[section]
  for f in dataclasses.fields(cls):
    if f.name == field:
      return f.default
  raise KeyError(f"{section}.{field}")


def flag_help(flag: str, section: str | None = None, field: str | None = None) -> str:
  """``"<description> (default: <value>; allowed: <values>) [section.field]"``.

  Args:
    flag: the option's dest name (``clients``, ``quantile``, ...).
    section, field: the config field it sets (FedOBP's flags: ``algo``).
  """
  desc, allowed = _TEXT.get(flag, ("", ""))
  if flag in _FEDOBP:
    section, field = "algo", flag
  parts = []
  if section is not None:
    try:
      parts.append(f"default: {default_of(section, field)}")
    except KeyError:
      pass
  if allowed:
    parts.append("allowed: " + allowed.format(**_choices()))
  where = f" [{'fedobp' if section == 'algo' else section}.{field}]" if section else ""
  text = (desc + (f" ({'; '.join(parts)})" if parts else "") + where).strip()
  return text.replace("%", "%%")  # argparse formats help with %


def choices_text(name: str) -> str:
  """Allowed values of one registry as shown in help texts: ``datasets``,
  ``sources``, ``partitions``, ``models``, ``norms`` or ``scores``."""
  return _choices()[name].replace("%", "%%")
