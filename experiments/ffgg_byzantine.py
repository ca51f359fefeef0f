"""Byzantine-robust FFGG as the authors' notebook runs it: flipped gradients, bucketed median.

Usage::

  python experiments/ffgg_byzantine.py --out experiments/results/ffgg

Instance: the Byzantine notebook (spec reference-protocols §3): 32 honest clients, d_x = 100,
d_y = 50, n = 10000, each client's matrices drawn U(0, 1)/d on their own (no shared part),
overpersonalized (shared x*, no noise), float64. Every round 10 extra attackers each send
-s * grad F_j(x) of a distinct random honest client j (the notebook: s = 1); exact inner solves;
the server steps x <- x - lr agg with the mean or the coordinate-wise median over shuffled
buckets of size 2; lr = 1/L with the notebooks' constant (last client's); T = 1000 rounds.
Curves: no attackers (mean = FFGG), and for s = 1 and s = ``--strong-scale`` the mean and the
bucketed median. Writes ``byzantine.png`` and ``byzantine.json``.
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _figures import finish_axes, run_and_save, save_figure  # noqa: E402

from fedjax_pfl.ffgg import byzantine as byz  # noqa: E402
from fedjax_pfl.ffgg import instances as inst  # noqa: E402


def run_all(args) -> dict:
  g = inst.notebook_gram(args.seed, num_clients=args.honest, dim_x=args.dim_x,
                         dim_y=args.dim_y, rows=args.rows, zeta=1.0, noise=0.0,
                         targets="shared", shared_base=False, dtype=jnp.float64)
  c = inst.gram_constants(g)
  lr = inst.notebook_lr(g)
  key = jax.random.key(args.seed)
  run = lambda **kw: np.asarray(byz.byzantine_ffgg(g, key, rounds=args.rounds, lr=lr,
                                                   **kw)[1]).tolist()
  a = args.attackers
  curves = {"no attackers, mean (FFGG)": run(num_attackers=0, aggregator="mean")}
  for s in (1.0, args.strong_scale):
    curves[f"{a} attackers x{s:g}, mean"] = run(num_attackers=a, attack_scale=s,
                                                 aggregator="mean")
    curves[f"{a} attackers x{s:g}, bucketed median (s=2)"] = run(num_attackers=a,
                                                                attack_scale=s)
  return {"config": vars(args), "constants": c, "lr": lr, "curves": curves,
          "final": {n: v[-1] for n, v in curves.items()}}


def plot(res: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  cfg = res["config"]
  fig, ax = plt.subplots(figsize=(8.5, 5.2))
  top = 10 * max(v[0] for v in res["curves"].values())
  for name, values in res["curves"].items():
    label = name + (" (diverges, clipped)" if values[-1] > top else "")
    ax.semilogy(np.clip(values, 1e-16, top), label=label,
                ls="--" if "no attackers" in name else "-")
  ax.set(xlabel="round", ylabel=r"$\|\nabla F(x)\|$ (honest clients)",
         title=f"Byzantine FFGG: {cfg['honest']} honest + {cfg['attackers']} flipped-gradient "
               f"attackers, d_x={cfg['dim_x']}, d_y={cfg['dim_y']}, n={cfg['rows']}, exact inner")
  finish_axes(ax)
  save_figure(fig, path)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--honest", type=int, default=32)
  ap.add_argument("--attackers", type=int, default=10)
  ap.add_argument("--strong-scale", type=float, default=4.0)
  ap.add_argument("--dim-x", type=int, default=100)
  ap.add_argument("--dim-y", type=int, default=50)
  ap.add_argument("--rows", type=int, default=10000)
  ap.add_argument("--rounds", type=int, default=1000)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)
  res = run_and_save(args.out, "byzantine", lambda: run_all(args), plot)
  for name, value in res["final"].items():
    print(f"{value:12.3e}  {name}")
  print(f"{res['seconds']:.0f} s")
  return res


if __name__ == "__main__":
  main()
