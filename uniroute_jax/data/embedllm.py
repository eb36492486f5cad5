"""Results in the EmbedLLM layout (Zhuang et al., 2024), e.g. MMLU-Pro.

A directory holds ``model_order.csv`` (``model_id``, ``model_name``),
``question_order.csv`` (``prompt_id``, ``prompt``, ...), any of ``train.csv``
/ ``val.csv`` / ``test.csv`` (one row per labelled cell: ``model_id``,
``prompt_id``, ``label``, ...), ``embeddings.npy`` (row i = prompt_id i) and,
since EmbedLLM itself has no prices, a ``costs.csv`` with one cost per model.
"""

from __future__ import annotations

import os

import numpy as np

from uniroute_jax import checks
from uniroute_jax.data.embeddings import load_embeddings
from uniroute_jax.data.long import (check_unit_interval, column_index,
                                    data_row, model_costs, parse_floats,
                                    parse_ints, read_csv, reject_conflicts)
from uniroute_jax.types import RoutingData

SPLIT_FILES = ("train.csv", "val.csv", "test.csv")


def load_embedllm(directory, *, embeddings=None, costs=None) -> RoutingData:
  """Loads an EmbedLLM-layout directory; the splits are concatenated.

  Args:
    directory: the folder holding ``model_order.csv``,
      ``question_order.csv`` and at least one of ``train.csv``, ``val.csv``,
      ``test.csv``.
    embeddings: an embeddings file (see
      :func:`uniroute_jax.data.load_embeddings`); default
      ``<directory>/embeddings.npy``. A ``.npy`` is indexed by prompt_id
      (row i = prompt_id i), so the prompt ids must be 0 .. n-1; an ``.npz``
      with ids is aligned by id.
    costs: per-model costs: a mapping from model name to cost, or a CSV with
      a ``model_name`` column and a numeric column (``num_params_b`` if
      present, else its only numeric column); default
      ``<directory>/costs.csv``.

  Returns:
    A validated :class:`RoutingData`: models in ``model_order.csv`` order,
    prompts in ``question_order.csv`` order, ``prompt_ids`` the integer
    prompt_id values, loss = 1 - label, cost [m]. A (model, prompt) cell with
    no row (or an empty label) has mask False and loss 0.

  Raises:
    FileNotFoundError: when the directory or a required file is missing.
    ValueError: on missing columns, unknown or duplicate ids, labels outside
      [0, 1], a cell labelled twice with different labels, or no cost.
  """
  directory = checks.file_path("directory", directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"EmbedLLM directory not found: {directory!r}")
  model_ids, model_names = _model_order(os.path.join(directory, "model_order.csv"))
  prompt_ids = _prompt_order(os.path.join(directory, "question_order.csv"))
  splits = [os.path.join(directory, f) for f in SPLIT_FILES
            if os.path.isfile(os.path.join(directory, f))]
  if not splits:
    raise FileNotFoundError(
        f"EmbedLLM directory {directory!r} has none of {list(SPLIT_FILES)}")
  n, m = len(prompt_ids), len(model_ids)
  rows, cols, labels, sources = [], [], [], []
  for k, path in enumerate(splits):
    p, j, y = _labels(path, prompt_ids, model_ids, model_names)
    rows.append(p)
    cols.append(j)
    labels.append(y)
    sources.append(np.stack([np.full(p.shape, k), np.arange(p.size)], axis=1))
  rows, cols, labels, sources = (np.concatenate(a) for a in
                                 (rows, cols, labels, sources))

  def describe(a, b):
    where = [f"{os.path.basename(splits[sources[r, 0]])} "
             f"{data_row(sources[r, 1])}" for r in (a, b)]
    return (f"EmbedLLM directory {directory!r} labels model "
            f"{model_names[cols[a]]!r} on prompt_id {prompt_ids[rows[a]]} "
            f"twice with different labels ({where[0]} and {where[1]})")

  reject_conflicts(rows * m + cols, [labels], describe)
  observed = ~np.isnan(labels)
  loss = np.zeros((n, m), np.float32)
  mask = np.zeros((n, m), bool)
  loss[rows[observed], cols[observed]] = 1.0 - labels[observed]
  mask[rows[observed], cols[observed]] = True
  return RoutingData(
      embeddings=_embeddings(directory, embeddings, prompt_ids), loss=loss,
      mask=mask, cost=_costs(directory, costs, model_names),
      model_names=tuple(model_names), prompt_ids=prompt_ids).validate()


