"""Prompt embeddings from .npy / .npz files, aligned to a loader's prompts.

Files are always read with ``allow_pickle=False``: an embeddings file is data a
user downloads, and unpickling it could run arbitrary code. String ids must
therefore be stored as NumPy unicode arrays (``np.array(ids, dtype=str)``),
never as object arrays.
"""

from __future__ import annotations

import json
import os

import numpy as np

from uniroute_jax import checks, io

# Keys an .npz may use for the prompt ids and for the [n, d] matrix.
ID_KEYS = ("prompt_ids", "ids", "prompt_id")
EMBEDDING_KEYS = ("embeddings", "embedding")
# The identity of the encoder (JSON), as ``uniroute embed`` records it.
EMBEDDER_KEY = "embedder"


def load_embeddings(path, prompt_ids) -> np.ndarray:
  """Reads an embeddings file and returns one row per prompt of ``prompt_ids``.

  Accepted layouts:

  * ``.npy`` holding an [n, d] array whose row i belongs to ``prompt_ids[i]``
    (the row count must equal n).
  * ``.npz`` holding a single array: treated like ``.npy``.
  * ``.npz`` holding an id array (key ``prompt_ids``, ``ids`` or
    ``prompt_id``) and an [N, d] array (key ``embeddings`` or ``embedding``):
    rows are matched to ``prompt_ids`` by id. Every prompt id must be present;
    ids the file has beyond them are ignored.
  * ``.npz`` with ``file`` and ``row`` arrays plus ``embedding`` (the layout
    of the shared RouterBench embeddings): the id of a row is
    ``"<file>:<row>"``, the prompt id format of
    :func:`uniroute_jax.data.load_routerbench`.

  Ids are compared as strings, so integer ids in the file match the string
  form of the prompt ids (and the other way round).

  Args:
    path: the ``.npy`` or ``.npz`` file.
    prompt_ids: [n] the ids of the prompts, in the order wanted.

  Returns:
    float32 [n, d] embeddings, row i for ``prompt_ids[i]``.

  Raises:
    FileNotFoundError: when ``path`` does not exist.
    ValueError: on an unknown file type, a missing or ambiguous array, a row
      count that does not match, prompt ids absent from the file, duplicate
      ids, or NaN / infinite values.
  """
  path = checks.file_path("path", path)
  prompt_ids = _prompt_ids(prompt_ids)
  ids, matrix, id_key = _read(path)
  if ids is None:
    matrix = _in_prompt_order(path, matrix, len(prompt_ids))
  else:
    matrix = _aligned(path, ids, matrix, prompt_ids, id_key)
  matrix = matrix.astype(np.float32)
  if not np.all(np.isfinite(matrix)):
    row = int(np.nonzero(~np.all(np.isfinite(matrix), axis=1))[0][0])
    raise ValueError(
        f"embeddings from {path!r} contain NaN or infinity (first in the row "
        f"for prompt id {_to_str(prompt_ids[row])!r}; float16/float64 values "
        "beyond float32's range also become infinite)")
  return matrix


def read_embeddings(path) -> tuple[np.ndarray | None, np.ndarray]:
  """(ids, [N, d] float32 embeddings) of an embeddings file, in the file's
  own order; ids are None when the file has none (its rows are then in
  prompt order). The layouts are those of :func:`load_embeddings`.

  Raises:
    FileNotFoundError: when ``path`` does not exist.
    ValueError: on an unknown file type, a missing or ambiguous array,
      repeated ids, or NaN / infinite values.
  """
  path = checks.file_path("path", path)
  ids, matrix, id_key = _read(path)
  if ids is not None:
    ids = _as_text(path, ids, id_key)
    _unique(path, ids, id_key)
  matrix = matrix.astype(np.float32)
  bad = ~np.all(np.isfinite(matrix), axis=1)
  if bad.any():
    row = int(np.nonzero(bad)[0][0])
    # An array's row index, not a text file's line: say where counting starts.
    where = (f"array row {row}, counting from 0" if ids is None
             else f"id {_to_str(ids[row])!r}")
    raise ValueError(
        f"embeddings from {path!r} contain NaN or infinity (first at {where}; "
        "float16/float64 values beyond float32's range also become infinite)")
  return ids, matrix


