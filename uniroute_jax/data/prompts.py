"""Prompt text from files: plain text, JSON Lines or CSV.

The embedding step of the command line reads prompts from these; every
error names the file and the line or row.
"""

from __future__ import annotations

import json
import os

import numpy as np

from uniroute_jax import checks
from uniroute_jax.data.long import (column_index, data_row, read_csv,
                                    text_encoding, undecodable)

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
      that is not UTF-8 (or UTF-16 with its byte-order mark), a line that is not a JSON object, a missing or
      non-text field, repeated ids, or no prompt at all.
  """
  path = checks.file_path("path", path)
  for argument, value in (("column", column), ("id_column", id_column)):
    if value is not None and not isinstance(value, str):
      raise checks.ArgumentError(lambda name, argument=argument, value=value: (
          f"{name(argument)} must be a column name (a str), got {value!r}"))
  if os.path.isdir(path):
    raise ValueError(f"prompt file {path!r} is a folder, not a file")
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
    ids, texts = _json_lines(path, DEFAULT_COLUMN if column is None else column,
                             id_column)
  elif suffix in CSV_SUFFIXES:
    ids, texts = _csv(path, DEFAULT_COLUMN if column is None else column,
                      id_column)
  else:
    raise ValueError(
        f"prompt file {path!r} must end in one of "
        f"{', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + CSV_SUFFIXES)}, got "
        f"{suffix!r}")
  if not texts:
    raise ValueError(f"prompt file {path!r} holds no prompts")
  for k, text in enumerate(texts):
    try:
      text.encode("utf-8")
    except UnicodeEncodeError:
      raise ValueError(f"prompt file {path!r}: prompt {k} is not valid Unicode "
                       "text (it holds a lone surrogate)") from None
  if ids is None:
    return np.arange(len(texts)).astype(str), texts
  seen = {}
  for k, value in enumerate(ids):
    if value in seen:
      raise ValueError(f"prompt file {path!r}: id {value!r} of prompt {k} is "
                       f"also the id of prompt {seen[value]}; ids must be "
                       "unique")
    seen[value] = k
  return np.asarray(ids, dtype=str), texts


def _read_text(path: str) -> str:
  """The text, decoded as CSVs are (UTF-8, or UTF-16 with its mark)."""
  encoding = text_encoding(path)
  try:
    with open(path, encoding=encoding, newline="") as f:
      return f.read()
  except UnicodeError as err:
    raise undecodable("prompt file", path, encoding, err) from None


def _lines(path: str) -> list[str]:
  """Lines split at \\n (or \\r\\n) only: str.splitlines would also split a
  prompt at form feeds, \\x1c or U+2028, which prompts may hold."""
  text = _read_text(path)
  if "\r" in text and "\n" not in text:
    raise ValueError(f"prompt file {path!r} ends its lines with \\r alone "
                     "(old Mac style); save it with \\n line ends")
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()                     # the final newline ends a line
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def _json_lines(path: str, column: str, id_column: str | None):
  texts, ids = [], []
  for number, line in enumerate(_lines(path), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
      raise ValueError(f"{path!r} line {number} is not JSON: {err.msg}") from None
    except _RepeatedKey as err:
      raise ValueError(f"{path!r} line {number} has the field {err.args[0]!r} "
                       "twice") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path!r} line {number} must be a JSON object, got "
                       f"{type(record).__name__}")
    texts.append(_field(record, column, path, number, text=True))
    if id_column is not None:
      ids.append(_field(record, id_column, path, number, text=False))
  return (ids if id_column is not None else None), texts


class _RepeatedKey(Exception):
  pass


def _unique_keys(pairs):
  record = {}
  for key, value in pairs:
    if key in record:
      raise _RepeatedKey(key)
    record[key] = value
  return record


def _field(record: dict, key: str, path: str, number: int, *, text: bool):
  if key not in record:
    raise ValueError(f"{path!r} line {number} has no field {key!r}; its "
                     f"fields are {sorted(record)}")
  value = record[key]
  if text:
    if not isinstance(value, str):
      raise ValueError(f"{path!r} line {number} field {key!r} must be text, "
                       f"got {type(value).__name__}")
    return value
  # An id is a non-empty string or an integer, compared as text (as CSV
  # ids are): a float would be written with rounding, NaN is no id.
  if isinstance(value, str) and value.strip():
    return value.strip()
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  raise ValueError(f"{path!r} line {number} field {key!r} must be a non-empty "
                   f"string or an integer, got {value!r}")


def _csv(path: str, column: str, id_column: str | None):
  header, rows = read_csv(path)
  texts = [r[column_index(header, column, path)] for r in rows]
  if id_column is None:
    return None, texts
  at = column_index(header, id_column, path)
  ids = [r[at].strip() for r in rows]
  for k, value in enumerate(ids):
    if not value:
      raise ValueError(
          f"{path!r} column {id_column!r} is empty in {data_row(k)}")
  return ids, texts
