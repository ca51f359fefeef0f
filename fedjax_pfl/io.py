"""Result files: atomic writes (temporary file in the same folder, then rename),
strict JSON (never NaN/Inf) and reads that name the file and line when it is corrupt."""

import json
import math
import os
import tempfile
from typing import Any, Iterable

from fedjax_pfl.errors import CorruptFileError, WorkdirError


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (readers never see a partial file)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
  try:
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def finite_json(obj: Any) -> Any:
  """``obj`` with every non-finite float (NaN, +-Inf) replaced by None (JSON null),
  so that the written JSON is valid (``json.dumps`` would write ``NaN``)."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: finite_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_json(v) for v in obj]
  return obj


def dumps(obj: Any, **kwargs) -> str:
  """Strict JSON text of ``obj`` (non-finite floats written as null)."""
  return json.dumps(finite_json(obj), allow_nan=False, sort_keys=True, **kwargs)


def write_json_atomic(path: str, obj: Any) -> None:
  write_text_atomic(path, dumps(obj, indent=2) + "\n")


def write_jsonl_atomic(path: str, records: Iterable[dict]) -> None:
  write_text_atomic(path, "".join(dumps(r) + "\n" for r in records))


def read_json(path: str) -> Any:
  """Parses the JSON file ``path``.

  Raises:
    FileNotFoundError: no such file.
    CorruptFileError: not valid JSON (names the file, line and column).
  """
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise CorruptFileError(f"{path} is corrupt (not valid JSON: {e.msg} at line {e.lineno} "
                           f"column {e.colno})") from None


def read_jsonl(path: str) -> list[dict]:
  """Parses a JSON-lines file (one object per non-empty line).

  Raises:
    FileNotFoundError: no such file.
    CorruptFileError: a line that is not a JSON object (names the file and line).
  """
  out = []
  with open(path) as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise CorruptFileError(f"{path} is corrupt at line {lineno} (not valid JSON: "
                               f"{e.msg})") from None
      if not isinstance(record, dict):
        raise CorruptFileError(f"{path} is corrupt at line {lineno} (not a JSON object)")
      out.append(record)
  return out


def ensure_writable_dir(path: str, what: str = "--workdir") -> None:
  """Creates folder ``path`` (and parents) and checks that a file can be written
  in it, so that an unusable output path fails before any data is loaded.

  Raises:
    WorkdirError: ``<what> <path> cannot be created or written: <reason>``.
  """
  try:
    os.makedirs(path, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=path)
    os.close(fd)
    os.unlink(tmp)
  except OSError as e:
    reason = e.strerror or str(e)
    if isinstance(e, FileExistsError) or (os.path.exists(path) and not os.path.isdir(path)):
      reason = "a file of that name exists"
    raise WorkdirError(f"{what} {path} cannot be created or written: {reason}") from None
