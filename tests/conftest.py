"""Test configuration: 4 fake CPU devices (for sharding tests), strict shapes,
and one XLA compilation cache per test run.

Many tests build the same programs (same algorithm, model and sizes) in new
Simulation objects; XLA's persistent cache, keyed by the program's HLO, lets
them compile once per run. `make test` passes a fresh folder in
FEDJAX_PFL_TEST_CACHE (shared by the pytest-xdist workers, removed afterwards);
otherwise each run gets its own folder.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE = os.environ.get("FEDJAX_PFL_TEST_CACHE")
if not _CACHE:
  _RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if _RUN:
    _CACHE = os.path.join(tempfile.gettempdir(), f"fedjax-pfl-jaxcache-{_RUN}")
  else:
    _CACHE = tempfile.mkdtemp(prefix="fedjax-pfl-jaxcache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