def _model_order(path: str):
  header, rows = read_csv(path)
  ids = parse_ints([r[column_index(header, "model_id", path)] for r in rows],
                   path, "model_id")
  names = [r[column_index(header, "model_name", path)].strip() for r in rows]
  if not names:
    raise ValueError(f"{path!r} lists no models")
  _unique(ids, path, "model_id")
  _unique(np.asarray(names), path, "model_name")
  return ids, names


def _prompt_order(path: str) -> np.ndarray:
  header, rows = read_csv(path)
  ids = parse_ints([r[column_index(header, "prompt_id", path)] for r in rows],
                   path, "prompt_id")
  if not ids.size:
    raise ValueError(f"{path!r} lists no prompts")
  _unique(ids, path, "prompt_id")
  return ids


def _unique(values: np.ndarray, path: str, column: str) -> None:
  distinct, counts = np.unique(values, return_counts=True)
  if np.any(counts > 1):
    raise ValueError(
        f"{path!r} column {column!r} must be unique, but "
        f"{distinct[counts > 1][0].item()!r} appears more than once")


def _positions(known: np.ndarray, values: np.ndarray, path: str,
               column: str, reference: str) -> np.ndarray:
  """Index into ``known`` of each of ``values``; unknown values are an error."""
  order = np.argsort(known)
  at = np.minimum(np.searchsorted(known[order], values), known.size - 1)
  found = known[order][at] == values
  if not np.all(found):
    row = int(np.nonzero(~found)[0][0])
    raise ValueError(
        f"{path!r} column {column!r} has {values[row]} in {data_row(row)}, "
        f"which is not in {reference}")
  return order[at]


def _labels(path: str, prompt_ids: np.ndarray, model_ids: np.ndarray,
            model_names):
  header, rows = read_csv(path)
  index = {c: column_index(header, c, path)
           for c in ("model_id", "prompt_id", "label")}
  model = parse_ints([r[index["model_id"]] for r in rows], path, "model_id")
  prompt = parse_ints([r[index["prompt_id"]] for r in rows], path, "prompt_id")
  label = parse_floats([r[index["label"]] for r in rows], path, "label")
  check_unit_interval(label, path, "label")
  cols = _positions(model_ids, model, path, "model_id", "model_order.csv")
  if "model_name" in header:
    # The split files repeat each model's name; one that disagrees with
    # model_order.csv means the ids and names were mixed up somewhere.
    named = column_index(header, "model_name", path)
    given = np.asarray([r[named].strip() for r in rows], dtype=str)
    expected = np.asarray(model_names, dtype=str)[cols]
    wrong = np.nonzero(given != expected)[0]
    if wrong.size:
      row = int(wrong[0])
      raise ValueError(
          f"{path!r} {data_row(row)} has model_id {model[row]} with "
          f"model_name {str(given[row])!r}, but model_order.csv names "
          f"model_id {model[row]} {str(expected[row])!r}")
  prompts = _positions(prompt_ids, prompt, path, "prompt_id",
                       "question_order.csv")
  return prompts, cols, label


def _embeddings(directory: str, embeddings, prompt_ids: np.ndarray):
  if embeddings is None:
    embeddings = os.path.join(directory, "embeddings.npy")
    if not os.path.isfile(embeddings):
      raise checks.MissingFileError(lambda name: (
          f"no embeddings for EmbedLLM directory {directory!r}: expected "
          f"{embeddings!r} (row i = prompt_id i), or give an embeddings file "
          f"with {name('embeddings')}"))
  embeddings = checks.file_path("embeddings", embeddings)
  if not embeddings.lower().endswith(".npy"):
    return load_embeddings(embeddings, prompt_ids)
  n = prompt_ids.size
  if not np.array_equal(np.sort(prompt_ids), np.arange(n)):
    raise ValueError(
        f"{embeddings!r} is indexed by prompt_id (row i = prompt_id i), so "
        f"question_order.csv prompt_id must be 0..{n - 1}; use an .npz with "
        "prompt_ids to align by id instead")
  return load_embeddings(embeddings, np.arange(n))[prompt_ids]


def _costs(directory: str, costs, model_names):
  if costs is None:
    costs = os.path.join(directory, "costs.csv")
    if not os.path.isfile(costs):
      raise checks.ArgumentError(lambda name: (
          f"a cost per model is required, but {costs!r} does not exist: write "
          "a CSV with a 'model_name' column and a numeric cost column there, "
          f"or give such a CSV with {name('costs')}"))
  return model_costs(costs, model_names, preferred=("num_params_b",))
