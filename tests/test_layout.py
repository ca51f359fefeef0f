"""Architecture rules that a grep can check (style guide §2.3)."""

import pathlib
import re
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fedjax_pfl"
CORE = PACKAGE / "core"
CLIENT_AXIS_MODULES = (CORE / "cohort.py", CORE / "backend.py", CORE / "lanes.py")
MARKER = re.compile(r"#\s*vmap over (?!clients)\S.*not clients")


def _code_lines(skip=CLIENT_AXIS_MODULES):
  for path in sorted(PACKAGE.rglob("*.py")):
    if path in skip:
      continue
    in_doc = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if line.count('"""') == 1:
        in_doc = not in_doc
        continue
      if not in_doc:
        yield path, number, line


def test_client_axis_only_in_cohort_and_backend():
  """Any vmap outside core/cohort.py, core/backend.py and core/lanes.py must say which
  (non-client) axis it maps."""
  offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
               for p, n, line in _code_lines()
               if "vmap(" in line.split("#")[0] and not MARKER.search(line)]
  assert not offenders, "vmap over clients outside those modules:\n" + "\n".join(offenders)


def test_mesh_and_sharding_only_in_backend():
  offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}"
               for p, n, line in _code_lines(skip=(CORE / "backend.py",))
               if re.search(r"\b(Mesh|NamedSharding|shard_map|pmap)\(", line.split("#")[0])]
  assert not offenders, offenders


def test_core_imports_nothing_above_it():
  """core/ imports only jax, optax, numpy, the standard library, types.py and
  core/ itself (style guide §2.1)."""
  allowed = re.compile(r"^(jax|optax|numpy|fedjax_pfl\.core|fedjax_pfl\.types)\b")
  offenders = []
  for path in sorted(CORE.glob("*.py")):
    for n, line in enumerate(path.read_text().splitlines(), 1):
      m = re.match(r"\s*(?:from\s+(\S+)\s+import|import\s+(\S+))", line)
      if not m:
        continue
      module = m.group(1) or m.group(2)
      if module.split(".")[0] in sys.stdlib_module_names or allowed.match(module):
        continue
      offenders.append(f"core/{path.name}:{n}: {line.strip()}")
  assert not offenders, offenders


def test_core_modules_stay_small():
  sizes = {p.name: len(p.read_text().splitlines()) for p in CORE.glob("*.py")}
  assert max(sizes.values()) <= 350, sizes


def test_only_rounds_calls_the_training_slots():
  """The round skeleton (core/rounds.py) is the only engine code that calls
  broadcast / finalize / aggregate."""
  calls = re.compile(r"\.(broadcast|finalize|aggregate)\(")
  offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}" for p, n, line in _code_lines(skip=())
               if calls.search(line.split("#")[0]) and p != CORE / "rounds.py"]
  assert not offenders, offenders


def test_algorithms_keep_no_private_seeds_round_counters_or_ids():
  """Keys come from the run's streams (slot contexts, init's key), round
  indices and client ids from the contexts (issue 15)."""
  patterns = {
      "private seed": re.compile(r"random\.(key|PRNGKey)\(|default_rng\(|RandomState\("),
      "round counter": re.compile(r"\bround:\s*jax\.Array|server\.round\b"),
      "stored ids": re.compile(r"\bid:\s*jax\.Array|arange\(num_clients, dtype=jnp\.int32\)"),
  }
  offenders = [f"{p.relative_to(PACKAGE.parent)}:{n} ({what})"
               for p, n, line in _code_lines(skip=()) if "algorithms" in p.parts
               for what, pat in patterns.items() if pat.search(line.split("#")[0])]
  assert not offenders, offenders


def test_only_checkpoint_imports_orbax_and_only_tfds_source_imports_tfds():
  for path in PACKAGE.rglob("*.py"):
    text = path.read_text()
    if path.name != "checkpoint.py":
      assert "import orbax" not in text, path
    if path.name != "tfds_source.py":
      assert "import tensorflow_datasets" not in text, path


def test_no_pickle():
  for path in PACKAGE.rglob("*.py"):
    assert "pickle" not in path.read_text(), path


def test_lower_modules_do_not_import_the_cli_or_the_registry():
  """No import loop cli -> experiment -> plots -> cli; config validates without
  importing every algorithm (issue 15)."""
  import subprocess
  import sys
  code = ("import sys, fedjax_pfl.config, fedjax_pfl.plots, fedjax_pfl.tables, fedjax_pfl.io, "
          "fedjax_pfl.errors; bad = [m for m in ('fedjax_pfl.cli', 'fedjax_pfl.algorithms', "
          "'fedjax_pfl.experiment') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=PACKAGE.parent, timeout=120)
  assert done.returncode == 0, done.stdout + done.stderr
  for path in PACKAGE.rglob("*.py"):
    if path.name != "cli.py":
      assert not re.search(r"from fedjax_pfl(\.cli| import cli)\b", path.read_text()), path
