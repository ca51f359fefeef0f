"""Architecture rules that a grep can check (style guide §2.3)."""

import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "fedjax_pfl"
COHORT = PACKAGE / "core" / "cohort.py"
MARKER = re.compile(r"#\s*vmap over (?!clients)\S.*not clients")


def _code_lines():
  for path in sorted(PACKAGE.rglob("*.py")):
    if path == COHORT:
      continue
    in_doc = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if line.count('"""') == 1:
        in_doc = not in_doc
        continue
      if not in_doc:
        yield path, number, line


def test_client_axis_only_in_cohort():
  """Any vmap outside core/cohort.py must say which (non-client) axis it maps."""
  offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
               for p, n, line in _code_lines()
               if "vmap(" in line.split("#")[0] and not MARKER.search(line)]
  assert not offenders, "vmap outside core/cohort.py:\n" + "\n".join(offenders)


def test_mesh_and_sharding_only_in_cohort():
  offenders = [f"{p.relative_to(PACKAGE.parent)}:{n}" for p, n, line in _code_lines()
               if re.search(r"\b(Mesh|NamedSharding|shard_map|pmap)\(", line.split("#")[0])]
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
