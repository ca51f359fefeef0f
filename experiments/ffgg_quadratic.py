"""FFGG vs FedAvg with local steps on the project's overpersonalized quadratic (spec §4).

This is the project's own well-conditioned instance (Gaussian N(0, 1/n) matrices, column scales
giving F a condition number of about ``--condition``, one shared x*), NOT the authors' notebook
instance; the paper's setups are ``ffgg_fig1.py``, ``ffgg_async.py``, ``ffgg_byzantine.py`` and
``ffgg_heterogeneity.py``. The GD fine-tuner is warm-started here.

Usage::

  python experiments/ffgg_quadratic.py --out /tmp/ffgg_quadratic [--rounds 200]

Writes ``ffgg_quadratic.png`` (||grad F(x^k)|| over rounds, log scale; left:
the main comparison, right: asynchronous and Byzantine variants) and
``ffgg_quadratic.json`` (every curve, the problem constants and the final
values) into ``--out``. Default instance: M = 8, d_x = 100, d_y = 50, n = 1000,
float64 (``--float32`` for single precision). Step sizes: ``lr_out = 1/L_F``,
``lr_in = 1/L_y``, FedAvg ``lr = 1/L_joint`` (constants computed from the
instance).

Curves: FFGG with exact inner solutions; FFGG with the Local GD fine-tuner
(``tau`` warm-started GD steps on y); Local FFGG (``K`` local steps on x);
FedAvg with ``tau`` joint local GD steps on (x, y) averaging both (the reference
notebook's Local SGD/GD baseline) and averaging only x (y personal); and the
variants: staleness ``s`` (``lr_out / (s + 1)``), one Byzantine client out of 8
with the mean and with the bucketed median.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _figures import finish_axes, run_and_save, save_figure  # noqa: E402

from fedjax_pfl.ffgg import quadratic as q  # noqa: E402


def run_all(args) -> dict:
  dtype = jnp.float32 if args.float32 else jnp.float64
  p = q.make_problem(args.seed, num_clients=args.clients, dim_x=args.dim_x, dim_y=args.dim_y,
                     rows=args.rows, condition=args.condition, dtype=dtype)
  c = q.constants(p)
  key = jax.random.key(args.seed)
  t, k, s = args.rounds, args.local_steps, args.staleness
  base = {"rounds": t, "lr_out": 1.0 / c["L_F"], "lr_in": 1.0 / c["L_y"],
          "inner_steps": args.inner_steps, "warm_start": True}
  runs = {
      "FFGG (exact inner)": lambda: q.ffgg(p, key, exact_inner=True, **base),
      f"FFGG (Local GD fine-tuner, tau={args.inner_steps})": lambda: q.ffgg(p, key, **base),
      f"Local FFGG (K={k}, exact inner)": lambda: q.ffgg(
          p, key, exact_inner=True, local_steps=k, **{**base, "lr_out": 0.5 / c["L_F"]},
          local_lr=0.5 / c["L_F"]),
      f"FedAvg, {args.fedavg_steps} local steps (x, y averaged)": lambda: q.fedavg_local_steps(
          p, rounds=t, lr=1.0 / c["L_joint"], local_steps=args.fedavg_steps),
      f"FedAvg, {args.fedavg_steps} local steps (x averaged, y personal)":
          lambda: q.fedavg_local_steps(p, rounds=t, lr=1.0 / c["L_joint"],
                                       local_steps=args.fedavg_steps, personal_y=True),
  }
  variants = {
      f"FFGG, staleness {s} (lr_out/{s + 1})": lambda: q.ffgg(
          p, key, exact_inner=True, staleness=s, **{**base, "lr_out": 1.0 / c["L_F"] / (s + 1)}),
      "FFGG, 1 Byzantine of 8, mean": lambda: q.ffgg(
          p, key, num_byzantine=1, byzantine_scale=args.byzantine_scale, **base),
      "FFGG, 1 Byzantine of 8, bucketed median (s=2)": lambda: q.ffgg(
          p, key, num_byzantine=1, byzantine_scale=args.byzantine_scale,
          aggregator="bucketed_median", **base),
  }
  curves = {name: np.asarray(fn()[1]).tolist() for name, fn in runs.items()}
  var_curves = {name: np.asarray(fn()[1]).tolist() for name, fn in variants.items()}
  return {"config": vars(args), "constants": c, "curves": curves, "variants": var_curves,
          "final_grad_norm": {n: v[-1] for n, v in {**curves, **var_curves}.items()}}


def plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
  for ax, group, title in ((axes[0], "curves", "FFGG vs FedAvg with local steps"),
                           (axes[1], "variants", "asynchronous and Byzantine FFGG")):
    for name, values in result[group].items():
      ax.semilogy(np.maximum(np.asarray(values), 1e-17), label=name)
    ax.set_xlabel("round")
    ax.set_title(title)
    finish_axes(ax, small_title=False)
  axes[0].set_ylabel(r"$\|\nabla F(x^k)\|$")
  cfg = result["config"]
  fig.suptitle(f"the project's overpersonalized quadratic (Gaussian, condition "
               f"{cfg['condition']:g}; not the authors' instance): M={cfg['clients']}, "
               f"d_x={cfg['dim_x']}, d_y={cfg['dim_y']}, n={cfg['rows']}")
  save_figure(fig, path, dpi=120)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--rounds", type=int, default=200)
  ap.add_argument("--clients", type=int, default=8)
  ap.add_argument("--dim-x", type=int, default=100)
  ap.add_argument("--dim-y", type=int, default=50)
  ap.add_argument("--rows", type=int, default=1000)
  ap.add_argument("--condition", type=float, default=10.0)
  ap.add_argument("--inner-steps", type=int, default=20)
  ap.add_argument("--local-steps", type=int, default=5)
  ap.add_argument("--fedavg-steps", type=int, default=10)
  ap.add_argument("--staleness", type=int, default=2)
  ap.add_argument("--byzantine-scale", type=float, default=100.0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--float32", action="store_true")
  args = ap.parse_args(argv)
  result = run_and_save(args.out, "ffgg_quadratic", lambda: run_all(args), plot,
                        x64=not args.float32)
  for name, value in result["final_grad_norm"].items():
    print(f"{value:12.3e}  {name}")
  return result


if __name__ == "__main__":
  main()
