"""Files: router files (one ``.npz`` of plain arrays and JSON metadata, no
pickle) and the atomic writes every output of the library goes through.

A router file holds ``psi`` [k, m] and ``cost`` [m], the map's arrays
(``ClusterMapping.to_arrays``: ``centroids`` for k-means; every array of a
learned map's ``params`` and ``state`` under its key path, e.g.
``params/dense/0/kernel``, and its training history), and one JSON string
``metadata``: format, version, the map's kind and structure, the LLM names,
k, d, the dtype and the rule that estimates Psi of LLMs added later
(``psi_prior``, version 4). It is read with ``allow_pickle=False``, and every array
is checked against the metadata, so a file that is not a router fails with
one ``ValueError`` saying why.

Writes never leave a partial file and never replace an existing one unless
asked: the content goes to a temporary file in the same folder, which is
then linked into place (or renamed, when overwriting is allowed).
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from uniroute_jax import features, maps

FORMAT = "uniroute_jax.Router"
# Version 4 adds the rule that estimates Psi of LLMs added later
# (``psi_prior``): a reader that ignored it would onboard them differently.
FORMAT_VERSION = 4
_READABLE_VERSIONS = (1, 2, 3, 4)
_METADATA_KEY = "metadata"


class SavedRepresentatives(NamedTuple):
  """A router's representative prompts, as stored."""

  ids: tuple[str, ...]
  embeddings: np.ndarray     # [n, d]
  membership: np.ndarray     # [n] int32 or [n, k]


class RouterContents(NamedTuple):
  """What a router file holds."""

  cluster_map: maps.ClusterMapping
  models: tuple[str, ...]
  psi: np.ndarray
  cost: np.ndarray
  embedder: dict | None = None   # the encoder's identity, when known
  counts: np.ndarray | None = None   # [k, m]; None (files before version 3)
  representatives: SavedRepresentatives | None = None
  psi_prior: float | str | None = None   # how Psi of new LLMs is estimated


_REPRESENTATIVES = ("representatives/ids", "representatives/embeddings",
                    "representatives/membership")


# ------------------------------------------------------------ atomic writes


def atomic_write(path, write: Callable[[Any], None], *, overwrite: bool = False,
                 binary: bool = True) -> pathlib.Path:
  """Writes a file through ``write(file)`` so that it appears whole or not at all.

  Args:
    path: the file to create.
    write: called with the open temporary file.
    overwrite: replace an existing file; otherwise an existing ``path``
      raises ``FileExistsError`` (also when one appears while writing).
    binary: open the temporary file in binary mode (else UTF-8 text).

  Returns:
    ``path`` as a ``pathlib.Path``.
  """
  path = pathlib.Path(path)
  if not str(path) or str(path) == "." or os.fspath(path).endswith(os.sep):
    raise ValueError(f"expected a file name to write, got {os.fspath(path)!r}")
  if not overwrite and os.path.lexists(path):
    raise FileExistsError(f"{path} exists; it is never overwritten")
  if path.is_dir():
    raise IsADirectoryError(f"{path} is a directory")
  if not path.parent.is_dir():
    raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does "
                            "not exist")
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
  # os.open applies the umask, so the file gets the usual permissions.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb" if binary else "w",
                   **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    if overwrite:
      os.replace(tmp, path)
    else:
      _rename_no_clobber(tmp, path)
  finally:
    if os.path.lexists(tmp):
      os.unlink(tmp)
  return path


def _rename_no_clobber(tmp, path) -> None:
  """Moves ``tmp`` to ``path`` unless ``path`` exists (atomically where the
  file system has hard links)."""
  try:
    os.link(tmp, path)
  except FileExistsError:
    raise FileExistsError(f"{path} exists; it is never overwritten") from None
  except OSError:
    if os.path.lexists(path):
      raise FileExistsError(f"{path} exists; it is never overwritten") from None
    os.replace(tmp, path)


