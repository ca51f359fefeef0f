"""Runs every benchmark, each in its own process; exits non-zero if any fails.

Each benchmark prints its one JSON line to stdout (collected in ``--out``
when given). CI runs ``python -m benchmarks.run_all --smoke``.

Usage::

  python -m benchmarks.run_all --smoke
  python -m benchmarks.run_all --only round,scale --out results.jsonl
"""

import argparse
import subprocess
import sys
import time

BENCHMARKS = ("throughput", "round", "seeds", "scale", "step")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
  p.add_argument("--only", default=",".join(BENCHMARKS),
                 help=f"comma-separated subset of {','.join(BENCHMARKS)}")
  p.add_argument("--out", default=None, help="append every JSON line to this file")
  p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
  args = p.parse_args(argv)
  names = [n.strip() for n in args.only.split(",") if n.strip()]
  unknown = sorted(set(names) - set(BENCHMARKS))
  if unknown:
    p.error(f"unknown benchmarks {unknown}; allowed: {list(BENCHMARKS)}")
  failed = []
  for name in names:
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}"]
    cmd += ["--smoke"] if args.smoke else []
    cmd += ["--out", args.out] if args.out else []
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(cmd, timeout=args.timeout)
      code = proc.returncode
    except subprocess.TimeoutExpired:
      code = "timeout"
    status = "ok" if code == 0 else f"FAILED ({code})"
    print(f"# bench_{name}: {status} in {time.perf_counter() - t0:.1f} s", file=sys.stderr,
          flush=True)
    if code != 0:
      failed.append(name)
  if failed:
    print(f"# failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
