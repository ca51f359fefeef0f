"""Asynchronous FFGG as an event-driven simulation, against asynchronous SGD on the joint (x, y).

Usage::

  python experiments/ffgg_async.py --out experiments/results/ffgg [--rows 2000]

Instance: the authors' Asynchronous notebook (spec reference-protocols §3): M = 40 clients,
d_x = 400, d_y = 50, zeta = 10 with the notebook's normalized perturbations, n = ``--rows``
(notebook: 10000; default 2000 so the script runs in a few minutes on 2 CPU cores), float64.
Two panels: (a) overpersonalized targets (shared x*), (b) the notebook's per-client targets.

Each client computes for ``delays[m] * Exp(1)`` time units and its gradient is applied on
arrival (:mod:`fedjax_pfl.ffgg.async_`); homogeneous delays (all means 1) and heterogeneous
ones (means geomspace(1, ``--spread``, M)). Methods: asynchronous FFGG with exact inner solves
(metric ||grad F(x)||) and asynchronous SGD on one joint model (x, y) (metric: the norm of the
joint objective's gradient); dotted: the synchronous versions (every client at the same model,
x-axis = rounds). Step sizes: async ``1 / (L M)``, sync ``1 / L`` (L = L_F or L_joint).
Writes ``async.png`` and ``async.json``.
"""

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _figures import finish_axes, run_and_save, save_figure  # noqa: E402

from fedjax_pfl.ffgg import async_ as asy  # noqa: E402
from fedjax_pfl.ffgg import instances as inst  # noqa: E402


def run_instance(args, targets: str) -> dict:
  m = args.clients
  g = inst.notebook_gram(args.seed, num_clients=m, dim_x=args.dim_x, dim_y=args.dim_y,
                         rows=args.rows, zeta=args.zeta, targets=targets,
                         perturbation="normalized", dtype=jnp.float64)
  c = inst.gram_constants(g)
  out = {"constants": c, "curves": {}, "staleness": {}}
  every = args.record_every
  for label, spread in (("homogeneous", 1.0), ("heterogeneous", args.spread)):
    order, stale = asy.arrival_order(asy.delay_profile(m, spread), args.events, seed=args.seed)
    counts = np.bincount(order, minlength=m)
    out["staleness"][label] = {"mean": float(stale.mean()), "max": int(stale.max()),
                               "updates_min": int(counts.min()), "updates_max": int(counts.max())}
    for method, lip in (("ffgg", c["L_F"]), ("joint", c["L_joint"])):
      norms = asy.async_run(g, order, lr=1.0 / (lip * m), method=method, record_every=every)[1]
      out["curves"][f"async {method}, {label} delays"] = np.asarray(norms).tolist()
  for method, lip in (("ffgg", c["L_F"]), ("joint", c["L_joint"])):
    norms = asy.sync_run(g, args.events // m, lr=1.0 / lip, method=method)[1]
    out["curves"][f"sync {method}"] = np.asarray(norms).tolist()
  return out


def plot(res: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cfg = res["config"]
  fig, axes = plt.subplots(1, 2, figsize=(14, 5.2))
  colors = {"ffgg": "C0", "joint": "C3"}
  for ax, targets in zip(axes, ("shared", "per_client")):
    r = res[targets]
    for name, values in r["curves"].items():
      method = name.split()[1].rstrip(",")
      if name.startswith("sync"):
        x = np.arange(len(values))
        style = ":"
      else:
        x = np.arange(len(values)) * cfg["record_every"] / cfg["clients"]
        style = "-" if "heterogeneous" in name else "--"
      ax.semilogy(x, np.maximum(values, 1e-16), style, color=colors[method], label=name)
    st = r["staleness"]["heterogeneous"]
    ax.set(xlabel="gradients received / M (rounds for sync)",
           title=f"targets={targets}: heterogeneous staleness mean {st['mean']:.0f}, max "
                 f"{st['max']}, updates per client {st['updates_min']}-{st['updates_max']}")
    finish_axes(ax)
  axes[0].set_ylabel("gradient norm of the method's objective")
  fig.suptitle(f"asynchronous FFGG vs asynchronous joint SGD: M={cfg['clients']}, "
               f"d_x={cfg['dim_x']}, d_y={cfg['dim_y']}, n={cfg['rows']}, zeta={cfg['zeta']}, "
               f"delay spread {cfg['spread']:g}x")
  save_figure(fig, path)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--clients", type=int, default=40)
  ap.add_argument("--dim-x", type=int, default=400)
  ap.add_argument("--dim-y", type=int, default=50)
  ap.add_argument("--rows", type=int, default=2000)
  ap.add_argument("--zeta", type=float, default=10.0)
  ap.add_argument("--events", type=int, default=32000)
  ap.add_argument("--record-every", type=int, default=400)
  ap.add_argument("--spread", type=float, default=10.0)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  res = run_and_save(args.out, "async", lambda: {
      "config": vars(args), **{t: run_instance(args, t) for t in ("shared", "per_client")}},
      plot)
  for targets in ("shared", "per_client"):
    for name, values in res[targets]["curves"].items():
      print(f"{values[-1]:12.3e}  {targets}: {name}")
  print(f"{res['seconds']:.0f} s")
  return res


if __name__ == "__main__":
  main()