# ---------------------------------------------------------------- routers


def save_router(path, contents: RouterContents, *, overwrite: bool = False
                ) -> pathlib.Path:
  """Writes a router file (see the module docstring) exactly at ``path``."""
  cluster_map = contents.cluster_map
  map_arrays, map_meta = cluster_map.to_arrays()
  meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": cluster_map.kind,
          "models": list(contents.models),
          "num_clusters": cluster_map.num_clusters, "dim": cluster_map.dim,
          "dtype": np.dtype(contents.psi.dtype).name, "map": map_meta}
  if contents.embedder is not None:
    meta["embedder"] = dict(contents.embedder)
  if contents.psi_prior is not None:
    meta["psi_prior"] = contents.psi_prior
  arrays = {"psi": np.asarray(contents.psi), "cost": np.asarray(contents.cost)}
  if contents.counts is not None:
    arrays["counts"] = np.asarray(contents.counts)
  rep = contents.representatives
  if rep is not None:
    meta["representatives"] = len(rep.ids)
    arrays.update(zip(_REPRESENTATIVES, (np.asarray(rep.ids, dtype=str),
                                          np.asarray(rep.embeddings),
                                          np.asarray(rep.membership))))
  for key, value in map_arrays.items():
    if key in arrays or key == _METADATA_KEY:
      raise ValueError(f"a map may not store an array named {key!r}")
    arrays[key] = value
  arrays[_METADATA_KEY] = np.array(json.dumps(meta))
  return atomic_write(path, lambda f: np.savez(f, **arrays), overwrite=overwrite)


def load_router(path, *, map_types: Sequence[type[maps.ClusterMapping]] =
                maps.BUILT_IN) -> RouterContents:
  """Reads a router file written by :func:`save_router` (no pickle).

  Args:
    path: the ``.npz`` file.
    map_types: the :class:`~uniroute_jax.maps.ClusterMapping` types the file
      may hold, by their ``kind``.

  Raises:
    ValueError: ``path`` is not a saved router (not an npz file, no router
      metadata, an object array, missing or malformed arrays), or was
      written in an unknown format version.
  """
  if os.path.isdir(path):
    raise ValueError(f"{path} is a folder, not a router file (a .npz saved "
                     "by Router.save or uniroute fit)")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"router file not found: {path}")
  arrays = read_npz(path, what="a saved Router")
  meta = _read_metadata(path, arrays)
  try:
    return _contents(meta, arrays, {t.kind: t for t in map_types})
  except KeyError as err:
    raise ValueError(f"{path} is not a valid saved Router: its metadata lacks "
                     f"{err.args[0]!r}") from None
  except (TypeError, AttributeError) as err:
    raise ValueError(f"{path} is not a valid saved Router: malformed metadata "
                     f"({err})") from None
  except ValueError as err:
    raise ValueError(f"{path}: {err}") from None


# A file a user gives may hold any bytes, and NumPy's and zipfile's parsers
# answer corrupted ones with many exception types (EOFError, BadZipFile,
# zlib.error, NotImplementedError for a "compression method", RuntimeError
# for an "encrypted" member, tokenize errors from a damaged header, ...).
# Reading is the only thing inside these guards, so any of them means the
# file is unreadable, never a bug of ours.
_PICKLED = "allow_pickle"


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")   # a member first; an empty archive


def _magic(path, what: str, magics: Sequence[bytes], kind: str) -> None:
  """Refuses a file that does not start like ``kind`` before NumPy reads
  it (NumPy would try to unpickle it, and call it pickled data)."""
  with open(path, "rb") as f:
    head = f.read(8)
  if not any(head.startswith(m) for m in magics):
    raise ValueError(f"{path} is not {what}: it is not a NumPy {kind} file")


