"""Where one client SGD step's time goes: XLA's per-op profile, by source op.

Traces ``--steps`` Python-stepped calls of the compiled step of
:func:`benchmarks.bench_step._setup` with ``jax.profiler`` and reads the trace
back with ``jax.profiler.ProfileData``: every XLA:CPU thunk (a fusion, a
``dot``, a ``concatenate``, ...) is one event on an XLA thread. Each event is
attributed, through the ``op_name`` metadata of its HLO instruction (and of
the instructions fused into it), to a pass (``fwd`` / ``bwd``; ``update`` for
the optimizer and the masked-step ``where``), a layer (``conv1``, ``fc1``, ...)
and a kind:

* ``gemm``: ``dot_general`` (XNNPACK ``ynn_fusion`` or Eigen ``dot``);
* ``im2col``: the strided slices and ``concatenate`` that build patches;
* ``col2im``: the ``pad`` / ``add_any`` that send patch gradients back;
* ``pool`` (``reduce_window`` and XLA's lowering of its select-and-scatter
  gradient), ``relu/pool`` (elementwise max / compare / select: ReLU, bias and
  the slices pooling of :mod:`fedjax_pfl.models.pool`), ``layout`` (a
  ``copy``/transpose of an operand), ``update`` (optimizer and the
  masked-step ``where``), ``loss``, ``unattributed`` (no metadata: e.g. the
  copy of a carry leaf passed through unchanged), ``other``.

Times are per step and summed over threads (two XLA threads can run ops at
once, so the sum can exceed the wall time); the profiler itself adds
overhead. Use the shares, not the absolute numbers.

Usage::

  python -m benchmarks.profile_step --model cnn --pool slices
  python -m benchmarks.profile_step --model resnet8 --top 30
"""

import collections
import glob
import re
import tempfile

import jax
import numpy as np

from benchmarks import bench_step, common

# Kinds by priority, from the last component of the op_name paths fused into an
# instruction (a GEMM is recognized by its opcode only: fusions also carry the
# op_name of the dot whose output they read).
KINDS = (("pool", ("reduce_window_max", "reduce_window", "select_and_scatter",
                   "select_and_scatter_add")),
         ("col2im", ("pad", "add_any")), ("im2col", ("concatenate", "slice", "split")),
         ("relu/pool", ("max", "gt", "eq", "select_n")),
         ("loss", ("exp", "log", "reduce_max", "scatter-add")))
MODELS = ("FedAvgCNN", "ResNet")


