"""RouterBench results (Hu et al., 2024) in their wide format, with USD costs.

One row per prompt; one column per model holding its score (1 = correct,
empty = missing), and a ``<model>|total_cost`` column with that model's USD
cost on the prompt. ``sample_id`` is not unique in the published data, so a
row is identified by its file and position: prompt id ``"<file name>:<row>"``,
with ``row`` the 0-based data row in that file.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from uniroute_jax import checks
from uniroute_jax.data.embeddings import load_embeddings
from uniroute_jax.data.long import (check_nonnegative, check_unit_interval,
                                    column_index, data_row, parse_floats,
                                    read_csv)
from uniroute_jax.types import RoutingData

COST_SUFFIX = "|total_cost"
# Columns that are neither a model nor a "<model>|..." column.
META_COLUMNS = ("sample_id", "prompt", "eval_name", "oracle_model_to_route_to")
PICKLE_SUFFIXES = (".pkl", ".pickle")
DEFAULT_EMBEDDINGS = "embeddings.npz"


def load_routerbench(path, *, embeddings=None, merge_duplicate_ids: bool = False,
                     allow_pickle: bool = False) -> RoutingData:
  """Loads RouterBench wide-format results.

  The model set is the names X with an ``X|total_cost`` column; every other
  column without a ``|`` (besides ``sample_id``, ``prompt``, ``eval_name``,
  ``oracle_model_to_route_to`` and an unnamed index column) must be such a
  model. Other ``X|...`` columns (model responses) are ignored.

  Args:
    path: a CSV file, a directory (every ``*.csv`` in it, sorted by file
      name), or a list of files. With ``allow_pickle=True``, files may also
      be RouterBench's published pandas pickles (``.pkl``).
    embeddings: None, or a ``.npz`` / ``.npy`` file for
      :func:`uniroute_jax.data.load_embeddings`: an ``.npz`` with ``file``,
      ``row`` and ``embedding`` arrays (the shared data's layout), one with
      ids ``"<file name>:<row>"``, or one row per CSV row in reading order.
      When None, ``embeddings.npz`` in the directory of the CSVs is used.
    merge_duplicate_ids: merge rows that share a ``sample_id`` into one
      prompt: labels are combined (two different observed labels for the
      same model are an error), the first row's prompt id and embedding are
      kept, and each model's cost is taken from the row that holds its label.
    allow_pickle: read ``.pkl`` files with pandas. Unpickling can execute
      arbitrary code: only set this for files from a source you trust.

  Returns:
    A validated :class:`RoutingData` with loss = 1 - score, mask False where a
    score is empty, and per-prompt USD costs [n, m].

  Raises:
    FileNotFoundError: when a path does not exist.
    ValueError: on missing or unmatched columns, non-numeric values, scores
      outside [0, 1], a missing or negative cost, files with different
      models, a pickle without ``allow_pickle``, conflicting labels of merged
      rows, or when no embeddings are found.
    ImportError: when ``allow_pickle`` is set and pandas is not installed.
  """
  files = _files(path, allow_pickle)
  model_names, score, cost, prompt_ids, sample_ids = None, [], [], [], []
  for file in files:
    names, s, c, ids = _read_file(file, allow_pickle)
    if model_names is None:
      model_names = names
    elif set(names) != set(model_names):
      raise ValueError(
          f"{file!r} has models {sorted(names)}, but {files[0]!r} has "
          f"{sorted(model_names)}; every file must have the same models")
    order = [names.index(x) for x in model_names]
    score.append(s[:, order])
    cost.append(c[:, order])
    name = os.path.basename(file)
    prompt_ids += [f"{name}:{k}" for k in range(len(ids))]
    sample_ids += ids
  if len(set(prompt_ids)) != len(prompt_ids):
    raise ValueError(
        "RouterBench files must have distinct file names, since prompt ids are "
        f"'<file name>:<row>'; got {files}")
  score, cost = np.concatenate(score), np.concatenate(cost)
  if not score.shape[0]:
    raise ValueError(f"RouterBench files {files} have no data rows")
  prompt_ids = np.asarray(prompt_ids)
  emb = load_embeddings(_embeddings_path(path, files, embeddings), prompt_ids)
  if merge_duplicate_ids:
    keep, score, cost = _merge(sample_ids, score, cost, model_names, prompt_ids)
    emb, prompt_ids = emb[keep], prompt_ids[keep]
  mask = ~np.isnan(score)
  return RoutingData(
      embeddings=emb, loss=np.where(mask, 1.0 - score, 0.0).astype(np.float32),
      mask=mask, cost=cost.astype(np.float32), model_names=tuple(model_names),
      prompt_ids=prompt_ids).validate()


def _files(path, allow_pickle: bool) -> list[str]:
  if isinstance(path, (str, os.PathLike)):
    path = os.fspath(path)
    if os.path.isdir(path):
      files = sorted(glob.glob(os.path.join(glob.escape(path), "*.csv")),
                     key=os.path.basename)
      if not files:
        pickles = [f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES)]
        hint = (f"; convert the pickle {pickles[0]!r} to CSV (in Python, "
                "load_routerbench(its path, allow_pickle=True) reads it)"
                if pickles else "")
        raise ValueError(f"RouterBench directory {path!r} has no *.csv files"
                         + hint)
      return files
    files = [path]
  else:
    files = [os.fspath(p) for p in path]
    if not files:
      raise ValueError("path must name at least one RouterBench file, got []")
  for file in files:
    if not os.path.exists(file):
      raise FileNotFoundError(f"RouterBench path not found: {file!r}")
    if file.lower().endswith(PICKLE_SUFFIXES) and not allow_pickle:
      raise ValueError(
          f"{file!r} is a pickle, which can execute arbitrary code when "
          "loaded; convert it to CSV (in Python, allow_pickle=True reads it, "
          "if you trust its source)")
  return files


def _read_file(file: str, allow_pickle: bool):
  """(model names, score [r, m], cost [r, m], sample ids) of one file."""
  if file.lower().endswith(PICKLE_SUFFIXES) and allow_pickle:
    header, rows = _read_pickle(file)
  else:
    header, rows = read_csv(file)
  header = [str(h) for h in header]
  sample_index = column_index(header, "sample_id", file)
  models, costs, unknown = [], [], []
  for name in header:
    if name == "" or name.startswith("Unnamed:") or name in META_COLUMNS:
      continue  # the index column pandas writes, or metadata
    if name.endswith(COST_SUFFIX):
      costs.append(name[:-len(COST_SUFFIX)])
    elif "|" not in name:
      models.append(name)
  for name in models:
    if name not in costs:
      unknown.append(
          f"model column {name!r} has no {name + COST_SUFFIX!r} column (every "
          "column besides sample_id, prompt, eval_name, "
          "oracle_model_to_route_to and the unnamed index is read as a model)")
  for name in costs:
    if name not in models:
      unknown.append(f"cost column {name + COST_SUFFIX!r} has no model column "
                     f"{name!r}")
  if unknown:
    raise ValueError(f"{file!r}: {unknown[0]}")
  if not models:
    raise ValueError(
        f"{file!r} has no model columns: expected columns X and "
        f"'X{COST_SUFFIX}' for each model X; its columns are {header[:20]}")
  score = np.stack([_column(rows, header, m, file) for m in models], axis=1)
  cost = np.stack([_column(rows, header, m + COST_SUFFIX, file)
                   for m in models], axis=1)
  for j, name in enumerate(models):
    check_unit_interval(score[:, j], file, name)
    missing = np.isnan(cost[:, j])
    if np.any(missing):
      raise ValueError(
          f"{file!r} column {name + COST_SUFFIX!r} is empty or NaN in "
          f"{data_row(np.nonzero(missing)[0][0])}; RouterBench costs must "
          "all be present")
    check_nonnegative(cost[:, j], file, name + COST_SUFFIX)
  sample_ids = [str(r[sample_index]) for r in rows]
  return models, score, cost, sample_ids


def _column(rows, header, name: str, file: str) -> np.ndarray:
  k = column_index(header, name, file)
  return parse_floats([r[k] for r in rows], file, name)


def _read_pickle(file: str):
  """Header and rows of a pandas DataFrame pickle (the caller allowed it)."""
  try:
    import pandas  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(
        f"reading the RouterBench pickle {file!r} needs pandas "
        "(pip install pandas), or convert it to CSV") from None
  frame = pandas.read_pickle(file)
  if not isinstance(frame, pandas.DataFrame):
    raise ValueError(
        f"{file!r} must hold a pandas DataFrame, got {type(frame).__name__}")
  return list(frame.columns), [list(r) for r in
                               frame.itertuples(index=False, name=None)]


def _embeddings_path(path, files, embeddings):
  if embeddings is not None:
    return embeddings
  folders = {os.path.dirname(os.path.abspath(f)) for f in files}
  if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
    folders = {os.fspath(path)}
  if len(folders) == 1:
    candidate = os.path.join(folders.pop(), DEFAULT_EMBEDDINGS)
    if os.path.isfile(candidate):
      return candidate
  raise checks.ArgumentError(lambda name: (
      f"no embeddings found for the RouterBench rows: give {name('embeddings')}"
      " a .npz with 'file', 'row' and 'embedding' arrays (or ids "
      "'<file name>:<row>' and 'embedding'), or a .npy with one row per CSV "
      f"row, or put {DEFAULT_EMBEDDINGS} next to the CSVs"))


def _merge(sample_ids, score, cost, model_names, prompt_ids):
  """Rows sharing a sample_id combined into the first of them.

  Returns the kept row indices and the merged score and cost.
  """
  groups: dict[str, list[int]] = {}
  for k, sample in enumerate(sample_ids):
    groups.setdefault(sample, []).append(k)
  score, cost = score.copy(), cost.copy()
  keep = []
  for sample, rows in groups.items():
    first = rows[0]
    keep.append(first)
    if len(rows) == 1:
      continue
    for j, model in enumerate(model_names):
      labelled = [r for r in rows if not np.isnan(score[r, j])]
      if not labelled:
        continue
      values = {float(score[r, j]) for r in labelled}
      if len(values) > 1:
        raise ValueError(
            f"rows sharing sample_id {sample!r} ({', '.join(prompt_ids[rows])}) "
            f"have conflicting labels for model {model!r}: {sorted(values)}")
      score[first, j] = score[labelled[0], j]
      cost[first, j] = cost[labelled[0], j]
  keep = np.asarray(sorted(keep))
  return keep, score[keep], cost[keep]
