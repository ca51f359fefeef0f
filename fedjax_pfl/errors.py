"""Errors of the run layer. The CLI maps them to exit statuses.

* :class:`ConfigError` (and :class:`WorkdirError`, :class:`CorruptFileError`):
  bad input, reported before any compute; exit status 2.
* :class:`DivergenceError`: the run diverged (NaN/Inf loss); exit status 3.

The data layer's ``DataError`` / ``PartitionError`` (``fedjax_pfl.data``) are
bad input too (exit status 2).
"""


class ConfigError(ValueError):
  """An invalid configuration value (names the field and the allowed range)."""


class WorkdirError(ConfigError):
  """A workdir that cannot be used: it holds another run, or cannot be created."""


class CorruptFileError(ValueError):
  """A result file (config.json, metrics.jsonl, a checkpoint) that cannot be read;
  the message names the file and what is wrong."""


class DivergenceError(RuntimeError):
  """Loss became NaN/Inf during a run."""
