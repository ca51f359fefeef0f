"""Markdown tables of run summaries (used by the CLI and the multi-run report)."""


def format_table(summaries: list[dict]) -> str:
  """Markdown table of run summaries (accuracies in %).

  Args:
    summaries: ``summary.json`` dicts (``experiment.run``'s return values).

  Returns:
    A Markdown table, one row per summary.
  """
  head = ("| algorithm | rounds | final acc (pooled) | final acc (client mean) | "
          "best acc (pooled) | best round | time (s) |\n|---|---|---|---|---|---|---|")
  rows = [f"| {s['algorithm']} | {s['rounds']} | {_pct(s['final_accuracy'])} | "
          f"{_pct(s['final_client_mean_accuracy'])} | {_pct(s['best_accuracy'])} | "
          f"{s['best_round']} | {s['seconds']:.1f} |" for s in summaries]
  return "\n".join([head, *rows])


def _pct(value) -> str:
  """``100 * value`` with 2 decimals; ``n/a`` for a missing (null) value."""
  return "n/a" if value is None else f"{100 * value:.2f}"
