"""FFGG's Fig. 1 setup: the authors' Comparison instance, baselines, tau sweeps, fine-tuners.

Usage::

  python experiments/ffgg_fig1.py --out experiments/results/ffgg [--zeta 0] [--lr-rule L_F]

Instance (spec reference-protocols §3, :func:`fedjax_pfl.ffgg.instances.notebook_problem`):
M = 8, d_x = 100, d_y = 50, n = 1000, U(0, 1)/d matrices shared by all clients, perturbed by
``--zeta`` (the notebook runs 0), per-client targets plus N(0, 1e-3^2) noise (not
overpersonalized), float64. Every method starts from x = 0, y = 0 (FFGG's GD / CG fine-tuners:
y ~ N(0, I) every round, the notebooks' cold start). Step sizes: FFGG ``lr_out = 1/L_F``
(``--lr-rule notebook``: 1/L with the notebooks' per-client L of the last client), GD fine-tuner
``lr_in = 1/L_y`` (the notebook's 1/2 diverges on this instance: L_y = 5.1), Local GD / SCAFFOLD
/ L2GD local steps ``1/L_joint``, Local FFGG ``local_lr = lr_out``; L2GD's lambda makes every
communication a full average.

Writes ``fig1_<tag>.png`` with three panels, ||grad F(x)|| (log scale): (a) every method with
``--tau`` local / inner steps over ``--rounds`` rounds (L2GD: iterations / tau, its expected
number of communications); (b) ||grad F|| after ``--rounds`` rounds against tau for each method;
(c) the fine-tuners (GD cold / warm, CG cold) against their number of steps, the exact inner
solve as a line. ``fig1_<tag>.json`` holds every number.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _figures import run_and_save, save_figure  # noqa: E402

from fedjax_pfl.ffgg import baselines as bl  # noqa: E402
from fedjax_pfl.ffgg import instances as inst  # noqa: E402
from fedjax_pfl.ffgg import quadratic as q  # noqa: E402


def methods(p, c, lr_out, key, rounds):
  """name -> fn(tau) -> norms [rounds + 1] (tau: local / inner steps)."""
  lj, m = 1.0 / c["L_joint"], p.H.shape[0]

  def l2gd(tau):
    tau = max(tau, 1.5)
    lr = m * (1 - 1 / tau) * lj  # local step = 1/L_joint
    its = int(round(rounds * tau))
    norms = np.asarray(bl.l2gd(p, key, iterations=its, lr=lr, tau=tau, lam=m / (tau * lr))[1])
    return norms[np.round(np.arange(rounds + 1) * tau).astype(int)]
  ffgg = lambda **kw: lambda tau: q.ffgg(p, key, rounds=rounds, lr_out=lr_out, **kw)[1]
  return {
      "FFGG, GD fine-tuner (cold)": lambda t: ffgg(lr_in=1 / c["L_y"], inner_steps=t)(t),
      "FFGG, CG fine-tuner (cold)": lambda t: ffgg(inner_solver="cg", inner_steps=t)(t),
      "Local FFGG (K = tau, exact inner)": lambda t: ffgg(exact_inner=True, local_steps=t,
                                                          local_lr=lr_out)(t),
      "Local GD (x, y averaged)": lambda t: q.fedavg_local_steps(p, rounds=rounds, lr=lj,
                                                                 local_steps=t)[1],
      "SCAFFOLD": lambda t: bl.scaffold(p, rounds=rounds, lr_in=lj, local_steps=t)[1],
      "L2GD (p = 1/tau)": l2gd,
  }


def run_all(args) -> dict:
  p = inst.notebook_problem(args.seed, zeta=args.zeta, targets=args.targets, dtype=jnp.float64)
  c = {**q.constants(p), **inst.gram_constants(inst.gram_of(p))}
  lr_out = 1.0 / (c["L_F"] if args.lr_rule == "L_F" else c["L_notebook"])
  key = jax.random.key(args.seed)
  fns = methods(p, c, lr_out, key, args.rounds)
  exact = np.asarray(q.ffgg(p, key, rounds=args.rounds, lr_out=lr_out, exact_inner=True)[1])
  curves = {"FFGG, exact inner": exact.tolist()}
  curves.update({n: np.asarray(fn(args.tau)).tolist() for n, fn in fns.items()})
  sweep = {n: [float(np.asarray(fn(t))[-1]) for t in args.taus] for n, fn in fns.items()}
  tuners = {}
  for name, kw in (("GD, cold", {"lr_in": 1 / c["L_y"]}),
                   ("GD, warm", {"lr_in": 1 / c["L_y"], "warm_start": True}),
                   ("CG, cold", {"inner_solver": "cg"})):
    tuners[name] = [float(q.ffgg(p, key, rounds=args.rounds, lr_out=lr_out, inner_steps=t,
                                 **kw)[1][-1]) for t in args.inner_steps]
  return {"config": vars(args), "constants": c, "lr_out": lr_out, "curves": curves,
          "tau_sweep": sweep, "fine_tuners": tuners, "exact_final": float(exact[-1])}


def plot(res: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cfg = res["config"]
  fig, ax = plt.subplots(1, 3, figsize=(18, 5.2))
  for name, values in res["curves"].items():
    exact = name == "FFGG, exact inner"
    ax[0].semilogy(values, label=name, ls="--" if exact else "-", color="k" if exact else None,
                   zorder=3 if exact else 2)
  ax[0].set(xlabel="round (communications; L2GD: iterations / tau)", ylabel=r"$\|\nabla F(x)\|$",
            title=f"(a) tau = {cfg['tau']} local / inner steps")
  for name, values in res["tau_sweep"].items():
    ax[1].loglog(cfg["taus"], values, "o-", label=name)
  ax[1].axhline(res["exact_final"], color="k", ls="--", label="FFGG, exact inner")
  ax[1].set(xlabel="tau", title=f"(b) after {cfg['rounds']} rounds, against tau")
  for name, values in res["fine_tuners"].items():
    ax[2].loglog(cfg["inner_steps"], values, "o-", label=f"FFGG, {name}")
  ax[2].axhline(res["exact_final"], color="k", ls="--", label="FFGG, exact inner")
  ax[2].set(xlabel="fine-tuner steps per round", title=f"(c) fine-tuners, {cfg['rounds']} rounds")
  for a in ax:
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
  k = res["constants"]
  fig.suptitle(f"FFGG Comparison instance: M=8, d_x=100, d_y=50, n=1000, zeta={cfg['zeta']}, "
               f"targets={cfg['targets']}, kappa_F={k['kappa_F']:.0f}, lr_out=1/"
               f"{1 / res['lr_out']:.3g} ({cfg['lr_rule']})")
  save_figure(fig, path)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--rounds", type=int, default=200)
  ap.add_argument("--zeta", type=float, default=0.0)
  ap.add_argument("--targets", default="per_client", choices=inst.TARGETS)
  ap.add_argument("--lr-rule", default="L_F", choices=("L_F", "notebook"))
  ap.add_argument("--tau", type=int, default=10)
  ap.add_argument("--taus", type=lambda s: [int(v) for v in s.split(",")], default=[1, 3, 10, 30])
  ap.add_argument("--inner-steps", type=lambda s: [int(v) for v in s.split(",")],
                  default=[1, 3, 10, 30, 100])
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tag", default=None, help="file suffix (default: zeta<zeta>_<targets>)")
  args = ap.parse_args(argv)
  tag = args.tag or f"zeta{args.zeta:g}_{args.targets}"
  res = run_and_save(args.out, f"fig1_{tag}", lambda: run_all(args), plot)
  for name, values in res["curves"].items():
    print(f"{values[-1]:12.3e}  {name} (tau={args.tau})")
  print(f"{res['seconds']:.0f} s")
  return res


if __name__ == "__main__":
  main()
