"""What the FFGG / FlexP-SFL figure scripts share: run in float64, save the
JSON next to its PNG, and the axes/figure finishing."""

import json
import os
import time
from typing import Any, Callable

import jax


def run_and_save(out: str, name: str, compute: Callable[[], dict[str, Any]],
                 plot: Callable[[dict, str], None], *, x64: bool = True) -> dict[str, Any]:
  """``compute()`` under float64 (``x64``), its wall seconds added as
  ``"seconds"``; writes ``out/name.json`` and ``plot(result, out/name.png)``.

  Raises:
    OSError: ``out`` cannot be created or written.
  """
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  with jax.enable_x64(x64):
    result = compute()
  result["seconds"] = time.time() - t0
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(out, f"{name}.png"))
  return result


def finish_axes(ax, *, small_title: bool = True) -> None:
  """Log-friendly grid, a small legend and (optionally) a small title."""
  if small_title:
    ax.title.set_fontsize(9)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)


def save_figure(fig, path: str, dpi: int = 110) -> None:
  """``tight_layout``, save to ``path`` and close ``fig``."""
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
