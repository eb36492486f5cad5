"""A ready-to-use UniRoute router: a cluster map plus a pool of LLMs.

:class:`Router` bundles what routing a prompt needs: a cluster map
(``maps.ClusterMapping``: k-means centroids, or a learned soft map Phi(x))
and the pool, i.e. each LLM's name, feature vector Psi (a column of a
[k, m] matrix) and cost. It is built from the library's pure functions:
the map's ``membership``, ``features.cluster_errors`` (Psi) and
``routing.route`` (the rule argmin_m gamma_m(x) + lambda c_m).

A router is immutable: :meth:`Router.add_models` and
:meth:`Router.remove_models` return a new router and never retrain
anything, which is the point of UniRoute (a new LLM only needs its labels on
the representative prompts). It is a pytree whose leaves are its arrays
(the model names and the map's structure are static), so it passes into
``jax.jit``; :meth:`route`, :meth:`membership`, :meth:`predicted_loss` and
:meth:`add_models` work inside a user's jit and vmap and do no host
transfer. Values entering from the host are checked where they enter (the
constructor, :meth:`add_models`, :meth:`add_psi`, :meth:`load`; see
``uniroute_jax.checks``).

:meth:`Router.save` writes one ``.npz`` file of plain arrays (``io.py``) and
:meth:`Router.load` reads it back without pickle; a loaded router predicts
bit for bit what the saved one did.

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
import pathlib
from collections.abc import Mapping
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import checks, clustering, features
from uniroute_jax import io as router_io
from uniroute_jax import maps, routing
from uniroute_jax.types import Array


@jax.tree_util.register_pytree_with_keys_class
class Router:
  """A UniRoute router: a cluster map and a pool of LLMs, immutable.

  Build one on a map (``Router(cluster_map)``, :meth:`from_kmeans`,
  ``Router(centroids=...)``), then add LLMs with :meth:`add_models`.

  Args:
    cluster_map: a :class:`~uniroute_jax.maps.ClusterMapping`, or what
      :func:`~uniroute_jax.maps.as_cluster_map` turns into one: [k, d]
      centroids (UniRoute K-means, section 5.1 of the paper) or a fitted
      ``ClusterMap`` (UniRoute LearnedMap, section 5.2).
    centroids: [k, d] k-means centroids, instead of ``cluster_map``.
    models: the pool's LLM names, unique strings (default: an empty pool).
    psi: [k, m] per-cluster loss of each LLM, in [0, 1]; required with
      ``models``. Stored in the router's dtype.
    cost: [m] non-negative cost of each LLM; required with ``models``.
    embedder: optional identity of the encoder the router's prompts were
      embedded with (a JSON-able mapping, e.g. ``MiniLM().id._asdict()``);
      saved with the router, so prompts from another encoder can be
      refused (:meth:`check_embedder`).

  Attributes:
    cluster_map: the map.
    models: tuple of the pool's LLM names; routing choices index it.
    psi: [k, m] feature vectors of the pool.
    cost: [m] costs of the pool.
  """

  __slots__ = ("_map", "_models", "_psi", "_cost", "_embedder")

  def __init__(self, cluster_map=None, *, centroids=None, models=(),
               psi=None, cost=None, embedder=None):
    if (cluster_map is None) == (centroids is None):
      raise ValueError("give exactly one of cluster_map and centroids")
    cluster_map = maps.as_cluster_map(
        cluster_map if centroids is None else maps.CentroidMap(centroids))
    k, dtype = cluster_map.num_clusters, cluster_map.dtype
    models = _names("models", models, allow_empty=True)
    m = len(models)
    if psi is None and cost is None and not m:
      psi, cost = np.zeros((k, 0), dtype), np.zeros((0,), dtype)
    elif psi is None or cost is None:
      raise ValueError("psi and cost must both be given with models")
    psi = _check_psi(psi, k, m, "models")
    cost = _check_cost(cost, m, "models")
    _set(self, cluster_map, models, jnp.asarray(psi, dtype),
         jnp.asarray(cost, dtype), _embedder_text(embedder))

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
    x = checks.float_array("embeddings", embeddings, ndim=2, shape_doc="[n, d]")
    k = checks.positive_int("num_clusters", num_clusters, upper=x.shape[0],
                            upper_doc=f"the number of prompts ({x.shape[0]})")
    checks.host_points("embeddings", x, k, checks.compute_dtype(x),
                       kmeans_kwargs.get("weights"))
    # On the device from here, so that kmeans does not check them again.
    fit = clustering.kmeans(key, jnp.asarray(x), num_clusters=k,
                            **kmeans_kwargs)
    return cls(maps.CentroidMap.from_kmeans(fit))

  @classmethod
  def from_cluster_map(cls, fitted) -> "Router":
    """A router with an empty pool on a learned cluster map (a fitted
    ``ClusterMap`` from ``fit_cluster_map``; one fit, not a vmapped one)."""
    return cls(maps.LearnedMap(fitted))

  # -------------------------------------------------------------- properties

  cluster_map = property(lambda self: self._map)
  models = property(lambda self: self._models)
  psi = property(lambda self: self._psi)
  cost = property(lambda self: self._cost)

  @property
  def kind(self) -> str:
    """The map's kind: ``"kmeans"`` (hard clusters) or ``"learned_map"``."""
    return self._map.kind

  @property
  def num_clusters(self) -> int:
    """k."""
    return int(self._psi.shape[0])

  @property
  def dim(self) -> int:
    """d, the embedding size the router takes."""
    return self._map.dim

  @property
  def num_models(self) -> int:
    """m, the number of LLMs in the pool."""
    return len(self._models)

  @property
  def dtype(self) -> np.dtype:
    """The dtype of ``psi`` and ``cost`` (the map's float, at least 32-bit)."""
    return np.dtype(self._psi.dtype)

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
    children = ((jax.tree_util.GetAttrKey("cluster_map"), self._map),
                (jax.tree_util.GetAttrKey("psi"), self._psi),
                (jax.tree_util.GetAttrKey("cost"), self._cost))
    return children, (self._models, self._embedder)

  @classmethod
  def tree_unflatten(cls, aux, children):
    router = object.__new__(cls)
    _set(router, children[0], aux[0], children[1], children[2], aux[1])
    return router

  # ---------------------------------------------------------------- embedder

  @property
  def embedder(self) -> dict | None:
    """The identity of the encoder the router's prompts came from, if known."""
    return None if self._embedder is None else json.loads(self._embedder)

  def with_embedder(self, embedder) -> "Router":
    """The same router, recording ``embedder`` (see the constructor)."""
    router = self._with_pool(self._models, self._psi, self._cost)
    object.__setattr__(router, "_embedder", _embedder_text(embedder))
    return router

  def check_embedder(self, embedder, *, what: str = "the prompts") -> None:
    """Raises ``ValueError`` when ``embedder`` (an identity mapping) differs
    from the one this router records; nothing is checked when it records
    none. Embeddings from another encoder or other settings live in another
    space: the router's clusters mean nothing there."""
    mine = self.embedder
    if mine is None:
      return
    theirs = json.loads(_embedder_text(embedder))
    differ = [f"{key} {theirs.get(key)!r} (the router's: {mine.get(key)!r})"
              for key in sorted(set(mine) | set(theirs))
              if mine.get(key) != theirs.get(key)]
    if differ:
      raise ValueError(f"{what} were embedded differently from the router's "
                       f"prompts: {'; '.join(differ)}")

  # ------------------------------------------------------------- clustering

  def membership(self, embeddings) -> Array:
    """The clusters of prompts [n, d]: [n] int32 (k-means) or [n, k]
    probabilities Phi(x) (learned map)."""
    return self._map.membership(embeddings)

  # -------------------------------------------------------------------- pool

  def add_models(self, names, embeddings, loss, cost, *, mask=None,
                 weights=None, prior_strength=None) -> "Router":
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
      mask: optional [n, m_new] bool, False where a label is missing; every
        new LLM needs at least one label.
      weights: optional [n] non-negative prompt weights.
      prior_strength: shrinkage of each cluster's mean towards the LLM's
        overall mean, in pseudo-prompts (see ``cluster_errors``); default 0,
        eq. 13.

    Returns:
      A new :class:`Router` whose pool is this one's followed by ``names``.
    """
    names = self._new_names(names)
    m = len(names)
    loss = checks.float_array("loss", loss, ndim=2, shape_doc="[n, m_new]")
    if loss.shape[1] != m:
      raise ValueError(
          f"loss must have one column per name ({m}), got shape {loss.shape}")
    cost = _check_cost(cost, m, "names")
    x = self._map.check_embeddings(embeddings)
    checks.same_size("embeddings", x.shape[0], "loss", loss.shape[0], "prompts")
    mask = checks.mask("mask", mask, loss.shape)
    checks.host_finite("embeddings", x)
    if mask is not None:
      checks.host_bool_mask("mask", mask)
    host_mask = (np.ones(loss.shape, bool) if mask is None
                 else checks.host_values(mask))
    if host_mask is not None:
      checks.host_in_range("loss", loss, 0.0, 1.0, where=host_mask.astype(bool))
      checks.host_labelled("mask", host_mask, names)
    if weights is not None:
      checks.host_positive_weights(
          "weights", checks.weights("weights", weights, x.shape[0]))
    if prior_strength is not None:
      checks.host_nonnegative("prior_strength",
                              checks.scalar("prior_strength", prior_strength))
    psi = features.cluster_errors(
        self.membership(x), loss, num_clusters=self.num_clusters, mask=mask,
        weights=weights, prior_strength=prior_strength).psi
    return self._extended(names, psi, cost)

  def add_psi(self, names, psi, cost) -> "Router":
    """A new router with LLMs added from feature vectors computed elsewhere.

    Args:
      names: the new LLMs' names (unique, not in the pool).
      psi: [k, m_new] per-cluster loss of each new LLM, in [0, 1].
      cost: [m_new] non-negative cost of each new LLM.
    """
    names = self._new_names(names)
    psi = _check_psi(psi, self.num_clusters, len(names), "names")
    return self._extended(names, psi, _check_cost(cost, len(names), "names"))

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

  def route(self, embeddings, lambdas, *, models: Sequence[str] | None = None
            ) -> routing.RoutingResult:
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
      # Built on the host from the names; put on the device explicitly, so
      # a caller's transfer guard sees no implicit transfer.
      pool_mask = jax.device_put(
          np.array([name in available for name in self._models]))
    x = self._map.check_embeddings(embeddings)
    checks.host_finite("embeddings", x)
    lambdas = checks.float_array("lambdas", lambdas, ndim=(0, 1),
                                 shape_doc="(a scalar or [L])")
    checks.host_nonnegative("lambdas", lambdas)
    return routing.route(self.membership(x), self._psi, self._cost,
                         lambdas, pool_mask=pool_mask)

  # ------------------------------------------------------------ persistence

  def save(self, path, *, overwrite: bool = False) -> pathlib.Path:
    """Writes the router to one ``.npz`` file (no pickle), exactly at ``path``.

    The file is written whole to a temporary file in the same folder and
    moved into place, so a failed save never leaves a partial file or
    destroys an existing one (see :mod:`uniroute_jax.io`).

    Args:
      path: the file to write (no suffix is added).
      overwrite: replace an existing file; otherwise an existing ``path``
        raises ``FileExistsError``.

    Returns:
      ``path`` as a ``pathlib.Path``.
    """
    return router_io.save_router(
        path, router_io.RouterContents(self._map, self._models,
                                       np.asarray(self._psi),
                                       np.asarray(self._cost), self.embedder),
        overwrite=overwrite)

  @classmethod
  def load(cls, path, *, map_types: Sequence[type[maps.ClusterMapping]] =
           maps.BUILT_IN) -> "Router":
    """Reads a router written by :meth:`save` (``allow_pickle=False``).

    Args:
      path: the file.
      map_types: the map types the file may hold (add your own
        :class:`~uniroute_jax.maps.ClusterMapping` subclasses here).

    Raises:
      ValueError: ``path`` is not a saved router (not an npz file, no
        router metadata, an object array, missing or malformed arrays, Psi
        outside [0, 1]), or was written in an unknown format version.
    """
    contents = router_io.load_router(path, map_types=map_types)
    try:
      return cls(contents.cluster_map, models=contents.models,
                 psi=contents.psi, cost=contents.cost,
                 embedder=contents.embedder)
    except ValueError as err:
      raise ValueError(f"{path} is not a valid saved Router: {err}") from None

  # --------------------------------------------------------------- internals

  def _new_names(self, names) -> tuple[str, ...]:
    names = _names("names", names)
    taken = [name for name in names if name in self._models]
    if taken:
      raise checks.ArgumentError(lambda name: (
          f"{name('names')}: {taken} already in the pool; remove them first"))
    return names

  def _known_names(self, arg: str, names) -> tuple[str, ...]:
    names = _names(arg, names)
    unknown = [name for name in names if name not in self._models]
    if unknown:
      raise checks.ArgumentError(lambda name: (
          f"{name(arg)}: {unknown} not in the pool {list(self._models)}"))
    return names

  def _extended(self, names, psi, cost) -> "Router":
    dtype = self.dtype
    return self._with_pool(
        self._models + names,
        jnp.concatenate([self._psi, jnp.asarray(psi).astype(dtype)], axis=1),
        jnp.concatenate([self._cost, jnp.asarray(cost).astype(dtype)]))

  def _with_pool(self, models, psi, cost) -> "Router":
    router = object.__new__(type(self))
    _set(router, self._map, models, psi, cost, self._embedder)
    return router


def _set(router, cluster_map, models, psi, cost, embedder) -> None:
  for name, value in (("_map", cluster_map), ("_models", models),
                      ("_psi", psi), ("_cost", cost), ("_embedder", embedder)):
    object.__setattr__(router, name, value)


def _embedder_text(embedder) -> str | None:
  """An encoder identity as canonical JSON (hashable pytree metadata)."""
  if embedder is None:
    return None
  if hasattr(embedder, "_asdict"):
    embedder = embedder._asdict()
  if not isinstance(embedder, Mapping) or not all(
      isinstance(k, str) for k in embedder):
    raise ValueError(f"embedder must be a mapping with str keys, got "
                     f"{embedder!r}")
  try:
    return json.dumps(dict(embedder), sort_keys=True)
  except (TypeError, ValueError) as err:
    raise ValueError(f"embedder must hold JSON values ({err})") from None


# ---------------------------------------------------------------- validation


def _names(arg: str, names, *, allow_empty: bool = False) -> tuple[str, ...]:
  """Unique, non-empty strings; one string stands for one name."""
  if isinstance(names, str):
    names = (names,)
  try:
    names = tuple(names)
  except TypeError:
    raise checks.ArgumentError(lambda name: (
        f"{name(arg)} must be a sequence of strings, got {names!r}")) from None
  for value in names:
    if not isinstance(value, str) or not value:
      raise checks.ArgumentError(lambda name: (
          f"{name(arg)} must hold non-empty strings, got {value!r}"))
  if len(set(names)) != len(names):
    dupes = sorted({n for n in names if names.count(n) > 1})
    raise checks.ArgumentError(lambda name: (
        f"{name(arg)} must be unique, {dupes} repeat"))
  if not names and not allow_empty:
    raise checks.ArgumentError(lambda name: (
        f"{name(arg)} must name at least one LLM"))
  return names


def _check_psi(psi, k: int, m: int, names_arg: str):
  psi = checks.float_array("psi", psi, ndim=2, shape_doc="[k, m]")
  if psi.shape != (k, m):
    raise ValueError(
        f"psi must have shape [{k}, {m}] (num_clusters, one column per name "
        f"in {names_arg}), got {psi.shape}")
  checks.host_finite("psi", psi)
  checks.host_in_range("psi", psi, 0.0, 1.0)
  return psi


def _check_cost(cost, m: int, names_arg: str):
  cost = checks.float_array("cost", cost, ndim=(1, 2), shape_doc="[m]")
  if cost.ndim == 2:
    raise ValueError(
        f"cost must be [m], one cost per LLM (a router ranks by a fixed "
        f"cost; pass each LLM's mean cost), got shape {cost.shape}")
  if cost.shape != (m,):
    raise ValueError(
        f"cost must have shape [{m}] (one entry per name in {names_arg}), "
        f"got {cost.shape}")
  checks.host_nonnegative("cost", cost)
  return cost