def _prompt_ids(prompt_ids) -> np.ndarray:
  """The wanted ids as a 1-d array (a string is one id too many ways)."""
  if isinstance(prompt_ids, (str, bytes)) or prompt_ids is None:
    raise ValueError(f"prompt_ids must be a 1-d sequence of ids, got "
                     f"{prompt_ids!r}")
  try:
    ids = np.asarray(prompt_ids)
  except (TypeError, ValueError) as err:
    raise ValueError(f"prompt_ids must be a 1-d sequence of ids ({err})") from None
  if ids.ndim != 1:
    raise ValueError(f"prompt_ids must be a 1-d sequence of ids, got shape "
                     f"{ids.shape}")
  return ids


def embedder_of(path) -> dict | None:
  """The encoder identity an embeddings ``.npz`` records (``uniroute embed``
  writes it), or None when the file records none (a ``.npy``, or an ``.npz``
  from elsewhere).

  Raises:
    ValueError: when the recorded identity is not a JSON object.
  """
  path = checks.file_path("path", path)
  if not path.lower().endswith(".npz"):
    return None
  raw = io.read_npz(path, what="an embeddings file",
                    keys=(EMBEDDER_KEY,)).get(EMBEDDER_KEY)
  if raw is None:
    return None
  try:
    identity = json.loads(str(raw[()]))
  except (json.JSONDecodeError, TypeError, IndexError):
    identity = None
  if not isinstance(identity, dict):
    raise ValueError(f"{path!r} array {EMBEDDER_KEY!r} must be a JSON object "
                     "naming the encoder")
  return identity


def _as_text(path: str, ids: np.ndarray, id_key: str) -> np.ndarray:
  """Ids as a unicode array: bytes are decoded as UTF-8, numbers written."""
  if ids.dtype.kind == "S":
    try:
      return np.char.decode(ids, "utf-8")
    except UnicodeDecodeError:
      raise ValueError(f"ids {id_key!r} in {path!r} are bytes that are not "
                       "UTF-8 text") from None
  return ids.astype(str)


def _unique(path: str, ids: np.ndarray, id_key: str) -> None:
  sorted_ids = np.sort(ids, kind="stable")
  repeated = np.nonzero(sorted_ids[1:] == sorted_ids[:-1])[0]
  if repeated.size:
    raise ValueError(
        f"ids {id_key!r} in {path!r} must be unique, but "
        f"{str(sorted_ids[repeated[0]])!r} appears more than once")


def _matrix(path: str, array: np.ndarray) -> np.ndarray:
  if array.ndim != 2:
    raise ValueError(
        f"embeddings in {path!r} must be a 2-d array [n, d], got shape "
        f"{array.shape}")
  if not (np.issubdtype(array.dtype, np.floating)
          or np.issubdtype(array.dtype, np.integer)):
    raise ValueError(
        f"embeddings in {path!r} must be numeric, got dtype {array.dtype}")
  return array


def _in_prompt_order(path: str, array: np.ndarray, n: int) -> np.ndarray:
  if array.shape[0] != n:
    raise ValueError(
        f"embeddings in {path!r} have {array.shape[0]} rows but there are {n} "
        "prompts; a .npy must hold exactly one row per prompt, in prompt order "
        "(use an .npz with prompt ids to align by id)")
  return array


