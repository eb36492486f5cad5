"""A ready-to-use UniRoute router: a cluster map plus a pool of LLMs.

:class:`Router` bundles what routing a prompt needs: the cluster map (k-means
centroids, or a learned soft map Phi(x) from ``fit_cluster_map``) and the
pool, i.e. each LLM's name, feature vector Psi (a column of a [k, m] matrix)
and cost. It is built from the library's pure functions:
``clustering.kmeans`` and ``clustering.assign_clusters`` (hard clusters),
``cluster_map.apply_cluster_map`` (soft clusters), ``features.cluster_errors``
(Psi) and ``routing.route`` (the rule argmin_m gamma_m(x) + lambda c_m).

A router is immutable: :meth:`Router.add_models` and
:meth:`Router.remove_models` return a new router and never retrain
anything, which is the point of UniRoute (a new LLM only needs its labels on
the representative prompts).
It is a pytree whose leaves are its arrays (the model names and the map's
structure are static), so it can be passed into ``jax.jit``.

:meth:`Router.save` writes one ``.npz`` file of plain arrays (JSON metadata
in a string array; no pickle) and :meth:`Router.load` reads it back with
``allow_pickle=False``; a loaded router predicts bit for bit what the saved
one did.

Examples:
  >>> import numpy as np
  >>> x = np.array([[0, 0], [0, 1], [5, 5], [5, 6]], np.float32)
  >>> router = Router(centroids=np.array([[0, 0.5], [5, 5.5]], np.float32))
  >>> loss = np.array([[0, 1], [0, 1], [1, 0], [1, 1]], np.float32)
  >>> router = router.add_models(["big", "small"], x, loss, cost=[10.0, 1.0])
  >>> router
  Router(kind='kmeans', num_clusters=2, dim=2, models=('big', 'small'))
  >>> router.psi
  Array([[0. , 1. ],
         [1. , 0.5]], dtype=float32)
  >>> router.route(x, np.array([0.0, 1.0], np.float32)).choice
  Array([[0, 0, 1, 1],
         [1, 1, 1, 1]], dtype=int32)
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniroute_jax import _validation as check
from uniroute_jax import cluster_map as cmap
from uniroute_jax import clustering, features, routing
from uniroute_jax.types import Array

FORMAT = "uniroute_jax.Router"
FORMAT_VERSION = 1
_METADATA_KEY = "metadata"

_KMEANS = "kmeans"
_LEARNED_MAP = "learned_map"


@jax.tree_util.register_pytree_with_keys_class
class Router:
  """A UniRoute router: a cluster map and a pool of LLMs, immutable.

  Build one with :meth:`from_kmeans` (or ``Router(centroids=...)``) or
  :meth:`from_cluster_map` (or ``Router(cluster_map=...)``), then add LLMs
  with :meth:`add_models`.

  Args:
    centroids: [k, d] k-means centroids: each prompt belongs to its nearest
      centroid (UniRoute K-means, section 5.1 of the paper).
    cluster_map: a :class:`~uniroute_jax.cluster_map.FittedClusterMap`:
      each prompt gets the cluster probabilities Phi(x) [k] and
      gamma(x) = Phi(x)^T Psi (UniRoute LearnedMap, section 5.2). Exactly one
      of ``centroids`` and ``cluster_map`` must be given.
    models: the pool's LLM names, unique strings (default: an empty pool).
    psi: [k, m] per-cluster loss of each LLM, in [0, 1]; required with
      ``models``. Stored in the router's dtype.
    cost: [m] non-negative cost of each LLM; required with ``models``.

  Attributes:
    centroids: the [k, d] centroids, or None for a learned map.
    cluster_map: the ``FittedClusterMap``, or None for k-means.
    models: tuple of the pool's LLM names; routing choices index it.
    psi: [k, m] feature vectors of the pool.
    cost: [m] costs of the pool.
  """

  __slots__ = ("_centroids", "_cluster_map", "_config", "_models", "_psi",
               "_cost")

  def __init__(self, *, centroids=None, cluster_map=None, models=(),
               psi=None, cost=None):
    if (centroids is None) == (cluster_map is None):
      raise ValueError(
          "give exactly one of centroids (k-means) and cluster_map (a learned "
          "map)")
    config = None
    if centroids is not None:
      centroids = check.array("centroids", centroids, ndim=2,
                              dtype=check.compute_dtype(centroids),
                              shape_doc="[k, d]")
      if 0 in centroids.shape:
        raise ValueError(f"centroids must be a non-empty [k, d] array, got "
                         f"{centroids.shape}")
      check.finite("centroids", centroids)
      k, dtype = centroids.shape[0], centroids.dtype
    else:
      config = _map_config(cluster_map)
      k, dtype = config.num_clusters, check.compute_dtype(
          jnp.zeros((), config.dtype))
    models = _names("models", models, allow_empty=True)
    m = len(models)
    if psi is None and cost is None and not m:
      psi, cost = jnp.zeros((k, 0), dtype), jnp.zeros((0,), dtype)
    elif psi is None or cost is None:
      raise ValueError("psi and cost must both be given with models")
    psi = _check_psi(psi, k, m, dtype, "models")
    cost = _check_cost(cost, m, dtype, "models")
    _set(self, centroids, cluster_map, config, models, psi, cost)

  # ------------------------------------------------------------ construction

  @classmethod
  def from_kmeans(cls, key, embeddings, *, num_clusters: int,
                  **kmeans_kwargs) -> "Router":
    """A router with an empty pool on the k-means clusters of ``embeddings``.

    Args:
      key: a ``jax.random.key`` for the k-means++ seeding.
      embeddings: [n, d] (unlabelled) training prompt embeddings; the paper
        clusters the training prompts, not the representative ones.
      num_clusters: k.
      **kmeans_kwargs: passed to :func:`~uniroute_jax.clustering.kmeans`
        (``weights``, ``n_init``, ``max_iter``, ``tol``, ...).
    """
    embeddings = check.array("embeddings", embeddings, ndim=2,
                             shape_doc="[n, d]")
    check.finite("embeddings", embeddings)
    fit = clustering.kmeans(key, embeddings, num_clusters=num_clusters,
                            **kmeans_kwargs)
    return cls(centroids=fit.centroids)

  @classmethod
  def from_cluster_map(cls, fitted: cmap.FittedClusterMap) -> "Router":
    """A router with an empty pool on a learned cluster map.

    Args:
      fitted: a :class:`~uniroute_jax.cluster_map.FittedClusterMap` from
        :func:`~uniroute_jax.cluster_map.fit_cluster_map` (one fit: index a
        vmapped fit's leading axis out first).
    """
    return cls(cluster_map=fitted)

  # -------------------------------------------------------------- properties

  centroids = property(lambda self: self._centroids)
  cluster_map = property(lambda self: self._cluster_map)
  models = property(lambda self: self._models)
  psi = property(lambda self: self._psi)
  cost = property(lambda self: self._cost)

  @property
  def kind(self) -> str:
    """``"kmeans"`` (hard clusters) or ``"learned_map"`` (soft Phi(x))."""
    return _KMEANS if self._config is None else _LEARNED_MAP

  @property
  def num_clusters(self) -> int:
    """k."""
    return int(self._psi.shape[0])

  @property
  def dim(self) -> int:
    """d, the embedding size the router takes."""
    if self._config is None:
      return int(self._centroids.shape[1])
    return self._config.dim

  @property
  def num_models(self) -> int:
    """m, the number of LLMs in the pool."""
    return len(self._models)

  @property
  def dtype(self) -> jnp.dtype:
    """The dtype of ``psi`` and ``cost`` (the centroids' or the map's
    parameters' float, at least 32-bit)."""
    return self._psi.dtype

  def __setattr__(self, name, value):
    raise AttributeError(
        "Router is immutable: add_models and remove_models return a new one")

  def __delattr__(self, name):
    raise AttributeError("Router is immutable")

  def __repr__(self) -> str:
    return (f"Router(kind={self.kind!r}, num_clusters={self.num_clusters}, "
            f"dim={self.dim}, models={self._models!r})")

  # ------------------------------------------------------------------ pytree

  def tree_flatten_with_keys(self):
    children = ((jax.tree_util.GetAttrKey("centroids"), self._centroids),
                (jax.tree_util.GetAttrKey("cluster_map"), self._cluster_map),
                (jax.tree_util.GetAttrKey("psi"), self._psi),
                (jax.tree_util.GetAttrKey("cost"), self._cost))
    return children, (self._config, self._models)

  @classmethod
  def tree_unflatten(cls, aux, children):
    config, models = aux
    centroids, fitted, psi, cost = children
    router = object.__new__(cls)
    _set(router, centroids, fitted, config, models, psi, cost)
    return router

  # ------------------------------------------------------------- clustering

  def membership(self, embeddings) -> Array:
    """The clusters of prompts: [n] int32 nearest centroids (k-means), or
    [n, k] probabilities Phi(x) (learned map).

    Args:
      embeddings: [n, d] prompt embeddings.
    """
    x = check.array("embeddings", embeddings, ndim=2, shape_doc="[n, d]")
    if x.shape[1] != self.dim:
      raise ValueError(
          f"embeddings must have {self.dim} columns (the router's embedding "
          f"size), got shape {x.shape}")
    check.finite("embeddings", x)
    if self._config is None:
      return clustering.assign_clusters(x, self._centroids).cluster
    return cmap.apply_cluster_map(self._cluster_map, x)

  # -------------------------------------------------------------------- pool

  def add_models(self, names, embeddings, loss, cost, *, mask=None,
                 weights=None, prior_strength=0.0) -> "Router":
    """A new router with LLMs added, Psi from their labels (eq. 13).

    Psi is :func:`~uniroute_jax.features.cluster_errors` of the LLMs' loss on
    the given (representative, validation) prompts, grouped by this router's
    :meth:`membership`. With k-means that is the hard nearest-centroid
    assignment, as in the paper. With a learned map it is the soft
    membership Phi(x): Psi_kj is LLM j's mean loss weighted by each prompt's
    probability of cluster k. That estimates Psi under the same membership
    that routes prompts (gamma = Phi Psi), keeps every prompt's information
    (an argmax would discard the map's uncertainty and can leave clusters
    empty on a few hundred prompts), equals the hard means when Phi is
    one-hot, and needs no centroids. The paper instead uses the k-means
    clusters the map was trained on; to follow it, compute Psi with
    ``assign_clusters`` and ``cluster_errors`` and use :meth:`add_psi`.

    Args:
      names: the new LLMs' names (a sequence of unique strings not in the
        pool, or one string for one LLM).
      embeddings: [n, d] embeddings of the representative prompts.
      loss: [n, m_new] loss of each new LLM on each prompt, in [0, 1].
      cost: [m_new] non-negative cost per prompt of each new LLM (for
        per-prompt costs, pass their mean: a router ranks by a fixed cost).
      mask: optional [n, m_new] bool, False where a label is missing.
      weights: optional [n] non-negative prompt weights.
      prior_strength: shrinkage of each cluster's mean towards the LLM's
        overall mean, in pseudo-prompts (see ``cluster_errors``); 0 is eq. 13.

    Returns:
      A new :class:`Router` whose pool is this one's followed by ``names``.
    """
    names = self._new_names(names)
    m = len(names)
    loss = check.array("loss", loss, ndim=2, dtype=self.dtype,
                       shape_doc="[n, m_new]")
    if loss.shape[1] != m:
      raise ValueError(
          f"loss must have one column per name ({m}), got shape {loss.shape}")
    cost = _check_cost(cost, m, self.dtype, "names")
    membership = self.membership(embeddings)
    check.same_size("embeddings", membership.shape[0], "loss", loss.shape[0],
                    "prompts")
    psi = features.cluster_errors(
        membership, loss, num_clusters=self.num_clusters, mask=mask,
        weights=weights, prior_strength=prior_strength).psi
    return self._extended(names, psi.astype(self.dtype), cost)

  def add_psi(self, names, psi, cost) -> "Router":
    """A new router with LLMs added from feature vectors computed elsewhere.

    Args:
      names: the new LLMs' names (unique, not in the pool).
      psi: [k, m_new] per-cluster loss of each new LLM, in [0, 1].
      cost: [m_new] non-negative cost of each new LLM.
    """
    names = self._new_names(names)
    psi = _check_psi(psi, self.num_clusters, len(names), self.dtype, "names")
    return self._extended(names, psi,
                          _check_cost(cost, len(names), self.dtype, "names"))

  def remove_models(self, names) -> "Router":
    """A new router without the LLMs ``names`` (each must be in the pool);
    the others keep their order."""
    drop = set(self._known_names("names", names))
    keep = np.array([i for i, name in enumerate(self._models)
                     if name not in drop], dtype=np.int32)
    return self._with_pool(tuple(self._models[i] for i in keep),
                           self._psi[:, keep], self._cost[keep])

  # ---------------------------------------------------------------- routing

  def predicted_loss(self, embeddings) -> Array:
    """[n, m] gamma = Phi(x)^T Psi: predicted loss of every LLM in the pool.

    Args:
      embeddings: [n, d] prompt embeddings.
    """
    return routing.predicted_loss(self.membership(embeddings), self._psi)

  def route(self, embeddings, lambdas, *, models=None) -> routing.RoutingResult:
    """Routes prompts: argmin_m gamma_m(x) + lambda * c_m over the pool.

    Ties go to the cheaper LLM, then to the earlier one in :attr:`models`.

    Args:
      embeddings: [n, d] prompt embeddings.
      lambdas: a scalar or [L] non-negative cost trade-offs (traced: new
        values do not recompile).
      models: optional names of the LLMs available now (a subset of the
        pool, passed on as a pool mask: no recompilation); default: all.

    Returns:
      A :class:`~uniroute_jax.routing.RoutingResult` whose ``choice`` ([n]
      for a scalar lambda, [L, n] for a grid) indexes :attr:`models`, e.g.
      ``np.asarray(router.models)[result.choice]`` are the chosen names.
    """
    if not self._models:
      raise ValueError("the router's pool is empty: add LLMs with add_models")
    pool_mask = None
    if models is not None:
      available = set(self._known_names("models", models))
      pool_mask = np.array([name in available for name in self._models])
    return routing.route(self.membership(embeddings), self._psi, self._cost,
                         lambdas, pool_mask=pool_mask)

  # ------------------------------------------------------------ persistence

  def save(self, path, *, overwrite: bool = False) -> pathlib.Path:
    """Writes the router to one ``.npz`` file (no pickle), exactly at ``path``.

    The file holds ``psi``, ``cost``, then ``centroids`` (k-means) or every
    array of the map's ``params`` and ``batch_stats`` under its key path
    (e.g. ``params/dense/0/kernel``), ``loss_history`` (and, when present,
    ``validation_area`` and ``best_epoch``); plus a JSON string
    ``metadata`` (format and version, kind, model names, the map's
    structure). The file is written to a temporary file in the same folder
    and renamed into place, so a failed save never leaves a partial file or
    destroys an existing one.

    Args:
      path: the file to write (no suffix is added).
      overwrite: replace an existing file; otherwise an existing ``path``
        raises ``FileExistsError``.

    Returns:
      ``path`` as a ``pathlib.Path``.
    """
    path = pathlib.Path(path)
    arrays = self._to_arrays()
    if not overwrite and os.path.lexists(path):
      raise FileExistsError(
          f"{path} exists; pass overwrite=True to replace it")
    if path.is_dir():
      raise IsADirectoryError(f"{path} is a directory")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    # os.open applies the umask, so the file gets the usual permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
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

  @classmethod
  def load(cls, path) -> "Router":
    """Reads a router written by :meth:`save` (``np.load(allow_pickle=False)``).

    Raises:
      ValueError: ``path`` is not a saved router (not an npz file, no
        router metadata, an object array, missing or malformed arrays), or
        was written in an unknown format version.
    """
    arrays = _read_npz(path)
    try:
      return _from_arrays(_read_metadata(path, arrays), arrays)
    except (KeyError, TypeError, AttributeError) as err:
      raise ValueError(f"{path} is not a valid saved Router: {err!r}") from None

  # --------------------------------------------------------------- internals

  def _new_names(self, names) -> tuple[str, ...]:
    names = _names("names", names)
    taken = [name for name in names if name in self._models]
    if taken:
      raise ValueError(f"names: {taken} already in the pool; remove them first")
    return names

  def _known_names(self, arg: str, names) -> tuple[str, ...]:
    names = _names(arg, names)
    unknown = [name for name in names if name not in self._models]
    if unknown:
      raise ValueError(
          f"{arg}: {unknown} not in the pool {list(self._models)}")
    return names

  def _extended(self, names, psi, cost) -> "Router":
    return self._with_pool(self._models + names,
                           jnp.concatenate([self._psi, psi], axis=1),
                           jnp.concatenate([self._cost, cost]))

  def _with_pool(self, models, psi, cost) -> "Router":
    router = object.__new__(type(self))
    _set(router, self._centroids, self._cluster_map, self._config, models,
         psi, cost)
    return router

  def _to_arrays(self) -> dict[str, np.ndarray]:
    meta: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind,
        "models": list(self._models), "num_clusters": self.num_clusters,
        "dim": self.dim, "dtype": jnp.dtype(self.dtype).name}
    arrays = {"psi": np.asarray(self._psi), "cost": np.asarray(self._cost)}
    if self._config is None:
      arrays["centroids"] = np.asarray(self._centroids)
    else:
      c = self._config
      meta["cluster_map"] = {"hidden": list(c.hidden),
                             "batch_norm": c.batch_norm,
                             "momentum": c.momentum,
                             "dtype": jnp.dtype(c.dtype).name}
      fitted = self._cluster_map
      for prefix, state in (("params", fitted.params),
                            ("batch_stats", fitted.batch_stats)):
        for keypath, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
          arrays[_array_key(prefix, keypath)] = np.asarray(leaf)
      arrays["loss_history"] = np.asarray(fitted.loss_history)
      for name in ("validation_area", "best_epoch"):
        if getattr(fitted, name) is not None:
          arrays[name] = np.asarray(getattr(fitted, name))
    arrays[_METADATA_KEY] = np.array(json.dumps(meta))
    return arrays


def _set(router, centroids, fitted, config, models, psi, cost) -> None:
  for name, value in (("_centroids", centroids), ("_cluster_map", fitted),
                      ("_config", config), ("_models", models), ("_psi", psi),
                      ("_cost", cost)):
    object.__setattr__(router, name, value)


# ---------------------------------------------------------------- validation


def _names(arg: str, names, *, allow_empty: bool = False) -> tuple[str, ...]:
  """Unique, non-empty strings; one string stands for one name."""
  if isinstance(names, str):
    names = (names,)
  try:
    names = tuple(names)
  except TypeError:
    raise ValueError(
        f"{arg} must be a sequence of strings, got {names!r}") from None
  for name in names:
    if not isinstance(name, str) or not name:
      raise ValueError(f"{arg} must hold non-empty strings, got {name!r}")
  if len(set(names)) != len(names):
    dupes = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f"{arg} must be unique, {dupes} repeat")
  if not names and not allow_empty:
    raise ValueError(f"{arg} must name at least one LLM")
  return names


