"""Generic long-format results: one row per (prompt, model) pair.

Also holds the CSV and cost helpers the other loaders share. CSVs are read
with Python's ``csv`` module (no pandas): prompt fields in routing data can be
megabytes long, so the field size limit is raised while a file is read.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections.abc import Mapping

import numpy as np

from uniroute_jax import checks
from uniroute_jax.data.embeddings import load_embeddings
from uniroute_jax.types import RoutingData

# Score columns tried, in order, when ``score_column`` is not given.
SCORE_COLUMNS = ("score", "correct", "label")
PARQUET_SUFFIXES = (".parquet", ".pq")


def load_long(path, *, embeddings, prompt_column: str = "prompt_id",
              model_column: str = "model", score_column: str | None = None,
              cost_column: str | None = None, costs=None,
              text_column: str | None = None) -> RoutingData:
  """Loads a long table: one row per (prompt, model) with a score in [0, 1].

  Args:
    path: a ``.csv`` file, or a ``.parquet`` / ``.pq`` file (needs pyarrow).
    embeddings: a ``.npy`` / ``.npz`` file of prompt embeddings, read by
      :func:`uniroute_jax.data.load_embeddings`; a ``.npy`` must follow the
      prompt order below (first appearance in the table). Or a callable
      that embeds text: ``embeddings(texts)`` gets each prompt's text (from
      ``text_column``) in that order and returns [n, d] embeddings, e.g.
      :class:`uniroute_jax.encoder.MiniLM`.
    prompt_column: the column of prompt ids (read as strings).
    model_column: the column of model names.
    score_column: the column of scores / correctness in [0, 1] (``True`` /
      ``False`` also read as 1 / 0); by default the first of ``score``,
      ``correct``, ``label`` that exists. An empty score, or NaN (the text
      ``nan``, or a Parquet float's missing value), is a missing label.
    cost_column: a column of per-row costs, giving per-prompt costs [n, m].
      Every row with a label needs a cost. A (prompt, model) cell without any
      row gets that model's mean cost, so that a router never sees a missing
      cell as free.
    costs: per-model costs instead of ``cost_column``: a mapping from model
      name to cost, or a CSV path with a ``model_name`` column and a numeric
      cost column (``cost`` if present, otherwise its only numeric column).
    text_column: with a callable ``embeddings``, the column of prompt text
      (default ``prompt_column``: the ids are the text, as in a log of
      prompts); every row of a prompt must hold the same text.

  Returns:
    A validated :class:`RoutingData`. Prompts and models are in order of
    first appearance; ``prompt_ids`` are strings. (prompt, model) pairs
    without a row, or with an empty or NaN score, have mask False and loss 0. A
    pair with several rows (a log that asked an LLM the same prompt again)
    gets the mean of their scores, and of their costs; ``label_counts``
    [n, m] says how many scores each cell averages.

  Raises:
    FileNotFoundError: when a file does not exist.
    ValueError: on missing columns, non-numeric or out-of-range values, a
      missing cost, or neither / both of ``cost_column`` and ``costs``.
  """
  path = checks.file_path("path", path)
  embed = embeddings if callable(embeddings) else None
  if embed is None:
    checks.file_path("embeddings", embeddings)
  elif text_column is None:
    text_column = prompt_column
  if (cost_column is None) == (costs is None):
    given = "both were given" if costs is not None else "neither was given"
    raise checks.ArgumentError(lambda name: (
        f"a long-format table needs its costs from exactly one of "
        f"{name('cost_column')} (a column of per-row costs) and "
        f"{name('costs')} (per-model costs); {given}"))
  header, columns = _read_table(path)
  if score_column is None:
    score_column = next((c for c in SCORE_COLUMNS if c in header), None)
    if score_column is None:
      raise checks.ArgumentError(lambda name: (
          f"{path!r} has no score column: expected one of "
          f"{list(SCORE_COLUMNS)} (or name it with {name('score_column')}), "
          f"found {header}"))
  wanted = [prompt_column, model_column, score_column]
  wanted += [cost_column] if cost_column is not None else []
  roles = ("prompt_column", "model_column", "score_column", "cost_column")
  if embed is not None and text_column != prompt_column:
    wanted, roles = wanted + [text_column], roles[:len(wanted)] + ("text_column",)
  for i, a in enumerate(wanted):
    for j in range(i):
      if wanted[j] == a:
        raise checks.ArgumentError(lambda name, i=i, j=j, a=a: (
            f"{name(roles[j])} and {name(roles[i])} name the same column "
            f"{a!r}"))
  for name in wanted:
    column_index(header, name, path)
  prompt_pos, prompt_ids = _first_appearance(columns(prompt_column), path,
                                             prompt_column)
  model_pos, model_names = _first_appearance(columns(model_column), path,
                                             model_column)
  score = parse_floats(columns(score_column), path, score_column)
  check_unit_interval(score, path, score_column)
  n, m = len(prompt_ids), len(model_names)
  cell = prompt_pos * m + model_pos
  observed = ~np.isnan(score)
  # A log repeats a prompt for an LLM with different outcomes: each
  # (prompt, LLM) cell gets its mean score and the count behind it.
  counts = np.bincount(cell[observed], minlength=n * m).reshape(n, m)
  totals = np.bincount(cell[observed], weights=score[observed],
                       minlength=n * m).reshape(n, m)
  mask = counts > 0
  loss = np.zeros((n, m), np.float32)
  loss[mask] = 1.0 - totals[mask] / counts[mask]
  if cost_column is not None:
    row_cost = parse_floats(columns(cost_column), path, cost_column)
    cost = _per_prompt_costs(row_cost, observed, cell, n, model_names, path,
                             cost_column)
  else:
    cost = model_costs(costs, model_names, preferred=("cost",))
  if embed is None:
    matrix = load_embeddings(embeddings, prompt_ids)
  else:
    texts = (prompt_ids if text_column == prompt_column else
             _prompt_texts(columns(text_column), prompt_pos, prompt_ids, path,
                           text_column))
    matrix = _embedded(embed, texts)
  return RoutingData(
      embeddings=matrix, loss=loss, mask=mask,
      cost=cost, model_names=tuple(model_names),
      prompt_ids=np.asarray(prompt_ids),
      label_counts=counts.astype(np.int32)).validate()


def _prompt_texts(values, prompt_pos, prompt_ids, path, column) -> list[str]:
  """Each prompt's text: the same in every row of the prompt."""
  texts = [None] * len(prompt_ids)
  first = [0] * len(prompt_ids)
  for row, (i, value) in enumerate(zip(prompt_pos.tolist(), values)):
    text = "" if value is None else str(value)
    if texts[i] is None:
      texts[i], first[i] = text, row
    elif texts[i] != text:
      raise ValueError(
          f"{path!r} column {column!r} gives prompt {prompt_ids[i]!r} two "
          f"texts, in {data_row(first[i])} and {data_row(row)}")
  return texts


def _embedded(embed, texts) -> np.ndarray:
  matrix = np.asarray(embed(list(texts)))
  if matrix.ndim != 2 or matrix.shape[0] != len(texts):
    raise ValueError(f"the embedder returned shape {matrix.shape} for "
                     f"{len(texts)} texts; expected [{len(texts)}, d]")
  return matrix


_F32 = np.finfo(np.float32)


def _lost_in_float32(values: np.ndarray) -> np.ndarray:
  """Where a non-negative float64 would become infinity or 0 in float32,
  the dtype costs are kept in."""
  return (values > _F32.max) | ((values > 0) & (values < _F32.smallest_subnormal))


def _float32_range() -> str:
  return f"from {_F32.smallest_subnormal:.1g} to {_F32.max:.1g}"


def _per_prompt_costs(row_cost, observed, cell, n, model_names, path, column
                      ) -> np.ndarray:
  unpriced = observed & np.isnan(row_cost)
  if np.any(unpriced):
    row = int(np.nonzero(unpriced)[0][0])
    raise ValueError(
        f"{path!r} column {column!r} is empty or NaN in {data_row(row)}, "
        "which has a label; every labelled row needs a cost")
  check_nonnegative(row_cost, path, column)
  lost = _lost_in_float32(np.nan_to_num(row_cost))
  if np.any(lost):
    row = int(np.nonzero(lost)[0][0])
    raise ValueError(
        f"{path!r} column {column!r} holds {float(row_cost[row])!r} in "
        f"{data_row(row)}, outside the float32 costs are kept in "
        f"({_float32_range()}); "
        "give the costs in another unit")
  m = len(model_names)
  priced = ~np.isnan(row_cost)
  rows = np.bincount(cell[priced], minlength=n * m).reshape(n, m)
  totals = np.bincount(cell[priced], weights=row_cost[priced],
                       minlength=n * m).reshape(n, m)
  cost = np.full((n, m), np.nan)
  cost[rows > 0] = totals[rows > 0] / rows[rows > 0]   # a repeated cell's mean
  for j in range(m):
    known = ~np.isnan(cost[:, j])
    if not np.any(known):
      raise ValueError(
          f"{path!r} column {column!r} has no cost for model "
          f"{model_names[j]!r}")
    cost[~known, j] = cost[known, j].mean()
  return cost.astype(np.float32)


def _first_appearance(values, path: str, column: str):
  """Position of each value among the distinct values, in first-seen order."""
  keys = [_key(v, path, column, k) for k, v in enumerate(values)]
  if not keys:
    raise ValueError(f"{path!r} has no data rows")
  keys = np.asarray(keys, dtype=str)
  distinct, first, inverse = np.unique(keys, return_index=True,
                                       return_inverse=True)
  order = np.argsort(first)
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  return rank[inverse.reshape(-1)], [str(v) for v in distinct[order]]


def _key(value, path: str, column: str, row: int) -> str:
  text = "" if value is None else str(value).strip()
  if not text:
    raise ValueError(f"{path!r} column {column!r} is empty in {data_row(row)}")
  return text


def _read_table(path: str):
  """(header, column getter) of a CSV or Parquet file."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path!r} is a folder; a long-format table is "
                            "one CSV or Parquet file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"long-format file not found: {path!r}")
  if path.lower().endswith(PARQUET_SUFFIXES):
    try:
      import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(
          f"reading the Parquet file {path!r} needs pyarrow "
          "(pip install pyarrow), or convert it to CSV") from None
    table = pq.read_table(path)
    return list(table.column_names), lambda name: table.column(name).to_pylist()
  header, rows = read_csv(path)
  return header, lambda name: [r[column_index(header, name, path)] for r in rows]


@contextlib.contextmanager
def _large_fields():
  """Raises csv's field size limit (128 KiB by default) for one read."""
  limit = sys.maxsize
  while True:
    try:
      old = csv.field_size_limit(limit)
      break
    except OverflowError:  # C long is 32 bits on some platforms
      limit //= 2
  try:
    yield
  finally:
    csv.field_size_limit(old)


def text_encoding(path: str) -> str:
  """UTF-16 when the file starts with its byte-order mark (as spreadsheet
  programs write "Unicode text"), otherwise UTF-8 with an optional BOM."""
  with open(path, "rb") as f:
    head = f.read(2)
  return "utf-16" if head in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"


def undecodable(what: str, path: str, encoding: str,
                err: UnicodeError) -> ValueError:
  """The error for a text file that is not in ``encoding``."""
  # err.start counts from the decoder's current chunk, not the file, so
  # only the offending byte is named.
  byte = (f" (the byte 0x{err.object[err.start]:02x} cannot be decoded)"
          if isinstance(err, UnicodeDecodeError) else "")
  return ValueError(f"{what} {path!r} is not "
                    f"{encoding.split('-sig')[0].upper()} text{byte}; save it "
                    "as UTF-8")


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
  """Header and data rows of a CSV; blank lines are skipped, as pandas does.

  The text is UTF-8 (with or without a byte-order mark) or UTF-16 with one.

  Raises:
    FileNotFoundError: when the file does not exist.
    ValueError: when it is empty, not text in those encodings, or a row has
      a different number of fields from the header.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path!r} is a folder; expected a CSV file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CSV file not found: {path!r}")
  encoding = text_encoding(path)
  try:
    with _large_fields(), open(path, newline="", encoding=encoding) as f:
      # strict: a quoted field still open at the end of the file is an
      # error, not a field that silently swallows every later row.
      reader = csv.reader(f, strict=True)
      try:
        header = next(reader)
      except StopIteration:
        raise ValueError(f"CSV file {path!r} is empty (no header row)") from None
      except csv.Error as err:
        raise ValueError(f"CSV file {path!r} could not be parsed: {err}") from None
      if len(header) == 1:
        for sign, name in ((";", "semicolons"), ("\t", "tabs")):
          if sign in header[0]:
            raise ValueError(
                f"CSV file {path!r} separates its header by {name}; the "
                "file must be comma-separated")
      rows = []
      # A quote left open runs on over later lines: the record it opened,
      # not the line where parsing gave up, is the one to look at.
      start = reader.line_num + 1
      try:
        for row in reader:
          if row:
            rows.append(row)
          start = reader.line_num + 1
      except csv.Error as err:
        why = ("a quoted field is never closed" if "end of data" in str(err)
               else str(err))
        raise ValueError(
            f"CSV file {path!r} could not be parsed in the record that starts "
            f"on line {start} ({why}; look for a stray or unclosed quote "
            "there)") from None
  except UnicodeError as err:
    raise undecodable("CSV file", path, encoding, err) from None
  width = len(header)
  for k, row in enumerate(rows):
    if len(row) != width:
      raise ValueError(
          f"CSV file {path!r} {data_row(k)} has {len(row)} fields, but the "
          f"header has {width}")
  return header, rows


def column_index(header, name: str, path: str) -> int:
  """Index of column ``name``; a clear error when it is absent or repeated."""
  count = header.count(name)
  if count == 0:
    raise ValueError(f"{path!r} has no column {name!r}; its columns are {header}")
  if count > 1:
    raise ValueError(f"{path!r} has the column {name!r} {count} times")
  return header.index(name)


def data_row(k) -> str:
  """How a message names the data row at 0-based position ``k``: counted
  from 1, the first row under the header, as a user counts a file's rows."""
  return f"data row {int(k) + 1}"


def parse_floats(values, path: str, column: str) -> np.ndarray:
  """float64 values of one column; empty cells and NaN become NaN (missing)."""
  try:
    # Fast path: NumPy parses a column of plain numbers in one call.
    out = np.asarray(values).astype(np.float64)
  except (ValueError, TypeError):
    out = np.array([_cell_float(v, path, column, k)
                    for k, v in enumerate(values)], np.float64)
  if np.any(np.isinf(out)):
    row = int(np.nonzero(np.isinf(out))[0][0])
    raise ValueError(
        f"{path!r} column {column!r} is infinite in {data_row(row)}")
  return out.reshape(-1)


def _cell_float(value, path: str, column: str, row: int) -> float:
  if value is None:
    return np.nan
  if isinstance(value, (bool, np.bool_, int, float, np.integer, np.floating)):
    return float(value)
  text = str(value).strip()
  if not text:
    return np.nan
  if text.lower() in ("true", "false"):
    return float(text.lower() == "true")
  try:
    return float(text)
  except ValueError:
    raise ValueError(
        f"{path!r} column {column!r} must hold numbers, got {text[:40]!r} in "
        f"{data_row(row)}") from None


def parse_ints(values, path: str, column: str) -> np.ndarray:
  """int64 values of one column of integer ids; empty cells are an error."""
  try:
    return np.asarray(values).astype(np.int64).reshape(-1)
  except (ValueError, TypeError, OverflowError):
    pass
  floats = parse_floats(values, path, column)
  bad = np.isnan(floats) | (floats != np.round(floats))
  if np.any(bad):
    row = int(np.nonzero(bad)[0][0])
    raise ValueError(
        f"{path!r} column {column!r} must hold integer ids, got "
        f"{str(values[row])[:40]!r} in {data_row(row)}")
  return floats.astype(np.int64)


def check_unit_interval(score: np.ndarray, path: str, column: str) -> None:
  bad = ~np.isnan(score) & ((score < 0) | (score > 1))
  if np.any(bad):
    row = int(np.nonzero(bad)[0][0])
    raise ValueError(
        f"{path!r} column {column!r} must lie in [0, 1], got {float(score[row])} "
        f"in {data_row(row)}")


def check_nonnegative(cost: np.ndarray, path: str, column: str) -> None:
  bad = cost < 0
  if np.any(bad):
    row = int(np.nonzero(bad)[0][0])
    raise ValueError(
        f"{path!r} column {column!r} must be non-negative, got "
        f"{float(cost[row])} in {data_row(row)}")


def reject_conflicts(cell: np.ndarray, values, describe) -> None:
  """Raises if two rows of the same ``cell`` differ in any of ``values``.

  ``describe(a, b)`` gives the message for the first conflicting rows a, b.
  Rows that repeat a cell with identical values are harmless.
  """
  order = np.argsort(cell, kind="stable")
  ordered = cell[order]
  same = np.nonzero(ordered[1:] == ordered[:-1])[0]
  if not same.size:
    return
  a, b = order[same], order[same + 1]
  differ = np.zeros(a.shape, bool)
  for v in values:
    differ |= ~((v[a] == v[b]) | (np.isnan(v[a]) & np.isnan(v[b])))
  if np.any(differ):
    k = int(np.nonzero(differ)[0][0])
    first, second = sorted((int(a[k]), int(b[k])))
    raise ValueError(describe(first, second))


def model_costs(costs, model_names, *, preferred=()) -> np.ndarray:
  """float32 [m] per-model costs from a mapping or a CSV, in model order.

  Args:
    costs: a mapping from model name to a non-negative cost, or a CSV path
      with a ``model_name`` column and a numeric column (the first of
      ``preferred`` present, otherwise the only column whose every value is
      a number; several such columns are an error, not a guess). Names are
      compared stripped of surrounding spaces.
    model_names: the m models that need a cost; extra entries are ignored.
    preferred: column names to use first.
  """
  if isinstance(costs, Mapping):
    table, source = dict(costs), "the costs mapping"
  elif isinstance(costs, (str, os.PathLike)):
    source = repr(os.fspath(costs))
    table = _costs_from_csv(os.fspath(costs), preferred)
  else:
    raise ValueError(
        "costs must be a mapping from model name to cost or a CSV path, got "
        f"{type(costs).__name__}")
  out = []
  for name in model_names:
    if name not in table:
      raise ValueError(f"{source} has no cost for model {name!r}")
    try:
      value = float(table[name])
    except (TypeError, ValueError):
      raise ValueError(
          f"{source} cost of model {name!r} must be a number, got "
          f"{table[name]!r}") from None
    if not np.isfinite(value) or value < 0:
      raise ValueError(
          f"{source} cost of model {name!r} must be finite and non-negative, "
          f"got {value!r}")
    if _lost_in_float32(np.asarray(value)):
      raise ValueError(
          f"{source} cost of model {name!r} is {value!r}, outside the float32 "
          f"costs are kept in ({_float32_range()}); give the costs in "
          "another unit")
    out.append(value)
  return np.asarray(out, np.float32)


def _costs_from_csv(path: str, preferred) -> dict:
  header, rows = read_csv(path)
  # Names are stripped as the long-format loader strips its model column.
  names = [r[column_index(header, "model_name", path)].strip() for r in rows]
  column = next((c for c in preferred if c in header), None)
  if column is None:
    numeric = []
    for c in header:
      if c == "model_name":
        continue
      try:
        numbers = np.asarray([r[header.index(c)] for r in rows]).astype(float)
      except ValueError:
        continue
      if rows and np.all(np.isfinite(numbers)):
        numeric.append(c)
    if len(numeric) != 1:
      named = (f" (or one named {' or '.join(map(repr, preferred))})"
               if preferred else "")
      raise ValueError(
          f"cost file {path!r} needs one numeric cost column next to "
          f"'model_name'{named}; "
          + (f"it has several: {numeric}" if numeric else
             f"its columns are {header}"))
    column = numeric[0]
  values = parse_floats([r[column_index(header, column, path)] for r in rows],
                        path, column)
  table = {}
  for k, (name, value) in enumerate(zip(names, values)):
    if np.isnan(value):
      raise ValueError(
          f"cost file {path!r} column {column!r} is empty or NaN in "
          f"{data_row(k)} (model {name!r})")
    if name in table and table[name] != value:
      raise ValueError(
          f"cost file {path!r} gives model {name!r} two different costs")
    table[name] = value
  return table