def hlo_sources(hlo_text: str) -> dict[str, tuple[str, str, list[str]]]:
  """``{instruction: (shape, opcode, op_names)}`` for the entry computation;
  ``op_names`` include those of the instructions fused into it."""
  fused = {}
  for m in re.finditer(r"\n(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S):
    fused[m.group(1)] = re.findall(r'op_name="([^"]+)"', m.group(2))
  out = {}
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  for line in entry.split("\n"):
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\(", line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    names = re.findall(r'op_name="([^"]+)"', line)
    calls = re.search(r"calls=(%[\w.\-]+)", line)
    if calls and calls.group(1) in fused:
      names += fused[calls.group(1)]
    out[name] = (shape, opcode, names)
  return out


def _layer(op_name: str) -> str:
  """``conv2`` from ``jit(step)/transpose(jvp(FedAvgCNN))/conv2/dot_general``;
  ``layer1/conv1`` for ResNet blocks; ``relu`` for ``jit(relu)``; ``-`` when
  the op sits at the model's top level (e.g. pooling)."""
  for model in MODELS:
    if model in op_name:
      parts = op_name.split(model, 1)[1].lstrip(")").strip("/").split("/")
      break
  else:
    return "-"
  if len(parts) <= 1:
    return "-"
  head = parts[0]
  if head.startswith("jit("):
    return head[4:].rstrip(")")
  if head.startswith("layer") and len(parts) > 2:
    return f"{head}/{parts[1]}"
  return head


def categorize(name: str, opcode: str, names: list[str]) -> str:
  """``"<pass> <layer> <kind>"`` of one entry instruction (``name`` is its HLO
  name, ``opcode`` its HLO opcode, ``names`` its op_name metadata)."""
  if not names:  # no metadata: XLA's own lowering of select-and-scatter
    if any(k in name for k in ("iota", "reduce-window", "scatter")):
      return "bwd - pool"
    return "unattributed"
  model_ops = [n for n in names if any(m in n for m in MODELS)]
  if not model_ops:
    return "update" if "jvp(" not in " ".join(names) else "loss"
  passes = "bwd" if any("transpose(" in n for n in model_ops) else "fwd"
  layer = _layer(model_ops[0])
  leaves = {n.rsplit("/", 1)[-1] for n in names}
  kind = "other"
  if opcode in ("dot", "ynn_fusion"):
    kind = "gemm"
  elif opcode == "copy" or name.startswith("copy") or "transpose" in leaves:
    kind = "layout"
  else:
    for k, keys in KINDS:
      if leaves & set(keys):
        kind = k
        break
  return f"{passes} {layer} {kind}"


def profile(model: str, conv: str, pool: str, steps: int, top: int) -> dict:
  setup = dict(bench_step.MODEL_SETUPS[model])
  prog, carry, data = bench_step._setup(model, conv, pool, setup["batch"], setup["lr"],
                                        setup["momentum"], setup["shape"])
  step = jax.jit(prog.step).lower(carry, np.int32(0), data).compile()
  sources = hlo_sources(step.as_text())
  for t in range(3):
    carry = step(carry, np.int32(t), data)
  jax.block_until_ready(carry)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for t in range(steps):
      carry = step(carry, np.int32(t), data)
    jax.block_until_ready(carry)
    jax.profiler.stop_trace()
    (path,) = glob.glob(d + "/**/*.xplane.pb", recursive=True)
    trace = jax.profiler.ProfileData.from_file(path)
  per_op = collections.defaultdict(float)
  for plane in trace.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for ev in line.events:
        if not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
          per_op[ev.name] += ev.duration_ns / 1e6 / steps
  per_cat = collections.defaultdict(float)
  ops = []
  for name, ms in per_op.items():
    shape, opcode, names = sources.get(name, ("?", "?", []))
    cat = categorize(name, "ynn_fusion" if name.startswith("ynn_fusion") else opcode, names)
    per_cat[cat] += ms
    ops.append({"op": name, "ms": ms, "category": cat, "shape": shape})
  ops.sort(key=lambda r: -r["ms"])
  total = sum(per_op.values())
  by_kind = collections.defaultdict(float)
  for cat, ms in per_cat.items():
    by_kind[cat.split(" ")[-1]] += ms
  return {"model": model, "conv": conv, "pool": pool, "steps": steps,
          "sum_of_op_ms_per_step": total,
          "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
          "by_category": dict(sorted(per_cat.items(), key=lambda kv: -kv[1])),
          "top_ops": ops[:top]}


def main(argv=None) -> dict:
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--model", default="cnn", choices=sorted(bench_step.MODEL_SETUPS))
  p.add_argument("--conv", default="auto")
  p.add_argument("--pool", default="auto")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--top", type=int, default=25)
  args = p.parse_args(argv)
  steps = args.steps or (3 if args.smoke else 30)
  result = profile(args.model, args.conv, args.pool, steps, args.top)
  for kind, ms in result["by_kind"].items():
    common.log(f"{kind:8s} {ms:7.2f} ms/step ({100 * ms / result['sum_of_op_ms_per_step']:.0f}%)")
  return common.emit({"benchmark": "profile_step", **common.env_info(),
                      "settings": {"model": args.model, "conv": args.conv, "pool": args.pool,
                                   "steps": steps}, "results": result}, args.out)


if __name__ == "__main__":
  common.main_guard(main)