def _check_psi(psi, k: int, m: int, dtype, names_arg: str):
  psi = check.array("psi", psi, ndim=2, dtype=dtype, shape_doc="[k, m]")
  if psi.shape != (k, m):
    raise ValueError(
        f"psi must have shape [{k}, {m}] (num_clusters, one column per name "
        f"in {names_arg}), got {psi.shape}")
  check.finite("psi", psi)
  check.in_range("psi", psi, 0.0, 1.0)
  return psi


def _check_cost(cost, m: int, dtype, names_arg: str):
  cost = check.array("cost", cost, ndim=(1, 2), dtype=dtype, shape_doc="[m]")
  if cost.ndim == 2:
    raise ValueError(
        f"cost must be [m], one cost per LLM (a router ranks by a fixed "
        f"cost; pass each LLM's mean cost), got shape {cost.shape}")
  if cost.shape != (m,):
    raise ValueError(
        f"cost must have shape [{m}] (one entry per name in {names_arg}), "
        f"got {cost.shape}")
  check.nonnegative("cost", cost)
  return cost


def _map_config(fitted) -> cmap._Config:
  """The structure of a fitted map, checked to rebuild its graph exactly."""
  if not isinstance(fitted, cmap.FittedClusterMap):
    raise ValueError(
        f"cluster_map must be a FittedClusterMap, got {type(fitted).__name__}")
  try:
    model = nnx.merge(fitted.graphdef, fitted.params, fitted.batch_stats)
    kernel = fitted.params["output"]["kernel"]
  except Exception as err:  # noqa: BLE001 - any failure means "not a map"
    raise ValueError(f"cluster_map is not a valid fitted map: {err}") from None
  if not isinstance(model, cmap.ClusterMap):
    raise ValueError(
        f"cluster_map must hold a ClusterMap, got {type(model).__name__}")
  if jnp.ndim(kernel) != 2:
    raise ValueError(
        "cluster_map has a leading batch axis (a vmapped fit); take one fit, "
        "e.g. jax.tree.map(lambda a: a[i], fitted)")
  momentum = model.input_norm.momentum if model.batch_norm else 0.99
  dtype = jnp.dtype(model.output.param_dtype)
  config = cmap._Config(model.dim, model.num_clusters, tuple(model.hidden),
                        bool(model.batch_norm), float(momentum), dtype)
  if cmap._graphdef(config) != fitted.graphdef:
    raise ValueError(
        "cluster_map must come from fit_cluster_map (or be a ClusterMap whose "
        "dtype equals its param_dtype), so that it can be saved and rebuilt")
  return config


