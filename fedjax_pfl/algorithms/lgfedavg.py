"""LG-FedAvg: local representations, global layers.

Liang, Liu, Ziyin, Allen, Auerbach, Brent, Salakhutdinov, Morency. "Think
Locally, Act Globally: Federated Learning with Local and Global
Representations." arXiv:2001.01523, 2020. Reference: FL-bench
``src/client/lgfedavg.py`` (used for the FedOBP tables).

The model's layers (top-level param groups) are split into global and
personal ones; everything else is FedPer (see :mod:`fedper`): joint local SGD
from (global layers, own personal layers), upload and average the global
layers, evaluate with global + own personal layers.

* ``split="flbench"`` (default, FL-bench's INVERTED split): the FIRST
  ``num_global_layers`` layers are global, all later ones personal. With the
  FedAvgCNN and ``num_global_layers=1``: ``conv1`` shared; ``conv2, fc1,
  classifier`` personal.
* ``split="original"`` (the paper): the LAST ``num_global_layers`` layers are
  global, the lower (representation) layers personal.

Layer order is the definition order of the flax model, read from the
insertion order of the params dict created by ``model.init`` (``conv1,
conv2, fc1, classifier`` / ``fc1, fc2, classifier``); FL-bench uses the order
of ``named_modules()`` restricted to Conv/BN/Linear, which is the same for our
models (they have no BN).

``unseen_personal="server_mean"``: FL-bench's treatment of personal layers
(see :mod:`fedjax_pfl.algorithms.fedper`).

Degenerate equivalence: ``num_global_layers`` = number of layers (either
split) makes every layer global: FedAvg round for round.
"""

import dataclasses

from fedjax_pfl.algorithms._compose import layer_names, layer_rules, partition
from fedjax_pfl.algorithms.fedper import PERSONAL, check_unseen, fedper
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm

SPLITS = ("flbench", "original")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LGFedAvgConfig:
  """LG-FedAvg hyperparameters.

  Attributes:
    num_global_layers: number of global layers, ``0 <= g <= L``.
    split: ``"flbench"`` (first g layers global) or ``"original"`` (last g).
    unseen_personal: ``"init"`` (published) or ``"server_mean"`` (FL-bench:
      all layers averaged, an untrained client uses the average personal
      layers; see :mod:`fedjax_pfl.algorithms.fedper`).
  """
  num_global_layers: int = 1
  split: str = "flbench"
  unseen_personal: str = "init"

  def validate(self) -> None:
    if self.num_global_layers < 0:
      raise ValueError(f"lgfedavg.num_global_layers={self.num_global_layers}; allowed: >= 0")
    if self.split not in SPLITS:
      raise ValueError(f"lgfedavg.split={self.split!r}; allowed: {list(SPLITS)}")
    check_unseen("lgfedavg", self.unseen_personal)


def personal_layers(names: list[str], num_global_layers: int, split: str) -> list[str]:
  """The personal layers among ``names`` (definition order)."""
  if num_global_layers > len(names):
    raise ValueError(f"lgfedavg.num_global_layers={num_global_layers}; allowed: "
                     f"0..{len(names)} (model layers: {names})")
  if split == "flbench":
    return names[num_global_layers:]
  return names[:len(names) - num_global_layers]


def _build(cfg: LGFedAvgConfig, *, spec, params) -> Algorithm:
  cfg.validate()
  names = personal_layers(layer_names(params), cfg.num_global_layers, cfg.split)
  split = partition(params, layer_rules(names, PERSONAL), PERSONAL)
  return fedper(local=spec.program(), personal=split, name="lgfedavg",
                unseen_personal=cfg.unseen_personal)


SPECS = {"lgfedavg": AlgorithmSpec(LGFedAvgConfig, _build,
                                   "LG-FedAvg (Liang et al. 2020), FL-bench's layer split")}
ALIASES = {"lg_fedavg": "lgfedavg"}