def _unreadable(path, what: str, err: Exception) -> ValueError:
  if isinstance(err, ValueError) and _PICKLED in str(err):
    return ValueError(
        f"{path} is not {what}: it holds an object array (pickled data), which "
        "is never loaded; store text as a unicode array (dtype=str) and "
        "numbers as a numeric array")
  first = str(err).splitlines()[0] if str(err) else type(err).__name__
  return ValueError(f"{path} is not {what} (unreadable: {first})")


def read_npz(path, *, what: str,
             keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` file (or those of ``keys`` it holds; the
  others are not read), without pickle.

  Raises:
    ValueError: naming ``path`` and ``what`` it should be, for anything but
      a readable npz archive of plain arrays (truncated or corrupted files,
      a single ``.npy`` array, object arrays).
  """
  _magic(path, what, _ZIP_MAGICS + (_NPY_MAGIC,), ".npz")
  with open(path, "rb") as f:   # closed on every path, errors included
    try:
      loaded = np.load(f, allow_pickle=False)
    except Exception as err:  # pylint: disable=broad-except (see above)
      raise _unreadable(path, what, err) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise ValueError(f"{path} is not {what} (a single array, not npz)")
    with loaded:
      wanted = [k for k in loaded.files if keys is None or k in keys]
      try:
        return {key: loaded[key] for key in wanted}
      except Exception as err:  # pylint: disable=broad-except (see above)
        raise _unreadable(path, what, err) from None


def read_npy(path, *, what: str) -> np.ndarray:
  """The array of an ``.npy`` file, read without pickle.

  Raises:
    ValueError: as :func:`read_npz`, for anything but one plain array.
  """
  _magic(path, what, _ZIP_MAGICS + (_NPY_MAGIC,), ".npy")
  with open(path, "rb") as f:
    try:
      loaded = np.load(f, allow_pickle=False)
    except Exception as err:  # pylint: disable=broad-except (see above)
      raise _unreadable(path, what, err) from None
    if not isinstance(loaded, np.ndarray):
      loaded.close()
      raise ValueError(f"{path} is not {what} (an npz archive, not one .npy "
                       "array)")
    return loaded


def _read_metadata(path, arrays) -> dict:
  raw = arrays.pop(_METADATA_KEY, None)
  if raw is None or raw.dtype.kind != "U" or raw.ndim != 0:
    raise ValueError(
        f"{path} is not a saved Router (no '{_METADATA_KEY}' string entry)")
  try:
    meta = json.loads(str(raw[()]))
  except json.JSONDecodeError as err:
    raise ValueError(f"{path} is not a saved Router (bad metadata: {err})"
                     ) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{path} is not a saved Router (metadata format is not "
                     f"{FORMAT!r})")
  version = meta.get("version")
  if isinstance(version, bool) or version not in _READABLE_VERSIONS:
    raise ValueError(
        f"{path} has Router format version {meta.get('version')!r}; this "
        f"version of uniroute_jax reads versions {list(_READABLE_VERSIONS)}")
  for key in ("num_clusters", "dim"):
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{path} is not a valid saved Router: metadata {key!r} "
                       f"must be a positive integer, got {value!r}")
  if not isinstance(meta.get("map", {}), dict):
    raise ValueError(f"{path} is not a valid saved Router: metadata 'map' must "
                     f"be a mapping, got {meta['map']!r}")
  try:
    dtype = np.dtype(meta["dtype"])
  except (KeyError, TypeError) as err:
    raise ValueError(f"{path} is not a valid saved Router: metadata 'dtype' is "
                     f"missing or not a dtype ({err})") from None
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"{path} is not a valid saved Router: metadata 'dtype' "
                     f"must be a float dtype, got {dtype}")
  if jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise ValueError(
        f"{path} was saved in {dtype.name}; enable it with "
        f"jax.config.update('jax_enable_x64', True) before loading")
  if meta["version"] == 1:
    _upgrade_version_1(meta, arrays)
  return meta


def _upgrade_version_1(meta: dict, arrays: dict) -> None:
  """Version 1 kept a learned map's running averages under ``batch_stats/``
  and its structure under ``cluster_map``; it had no cluster mask."""
  if meta.get("kind") == maps.LearnedMap.kind:
    meta["map"] = meta.pop("cluster_map")
    for key in [k for k in arrays if k.startswith("batch_stats/")]:
      arrays["state/" + key[len("batch_stats/"):]] = arrays.pop(key)
    k = int(meta["num_clusters"])
    arrays["state/cluster_mask"] = np.ones((k,), bool)
    history = arrays.get("loss_history")
    if history is not None:
      arrays.setdefault("validation_area", np.full(history.shape, np.nan,
                                                   history.dtype))
      arrays.setdefault("best_epoch", np.asarray(history.shape[0] - 1, np.int32))
  else:
    meta.setdefault("map", {})


def _contents(meta: dict, arrays: dict, map_types: dict) -> RouterContents:
  dtype = np.dtype(meta["dtype"])
  k, d = int(meta["num_clusters"]), int(meta["dim"])
  models = meta["models"]
  if not isinstance(models, list) or not all(isinstance(n, str) for n in models):
    raise ValueError("saved Router metadata 'models' must be a list of names")
  m = len(models)
  psi = maps.take(arrays, "psi", (k, m), dtype)
  cost = maps.take(arrays, "cost", (m,), dtype)
  counts = (maps.take(arrays, "counts", (k, m), dtype) if "counts" in arrays
            else None)
  representatives = _representatives(meta, arrays, k, d, dtype)
  kind = meta.get("kind")
  if kind not in map_types:
    raise ValueError(f"saved Router has a map of kind {kind!r}; known: "
                     f"{sorted(map_types)} (pass map_types= for others)")
  cluster_map = map_types[kind].from_arrays(arrays, meta.get("map", {}),
                                            num_clusters=k, dim=d)
  if arrays:
    raise ValueError(f"saved Router has unexpected arrays {sorted(arrays)}")
  if cluster_map.dtype != dtype:
    raise ValueError(f"saved Router's dtype {dtype} does not match its map's "
                     f"({cluster_map.dtype})")
  embedder = meta.get("embedder")
  if embedder is not None and not isinstance(embedder, dict):
    raise ValueError(f"saved Router metadata 'embedder' must be a mapping, "
                     f"got {embedder!r}")
  psi_prior = features.prior_rule(meta.get("psi_prior"),
                                  "saved Router metadata 'psi_prior'")
  return RouterContents(cluster_map, tuple(models), psi, cost, embedder,
                        counts, representatives, psi_prior)


def _representatives(meta: dict, arrays: dict, k: int, d: int, dtype
                     ) -> SavedRepresentatives | None:
  n = meta.get("representatives")
  if n is None:
    if any(key in arrays for key in _REPRESENTATIVES):
      raise ValueError("saved Router holds representative prompts its "
                       "metadata does not announce")
    return None
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"saved Router metadata 'representatives' must be a "
                     f"positive integer, got {n!r}")
  ids = maps.take(arrays, _REPRESENTATIVES[0], (n,))
  if ids.dtype.kind != "U":
    raise ValueError(f"saved representative ids must be text, got {ids.dtype}")
  embeddings = maps.take(arrays, _REPRESENTATIVES[1], (n, d), dtype)
  membership = maps.take(arrays, _REPRESENTATIVES[2])
  if membership.shape == (n,):
    if membership.dtype != np.int32 or np.any(membership < 0) or np.any(
        membership >= k):
      raise ValueError(f"saved representative memberships must be int32 "
                       f"clusters in [0, {k})")
  elif membership.shape == (n, k):
    membership = maps.take({"m": membership}, "m", (n, k), dtype)
  else:
    raise ValueError(f"saved representative memberships have shape "
                     f"{membership.shape}, expected ({n},) or ({n}, {k})")
  return SavedRepresentatives(tuple(ids.tolist()), embeddings, membership)