# --------------------------------------------------------------- persistence


def _array_key(prefix: str, keypath) -> str:
  parts = [prefix]
  for entry in keypath:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      if entry.name != "value":   # an nnx Variable's payload
        parts.append(entry.name)
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _rename_no_clobber(tmp, path) -> None:
  """Moves ``tmp`` to ``path`` unless ``path`` exists (atomically where the
  file system has hard links)."""
  try:
    os.link(tmp, path)
  except FileExistsError:
    raise FileExistsError(
        f"{path} exists; pass overwrite=True to replace it") from None
  except OSError:
    if os.path.lexists(path):
      raise FileExistsError(
          f"{path} exists; pass overwrite=True to replace it") from None
    os.replace(tmp, path)


def _read_npz(path) -> dict[str, np.ndarray]:
  try:
    loaded = np.load(path, allow_pickle=False)
  except (ValueError, EOFError, zipfile.BadZipFile) as err:
    raise ValueError(
        f"{path} is not a saved Router (not an npz file: {err})") from None
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise ValueError(f"{path} is not a saved Router (a single array, not npz)")
  with loaded:
    try:
      return {key: loaded[key] for key in loaded.files}
    except ValueError as err:
      raise ValueError(
          f"{path} is not a saved Router: it holds an object array (pickled "
          f"data), which is never loaded ({err})") from None
    except (EOFError, OSError, zipfile.BadZipFile) as err:
      raise ValueError(f"{path} is not a saved Router: {err}") from None


