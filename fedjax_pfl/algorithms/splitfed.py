"""SplitFed baselines of FlexP-SFL: one shared cut, with or without personal heads.

Thapa, Arachchige, Camtepe, Sun. "SplitFed: When Federated Learning Meets Split
Learning." AAAI 2022, arXiv:2004.12088 (SplitFedV1: client-side and server-side
models are both FedAvg-ed every round).

Every client uses the same cut: the cut of the weakest budget in ``budgets``
(:func:`fedjax_pfl.models.flops.select_cut`), so that every client can afford
it. ``splitfed``: all blocks shared (client side averaged by the fed server,
server side averaged by the main server). ``splitfed_ph``: the same with a
personal head (the last block, on the server side, kept per client). No
alignment term. The accounting metrics are those of
:mod:`fedjax_pfl.algorithms.flexp_sfl` (the client side is refreshed from the
global model every round, so ``model_down_bytes = model_up_bytes``).

Degenerate equivalences (the split only changes the accounting): ``splitfed``
is FedAvg round for round; ``splitfed_ph`` is FedPer with the classifier
personal.
"""

import dataclasses

from fedjax_pfl.algorithms.flexp_sfl import check_budgets, parse_budgets, split_learning
from fedjax_pfl.algorithms.spec import AlgorithmSpec
from fedjax_pfl.core.algorithm import Algorithm


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitFedConfig:
  """Attributes: budgets: compute budgets (tuple or comma-separated string);
  the shared cut is the smallest budget's."""
  budgets: tuple[float, ...] | str = (0.25, 0.5, 1.0)

  def __post_init__(self):
    parsed = parse_budgets(self.budgets)
    if parsed:
      object.__setattr__(self, "budgets", parsed)

  def validate(self) -> None:
    check_budgets("splitfed", self.budgets)


def _builder(name: str, personal: str):
  def build(cfg: SplitFedConfig, *, spec, params) -> Algorithm:
    cfg.validate()
    return split_learning(spec=spec, params=params, name=name, budgets=cfg.budgets,
                          shared_cut=True, personal=personal, align_lambda=0.0)
  return build


SPECS = {
    "splitfed": AlgorithmSpec(SplitFedConfig, _builder("splitfed", "none"),
                              "SplitFed (Thapa et al. 2022): weakest client's cut, all shared"),
    "splitfed_ph": AlgorithmSpec(SplitFedConfig, _builder("splitfed_ph", "head"),
                                 "SplitFed with personal heads (weakest cut)"),
}
