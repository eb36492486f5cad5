"""An on-disk cache of prompt embeddings, so re-embedding the same prompts
costs nothing.

Each vector is stored under the sha256 of the embedder's identity (name,
weights hash, truncation, maximum length) and the prompt's text, so a change
of any setting or of the weights misses instead of returning stale vectors.
The store is one SQLite file (the standard library's ``sqlite3``): safe for
concurrent runs, written in transactions, no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from typing import Callable, Sequence

import numpy as np

_TABLE = "embeddings"


def default_cache_path() -> str:
  """``$UNIROUTE_CACHE``, else ``$XDG_CACHE_HOME/uniroute_jax``, else
  ``~/.cache/uniroute_jax``; the file is ``embeddings.sqlite`` in it."""
  folder = os.environ.get("UNIROUTE_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(
          os.path.expanduser("~"), ".cache"), "uniroute_jax")
  return os.path.join(folder, "embeddings.sqlite")


_SQLITE_HEADER = b"SQLite format 3\x00"


def is_cache_file(path) -> bool:
  """Whether an existing ``path`` is an embedding cache: an SQLite file
  holding no table but the cache's. The command line never takes over any
  other file of the user's, an empty one or another SQLite database
  included."""
  with open(path, "rb") as f:
    if f.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
      return False
  try:
    db = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
    try:
      return not _foreign_tables(db)
    finally:
      db.close()
  except sqlite3.Error:
    return False


def _foreign_tables(db) -> list[str]:
  """Tables of ``db`` that are not the cache's (SQLite's own excluded)."""
  names = [row[0] for row in db.execute(
      "SELECT name FROM sqlite_master WHERE type = 'table'")]
  return [n for n in names if n != _TABLE and not n.startswith("sqlite_")]


def _keys(identity: dict, texts: Sequence[str]) -> list[bytes]:
  prefix = json.dumps(identity, sort_keys=True).encode() + b"\0"
  return [hashlib.sha256(prefix + text.encode("utf-8", "surrogatepass")).digest()
          for text in texts]


class EmbeddingCache:
  """Vectors by (embedder, text), in one SQLite file.

  Args:
    path: the cache file; default :func:`default_cache_path`. Its folder is
      created when missing. An SQLite database holding other tables is
      refused, never written.
  """

  def __init__(self, path=None):
    self.path = os.fspath(default_cache_path() if path is None else path)
    folder = os.path.dirname(os.path.abspath(self.path))
    try:
      os.makedirs(folder, exist_ok=True)
      self._db = sqlite3.connect(self.path, timeout=60)
      foreign = _foreign_tables(self._db)
      if foreign:
        self._db.close()
        raise ValueError(f"embedding cache {self.path} is another SQLite "
                         f"database (it holds {', '.join(foreign)}), left "
                         "as it is; choose another cache file")
      self._db.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} "
                       "(key BLOB PRIMARY KEY, dim INTEGER, vector BLOB)")
      self._db.commit()
    except (sqlite3.Error, OSError) as err:
      raise ValueError(f"embedding cache {self.path} cannot be used ({err}); "
                       "choose another cache file") from None

  def close(self) -> None:
    self._db.close()

  def __enter__(self) -> "EmbeddingCache":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def embed(self, embed: Callable[[list[str]], np.ndarray], identity: dict,
            texts: Sequence[str]) -> tuple[np.ndarray, int]:
    """(float32 [n, d] vectors of ``texts``, how many came from the cache):
    ``embed`` runs on the texts not cached yet (each distinct text once),
    and its vectors are stored."""
    texts = list(texts)
    keys = _keys(identity, texts)
    found = self._lookup(set(keys))
    missing = list(dict.fromkeys(k for k in keys if k not in found))
    if missing:
      first = {k: i for i, k in reversed(list(enumerate(keys)))}
      fresh = np.asarray(embed([texts[first[k]] for k in missing]), np.float32)
      self._store(zip(missing, fresh))
      found.update(zip(missing, fresh))
    computed = set(missing)
    hits = sum(k not in computed for k in keys)
    return np.stack([found[k] for k in keys]).astype(np.float32), hits

  def _lookup(self, keys: set[bytes]) -> dict[bytes, np.ndarray]:
    out = {}
    ordered = list(keys)
    try:
      for start in range(0, len(ordered), 500):   # SQLite's parameter limit
        chunk = ordered[start:start + 500]
        rows = self._db.execute(
            f"SELECT key, dim, vector FROM {_TABLE} WHERE key IN "
            f"({','.join('?' * len(chunk))})", chunk).fetchall()
        for key, dim, blob in rows:
          # A damaged entry is recomputed, never used.
          if not isinstance(blob, bytes) or len(blob) != 4 * dim:
            continue
          vector = np.frombuffer(blob, np.float32)
          if np.all(np.isfinite(vector)):
            out[key] = vector
    except sqlite3.Error as err:
      raise ValueError(f"embedding cache {self.path} cannot be read ({err}); "
                       "choose another cache file") from None
    return out

  def _store(self, items) -> None:
    try:
      with self._db:
        self._db.executemany(
            f"INSERT OR REPLACE INTO {_TABLE} (key, dim, vector) VALUES (?, ?, ?)",
            [(k, int(v.shape[0]), np.ascontiguousarray(v, np.float32).tobytes())
             for k, v in items])
    except sqlite3.Error as err:
      raise ValueError(f"embedding cache {self.path} cannot be written "
                       f"({err}); choose another cache file") from None