def _read_metadata(path, arrays) -> dict:
  raw = arrays.get(_METADATA_KEY)
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
  if meta.get("version") != FORMAT_VERSION:
    raise ValueError(
        f"{path} has Router format version {meta.get('version')!r}; this "
        f"version of uniroute_jax reads version {FORMAT_VERSION}")
  dtype = jnp.dtype(meta["dtype"])
  if jax.dtypes.canonicalize_dtype(dtype) != dtype:
    raise ValueError(
        f"{path} was saved in {dtype.name}; enable it with "
        f"jax.config.update('jax_enable_x64', True) before loading")
  return meta


def _take(arrays: dict, key: str, shape=None, dtype=None) -> np.ndarray:
  if key not in arrays:
    raise ValueError(f"saved Router is missing the array {key!r}")
  value = arrays.pop(key)
  if dtype is not None and value.dtype != dtype:
    if value.dtype.kind == "V" and value.dtype.itemsize == dtype.itemsize:
      value = value.view(dtype)   # e.g. bfloat16, which npy stores as void
    else:
      raise ValueError(
          f"saved array {key!r} has dtype {value.dtype}, expected {dtype}")
  if shape is not None and value.shape != tuple(shape):
    raise ValueError(
        f"saved array {key!r} has shape {value.shape}, expected {tuple(shape)}")
  return value


