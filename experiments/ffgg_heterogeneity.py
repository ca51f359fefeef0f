"""FFGG and the Fig. 1 baselines against the heterogeneity scale zeta.

Usage::

  python experiments/ffgg_heterogeneity.py --out experiments/results/ffgg

The Comparison instance (M = 8, d_x = 100, d_y = 50, n = 1000, U(0, 1)/d matrices perturbed
per client by zeta U(0, 1)/d, float64) for each zeta in ``--zetas``, with two kinds of targets:
the notebook's per-client targets plus noise (left) and overpersonalized ones (shared x*,
right). For each method, ||grad F(x)|| after ``--rounds`` rounds divided by ||grad F(0)||
(step sizes as in ``ffgg_fig1.py``, tau = ``--tau``): FFGG exact, FFGG with the GD fine-tuner
(cold), Local FFGG (K = tau), Local GD (x, y averaged), SCAFFOLD. The dashed line is
||grad F|| at the joint model's optimum (shared y): where the (x, y)-averaging baselines go.
Writes ``heterogeneity.png`` and ``heterogeneity.json``.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _figures import finish_axes, run_and_save, save_figure  # noqa: E402

from fedjax_pfl.ffgg import baselines as bl  # noqa: E402
from fedjax_pfl.ffgg import instances as inst  # noqa: E402
from fedjax_pfl.ffgg import quadratic as q  # noqa: E402


def one(args, zeta: float, targets: str) -> dict:
  p = inst.notebook_problem(args.seed, zeta=zeta, targets=targets, dtype=jnp.float64)
  c = q.constants(p)
  g = inst.gram_of(p)
  key, t, rounds = jax.random.key(args.seed), args.tau, args.rounds
  lr, lj = 1.0 / c["L_F"], 1.0 / c["L_joint"]
  runs = {
      "FFGG, exact inner": lambda: q.ffgg(p, key, rounds=rounds, lr_out=lr, exact_inner=True),
      "FFGG, GD fine-tuner (cold)": lambda: q.ffgg(p, key, rounds=rounds, lr_out=lr,
                                                   lr_in=1 / c["L_y"], inner_steps=t),
      "Local FFGG (K = tau)": lambda: q.ffgg(p, key, rounds=rounds, lr_out=lr, exact_inner=True,
                                             local_steps=t, local_lr=lr),
      "Local GD (x, y averaged)": lambda: q.fedavg_local_steps(p, rounds=rounds, lr=lj,
                                                               local_steps=t),
      "SCAFFOLD": lambda: bl.scaffold(p, rounds=rounds, lr_in=lj, local_steps=t),
  }
  out = {}
  for name, fn in runs.items():
    norms = np.asarray(fn()[1])
    out[name] = float(norms[-1] / norms[0])
  theta = np.linalg.solve(np.asarray(g.K).mean(0), np.asarray(g.k).mean(0))
  out["joint optimum"] = float(q.grad_norm(p, jnp.asarray(theta[:p.H.shape[2]]))
                               / q.grad_norm(p, jnp.zeros(p.H.shape[2])))
  out["kappa_F"] = c["L_F"] / c["mu_F"]
  return out


def plot(res: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cfg = res["config"]
  zetas = cfg["zetas"]
  xs = [max(z, 1e-2) for z in zetas]  # zeta = 0 drawn at 1e-2 on the log axis
  fig, axes = plt.subplots(1, 2, figsize=(14, 5.2), sharey=True)
  for ax, targets in zip(axes, ("per_client", "shared")):
    rows = res[targets]
    for name in rows[0]:
      if name in ("kappa_F",):
        continue
      ys = [max(r[name], 1e-16) for r in rows]
      ax.loglog(xs, ys, "k--" if name == "joint optimum" else "o-",
                label="grad F at the joint optimum" if name == "joint optimum" else name)
    ax.set(xlabel="zeta (0 drawn at 1e-2)",
           title=f"targets={targets}: after {cfg['rounds']} rounds, tau={cfg['tau']}")
    finish_axes(ax, small_title=False)
  axes[0].set_ylabel(r"$\|\nabla F(x^T)\| / \|\nabla F(x^0)\|$")
  fig.suptitle("heterogeneity sweep: M=8, d_x=100, d_y=50, n=1000 (Comparison instance)")
  save_figure(fig, path)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--zetas", type=lambda s: [float(v) for v in s.split(",")],
                  default=[0.0, 0.1, 0.3, 1.0, 3.0, 10.0])
  ap.add_argument("--rounds", type=int, default=200)
  ap.add_argument("--tau", type=int, default=10)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  res = run_and_save(args.out, "heterogeneity", lambda: {
      "config": vars(args),
      **{t: [one(args, z, t) for z in args.zetas] for t in ("per_client", "shared")}}, plot)
  for targets in ("per_client", "shared"):
    for z, row in zip(args.zetas, res[targets]):
      print(targets, z, {k: f"{v:.2e}" for k, v in row.items()})
  print(f"{res['seconds']:.0f} s")
  return res


if __name__ == "__main__":
  main()
