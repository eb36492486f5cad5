"""Prompt text from files: plain text, JSON Lines or CSV.

The embedding step of the command line reads prompts from these; every
error names the file and the line or row.
"""

from __future__ import annotations

import json
import os

import numpy as np

from uniroute_jax import checks
from uniroute_jax.data.long import column_index, read_csv

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
DEFAULT_COLUMN = "prompt"


def read_prompts(path, *, column: str | None = None,
                 id_column: str | None = None) -> tuple[np.ndarray, list[str]]:
  """(ids, texts) of the prompts in a file, in file order.

  Args:
    path: ``.txt`` (one prompt per line; every line is a prompt, an empty
      one included, except after the final newline), ``.jsonl`` (one JSON
      object per non-blank line) or ``.csv``.
    column: the JSONL field or CSV column holding the text (default
      ``prompt``); not for ``.txt``.
    id_column: the JSONL field or CSV column of prompt ids (read as text;
      they must be unique); default: ids 0, 1, ... in file order.

  Returns:
    ``ids`` (a unicode array) and ``texts``.

  Raises:
    FileNotFoundError: when ``path`` does not exist.
    ValueError: naming the file and line or row: an unknown suffix, text
      that is not UTF-8, a line that is not a JSON object, a missing or
      non-text field, repeated ids, or no prompt at all.
  """
  path = checks.file_path("path", path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prompt file not found: {path!r}")
  suffix = os.path.splitext(path)[1].lower()
  if suffix in TEXT_SUFFIXES:
    for argument, value in (("column", column), ("id_column", id_column)):
      if value is not None:
        raise checks.ArgumentError(lambda name, argument=argument: (
            f"{name(argument)} does not apply to a plain-text file "
            f"{path!r} (one prompt per line)"))
    ids, texts = None, _lines(path)
  elif suffix in JSONL_SUFFIXES:
    ids, texts = _json_lines(path, column or DEFAULT_COLUMN, id_column)
  elif suffix in CSV_SUFFIXES:
    ids, texts = _csv(path, column or DEFAULT_COLUMN, id_column)
  else:
    raise ValueError(
        f"prompt file {path!r} must end in one of "
        f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + CSV_SUFFIXES)}, got "
        f"{suffix!r}")
  if not texts:
    raise ValueError(f"prompt file {path!r} holds no prompts")
  if ids is None:
    return np.arange(len(texts)).astype(str), texts
  ids = np.asarray(ids, dtype=str)
  order = np.sort(ids)
  repeated = np.nonzero(order[1:] == order[:-1])[0]
  if repeated.size:
    raise ValueError(f"prompt file {path!r}: id {str(order[repeated[0]])!r} "
                     "appears more than once; ids must be unique")
  return ids, texts


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      return f.read()
  except UnicodeDecodeError as err:
    raise ValueError(
        f"prompt file {path!r} is not UTF-8 text (the byte "
        f"0x{err.object[err.start]:02x} cannot be decoded); save it as "
        "UTF-8") from None


def _lines(path: str) -> list[str]:
  """Lines split at \\n (or \\r\\n) only: str.splitlines would also split a
  prompt at form feeds, \\x1c or U+2028, which prompts may hold."""
  lines = _read_text(path).split("\n")
  if lines and lines[-1] == "":
    lines.pop()                     # the final newline ends a line
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def _json_lines(path: str, column: str, id_column: str | None):
  texts, ids = [], []
  for number, line in enumerate(_lines(path), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path!r} line {number} is not JSON: {err.msg}") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path!r} line {number} must be a JSON object, got "
                       f"{type(record).__name__}")
    texts.append(_field(record, column, path, number, text=True))
    if id_column is not None:
      ids.append(_field(record, id_column, path, number, text=False))
  return (ids if id_column is not None else None), texts


def _field(record: dict, key: str, path: str, number: int, *, text: bool):
  if key not in record:
    raise ValueError(f"{path!r} line {number} has no field {key!r}; its "
                     f"fields are {sorted(record)}")
  value = record[key]
  if text and not isinstance(value, str):
    raise ValueError(f"{path!r} line {number} field {key!r} must be text, got "
                     f"{type(value).__name__}")
  if not text and (isinstance(value, (dict, list, bool)) or value is None):
    raise ValueError(f"{path!r} line {number} field {key!r} must be a string "
                     f"or a number, got {value!r}")
  return value if text else str(value)


def _csv(path: str, column: str, id_column: str | None):
  header, rows = read_csv(path)
  texts = [r[column_index(header, column, path)] for r in rows]
  if id_column is None:
    return None, texts
  at = column_index(header, id_column, path)
  ids = [r[at].strip() for r in rows]
  for k, value in enumerate(ids):
    if not value:
      raise ValueError(f"{path!r} column {id_column!r} is empty in data row {k}")
  return ids, texts