def _from_arrays(meta: dict, arrays: dict) -> Router:
  arrays = dict(arrays)
  arrays.pop(_METADATA_KEY)
  dtype = jnp.dtype(meta["dtype"])
  k, d = int(meta["num_clusters"]), int(meta["dim"])
  models = meta["models"]
  if not isinstance(models, list):
    raise ValueError("saved Router metadata 'models' must be a list")
  m = len(models)
  psi = _take(arrays, "psi", (k, m), dtype)
  cost = _take(arrays, "cost", (m,), dtype)
  if meta["kind"] == _KMEANS:
    router = Router(centroids=jnp.asarray(_take(arrays, "centroids", (k, d),
                                                dtype)),
                    models=models, psi=psi, cost=cost)
  elif meta["kind"] == _LEARNED_MAP:
    spec = meta["cluster_map"]
    map_dtype = jnp.dtype(spec["dtype"])
    # ClusterMap checks hidden and momentum when the graph is built.
    config = cmap._Config(d, k, tuple(int(w) for w in spec["hidden"]),
                          bool(spec["batch_norm"]), float(spec["momentum"]),
                          map_dtype)
    abstract = nnx.eval_shape(lambda: cmap._build(config, jax.random.key(0)))
    _, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)

    def restore(prefix):
      def leaf(keypath, abstract_leaf):
        return jnp.asarray(_take(arrays, _array_key(prefix, keypath),
                                 abstract_leaf.shape,
                                 jnp.dtype(abstract_leaf.dtype)))
      return leaf

    params = jax.tree_util.tree_map_with_path(restore("params"), params)
    stats = jax.tree_util.tree_map_with_path(restore("batch_stats"), stats)
    history = arrays.pop("loss_history", None)
    if history is None or history.ndim != 1:
      raise ValueError("saved Router is missing a 1-d 'loss_history' array")
    # Optional (absent for a map not made by fit_cluster_map).
    areas = arrays.pop("validation_area", None)
    best_epoch = arrays.pop("best_epoch", None)
    if areas is not None and areas.shape != history.shape:
      raise ValueError("saved Router's 'validation_area' must have the shape "
                       f"of 'loss_history' {history.shape}, got {areas.shape}")
    if best_epoch is not None and (best_epoch.shape != () or not
                                   np.issubdtype(best_epoch.dtype, np.integer)):
      raise ValueError("saved Router's 'best_epoch' must be an integer scalar")
    fitted = cmap.FittedClusterMap(
        cmap._graphdef(config), params, stats, jnp.asarray(history),
        None if areas is None else jnp.asarray(areas),
        None if best_epoch is None else jnp.asarray(best_epoch))
    router = Router(cluster_map=fitted, models=models, psi=psi, cost=cost)
  else:
    raise ValueError(f"saved Router has an unknown kind {meta['kind']!r}")
  if arrays:
    raise ValueError(f"saved Router has unexpected arrays {sorted(arrays)}")
  if router.dtype != dtype:
    raise ValueError(
        f"saved Router's dtype {dtype} does not match its arrays "
        f"({router.dtype})")
  return router