def _read(path: str) -> tuple[np.ndarray | None, np.ndarray, str]:
  """(ids, [N, d] matrix, where the ids came from) of an embeddings file in
  the file's own order; ids are None when the file has none (its rows are in
  prompt order). The layouts are those of :func:`load_embeddings`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"embeddings file not found: {path!r}")
  suffix = os.path.splitext(path)[1].lower()
  what = "an embeddings file"
  if suffix == ".npy":
    return None, _matrix(path, io.read_npy(path, what=what)), ""
  if suffix != ".npz":
    raise ValueError(
        f"embeddings file {path!r} must be a .npy or .npz file, got {suffix!r}")
  ids, matrix, id_key = _from_npz(path, io.read_npz(path, what=what))
  if ids is not None and (ids.ndim != 1 or ids.shape[0] != matrix.shape[0]):
    raise ValueError(
        f"ids {id_key!r} in {path!r} must be 1-d with one id per embedding "
        f"row ({matrix.shape[0]}), got shape {ids.shape}")
  return ids, matrix, id_key


def _from_npz(path: str, arrays: dict[str, np.ndarray]):
  keys = [k for k in arrays if k != EMBEDDER_KEY]
  for group in (ID_KEYS, EMBEDDING_KEYS):
    present = [k for k in group if k in keys]
    if len(present) > 1:
      raise ValueError(f"{path!r} holds both {present[0]!r} and "
                       f"{present[1]!r}; keep one, as which to use is ambiguous")
  id_key = next((k for k in ID_KEYS if k in keys), None)
  emb_key = next((k for k in EMBEDDING_KEYS if k in keys), None)
  layout = ({"file", "row", "sample_id"} if id_key is None else {id_key})
  unused = sorted(set(keys) - layout - {emb_key}) if emb_key else []
  if unused:
    raise ValueError(f"{path!r} holds arrays {unused} that an embeddings file "
                     "does not use; it should hold only ids and embeddings")
  if id_key is None and {"file", "row"} <= set(keys) and emb_key is not None:
    files, rows = arrays["file"], arrays["row"]
    if files.shape != rows.shape or files.ndim != 1:
      raise ValueError(
          f"arrays 'file' and 'row' of {path!r} must be 1-d and of equal "
          f"length, got shapes {files.shape} and {rows.shape}")
    ids = np.char.add(np.char.add(files.astype(str), ":"), rows.astype(str))
    return ids, _matrix(path, arrays[emb_key]), "file:row"
  if id_key is not None:
    if emb_key is None:
      raise ValueError(
          f"{path!r} has ids under {id_key!r} but no embeddings array; "
          f"expected one of {list(EMBEDDING_KEYS)}, found {keys}")
    return arrays[id_key], _matrix(path, arrays[emb_key]), id_key
  if len(keys) == 1:
    return None, _matrix(path, arrays[keys[0]]), ""
  raise ValueError(
      f"{path!r} holds arrays {keys}; expected a single [n, d] array, or "
      f"ids (one of {list(ID_KEYS)}) plus embeddings (one of "
      f"{list(EMBEDDING_KEYS)})")


def _aligned(path: str, ids: np.ndarray, matrix: np.ndarray, prompt_ids,
             id_key: str) -> np.ndarray:
  """Rows of ``matrix`` (keyed by the 1-d ``ids``) for each of ``prompt_ids``."""
  ids = _as_text(path, ids, id_key)
  _unique(path, ids, id_key)
  order = np.argsort(ids, kind="stable")
  sorted_ids = ids[order]
  wanted = np.asarray([_to_str(i) for i in prompt_ids], dtype=str)
  if wanted.size == 0:
    return matrix[:0]
  at = np.minimum(np.searchsorted(sorted_ids, wanted), len(sorted_ids) - 1)
  found = sorted_ids[at] == wanted if len(sorted_ids) else np.zeros(
      wanted.shape, bool)
  if not np.all(found):
    missing = wanted[~found]
    raise ValueError(
        f"{missing.size} of {wanted.size} prompt ids are missing from the ids "
        f"{id_key!r} of {path!r}, e.g. {str(missing[0])!r}")
  return matrix[order[at]]


def _to_str(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)
