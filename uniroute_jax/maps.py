"""The cluster map of a router: how a prompt embedding becomes Phi(x).

UniRoute represents a prompt by its membership of K clusters and an LLM by
its per-cluster loss Psi, so gamma(x) = Phi(x)^T Psi. The map is the part
that is fitted once on training prompts; everything else about a router is
its pool. Every map has one interface, :class:`ClusterMapping`:

- ``membership(x)``: [n] int cluster indices (hard) or [n, k]
  probabilities (soft), jit / vmap safe;
- ``num_clusters``, ``dim`` and ``dtype``;
- ``to_arrays()`` / ``from_arrays(...)``: plain arrays and JSON metadata,
  which is how a router file stores its map (``io.py``).

Two maps are built in: :class:`CentroidMap` (k-means centroids, nearest
centroid: UniRoute K-means) and :class:`LearnedMap` (a fitted
``cluster_map.ClusterMap``: UniRoute LearnedMap). A new kind of map
subclasses :class:`ClusterMapping`, registers itself as a pytree, and is
passed to ``Router.load(..., map_types=...)``; the router needs no change.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import checks, clustering
from uniroute_jax import cluster_map as cmap
from uniroute_jax.learn import models
from uniroute_jax.types import Array


class ClusterMapping(abc.ABC):
  """The interface of a router's cluster map (see the module docstring).

  Subclasses are immutable pytrees whose leaves are their arrays.
  """

  # Immutable values with immutable leaves: a copy is the value itself.
  def __copy__(self):
    return self

  def __deepcopy__(self, memo):
    return self

  def __reduce__(self):
    raise TypeError(f"{type(self).__name__} is not pickled: save its router "
                    "with Router.save and read it with Router.load")

  kind: ClassVar[str]
  """The name a router file records for this map type."""

  @property
  @abc.abstractmethod
  def num_clusters(self) -> int:
    """k, the rows of the Psi the map routes with."""

  @property
  @abc.abstractmethod
  def dim(self) -> int:
    """d, the embedding size the map takes."""

  @property
  @abc.abstractmethod
  def dtype(self) -> np.dtype:
    """The float dtype a router on this map keeps Psi and costs in."""

  @abc.abstractmethod
  def membership(self, embeddings) -> Array:
    """[n] int32 clusters or [n, k] probabilities of prompts [n, d]."""

  @abc.abstractmethod
  def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(named arrays, JSON-able metadata) that :meth:`from_arrays` reads."""

  @classmethod
  @abc.abstractmethod
  def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                  *, num_clusters: int, dim: int) -> "ClusterMapping":
    """The map saved by :meth:`to_arrays`. ``arrays`` holds only this map's
    entries; it must consume (pop) every one it uses."""

  def check_embeddings(self, embeddings):
    """``embeddings`` shape-checked against :attr:`dim`."""
    x = checks.float_array("embeddings", embeddings, ndim=2, shape_doc="[n, d]")
    if x.shape[1] != self.dim:
      raise ValueError(
          f"embeddings must have {self.dim} columns (the router's embedding "
          f"size), got shape {x.shape}")
    return x


@jax.tree_util.register_pytree_with_keys_class
class CentroidMap(ClusterMapping):
  """Hard clusters: each prompt belongs to its nearest centroid (section 5.1).

  Args:
    centroids: [k, d] finite cluster centres (checked when given as host
      data).
    cluster_mask: optional [k] bool, False for padding slots that are never
      assigned (``KMeansResult.cluster_mask``).
  """

  kind = "kmeans"
  __slots__ = ("centroids", "cluster_mask")

  def __init__(self, centroids, cluster_mask=None):
    centroids = checks.float_array("centroids", centroids, ndim=2,
                                   shape_doc="[k, d]")
    if 0 in centroids.shape:
      raise ValueError(f"centroids must be a non-empty [k, d] array, got "
                       f"{centroids.shape}")
    checks.host_finite("centroids", centroids)
    cluster_mask = checks.mask("cluster_mask", cluster_mask, centroids.shape[:1])
    if cluster_mask is not None:
      checks.host_bool_mask("cluster_mask", cluster_mask)
      values = checks.host_values(cluster_mask)
      if values is not None and not values.any():
        raise ValueError("cluster_mask must keep at least one cluster")
      cluster_mask = jnp.asarray(cluster_mask, bool)
    dtype = checks.compute_dtype(centroids)
    object.__setattr__(self, "centroids", jnp.asarray(centroids, dtype))
    object.__setattr__(self, "cluster_mask", cluster_mask)

  @classmethod
  def from_kmeans(cls, fit: clustering.KMeansResult) -> "CentroidMap":
    """The map of a :func:`~uniroute_jax.clustering.kmeans` fit."""
    return cls(fit.centroids, fit.cluster_mask)

  def __setattr__(self, name, value):
    raise AttributeError("CentroidMap is immutable")

  num_clusters = property(lambda self: int(self.centroids.shape[0]))
  dim = property(lambda self: int(self.centroids.shape[1]))
  dtype = property(lambda self: np.dtype(self.centroids.dtype))

  def membership(self, embeddings) -> Array:
    x = self.check_embeddings(embeddings)
    return clustering.assign_clusters(x, self.centroids,
                                      cluster_mask=self.cluster_mask).cluster

  def to_arrays(self):
    arrays = {"centroids": np.asarray(self.centroids)}
    if self.cluster_mask is not None:
      arrays["cluster_mask"] = np.asarray(self.cluster_mask)
    return arrays, {}

  @classmethod
  def from_arrays(cls, arrays, meta, *, num_clusters, dim):
    del meta
    centroids = take(arrays, "centroids", (num_clusters, dim))
    if not np.issubdtype(centroids.dtype, np.floating):
      raise ValueError(f"saved array 'centroids' must be floating, got "
                       f"{centroids.dtype}")
    mask = arrays.pop("cluster_mask", None)
    if mask is not None and (mask.shape != (num_clusters,) or mask.dtype != bool):
      raise ValueError(f"saved array 'cluster_mask' must be bool of shape "
                       f"({num_clusters},), got {mask.dtype} {mask.shape}")
    return cls(centroids, mask)

  def tree_flatten_with_keys(self):
    return (((jax.tree_util.GetAttrKey("centroids"), self.centroids),
             (jax.tree_util.GetAttrKey("cluster_mask"), self.cluster_mask)), None)

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux
    out = object.__new__(cls)
    object.__setattr__(out, "centroids", children[0])
    object.__setattr__(out, "cluster_mask", children[1])
    return out

  def __repr__(self):
    return f"CentroidMap(num_clusters={self.num_clusters}, dim={self.dim})"


@jax.tree_util.register_pytree_with_keys_class
class LearnedMap(ClusterMapping):
  """Soft clusters: Phi(x) from a fitted ``ClusterMap`` (section 5.2).

  Args:
    fitted: a :class:`~uniroute_jax.learn.FittedModel` from
      :func:`~uniroute_jax.cluster_map.fit_cluster_map` (one fit: index a
      vmapped fit's leading axis out first).
  """

  kind = "learned_map"
  __slots__ = ("fitted", "config")

  def __init__(self, fitted: models.FittedModel):
    config = cmap.ClusterMapConfig.of(fitted)
    object.__setattr__(self, "fitted", fitted)
    object.__setattr__(self, "config", config)

  def __setattr__(self, name, value):
    raise AttributeError("LearnedMap is immutable")

  num_clusters = property(lambda self: self.config.num_clusters)
  dim = property(lambda self: self.config.dim)
  dtype = property(lambda self: checks.compute_dtype(np.dtype(self.config.dtype)))

  def membership(self, embeddings) -> Array:
    return cmap.apply_cluster_map(self.fitted, self.check_embeddings(embeddings))

  def to_arrays(self):
    arrays = {}
    for prefix, tree in (("params", self.fitted.params),
                         ("state", self.fitted.state)):
      for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arrays[array_key(prefix, keypath)] = np.asarray(leaf)
    for name in ("loss_history", "validation_area", "best_epoch"):
      arrays[name] = np.asarray(getattr(self.fitted, name))
    c = self.config
    meta = {"hidden": list(c.hidden), "batch_norm": c.batch_norm,
            "momentum": c.momentum, "dtype": np.dtype(c.dtype).name}
    return arrays, meta

  @classmethod
  def from_arrays(cls, arrays, meta, *, num_clusters, dim):
    # ClusterMap checks hidden and momentum when the graph is built.
    config = cmap.ClusterMapConfig(
        dim, num_clusters, tuple(int(w) for w in meta["hidden"]),
        bool(meta["batch_norm"]), float(meta["momentum"]),
        np.dtype(meta["dtype"]))
    params, state = models.model_state(config)

    def restore(prefix):
      def leaf(keypath, abstract):
        return jnp.asarray(take(arrays, array_key(prefix, keypath),
                                abstract.shape, np.dtype(abstract.dtype)))
      return leaf

    params = jax.tree_util.tree_map_with_path(restore("params"), params)
    state = jax.tree_util.tree_map_with_path(restore("state"), state)
    history = _float_record(take(arrays, "loss_history"))
    areas = _float_record(take(arrays, "validation_area", history.shape))
    best_epoch = take(arrays, "best_epoch", ())
    if history.ndim != 1 or not np.issubdtype(best_epoch.dtype, np.integer):
      raise ValueError("saved map needs a 1-d 'loss_history' and an integer "
                       "'best_epoch'")
    fitted = models.FittedModel(models.graphdef(config), params, state,
                                jnp.asarray(history), jnp.asarray(areas),
                                jnp.asarray(best_epoch))
    return cls(fitted)

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey("fitted"), self.fitted),), self.config

  @classmethod
  def tree_unflatten(cls, config, children):
    out = object.__new__(cls)
    object.__setattr__(out, "fitted", children[0])
    object.__setattr__(out, "config", config)
    return out

  def __repr__(self):
    return (f"LearnedMap(num_clusters={self.num_clusters}, dim={self.dim}, "
            f"hidden={self.config.hidden})")


BUILT_IN: tuple[type[ClusterMapping], ...] = (CentroidMap, LearnedMap)
"""The map types a router file may hold unless told of others."""


def as_cluster_map(value) -> ClusterMapping:
  """``value`` as a map: a :class:`ClusterMapping` as it is, a [k, d]
  array as a :class:`CentroidMap`, a fitted ``ClusterMap`` as a
  :class:`LearnedMap`."""
  if isinstance(value, ClusterMapping):
    return value
  if isinstance(value, models.FittedModel):
    return LearnedMap(value)
  if isinstance(value, clustering.KMeansResult):
    return CentroidMap.from_kmeans(value)
  if isinstance(value, (jax.Array, np.ndarray, list, tuple)):
    return CentroidMap(value)
  raise ValueError(f"cluster_map must be a ClusterMapping, [k, d] centroids or "
                   f"a fitted ClusterMap, got {type(value).__name__}")


# ------------------------------------------------------------- array files


def array_key(prefix: str, keypath) -> str:
  """'prefix/a/0/b' for a pytree key path (an nnx Variable's payload is the
  node itself)."""
  parts = [prefix]
  for entry in keypath:
    if isinstance(entry, jax.tree_util.DictKey):
      parts.append(str(entry.key))
    elif isinstance(entry, jax.tree_util.SequenceKey):
      parts.append(str(entry.idx))
    elif isinstance(entry, jax.tree_util.GetAttrKey):
      if entry.name != "value":
        parts.append(entry.name)
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _float_record(value: np.ndarray) -> np.ndarray:
  """A saved training record read back: npy stores bfloat16, the one
  2-byte float it lacks, as void bytes of that size."""
  if value.dtype.kind == "V" and value.dtype.itemsize == 2:
    return value.view(jnp.bfloat16)
  if value.dtype.kind != "f":
    raise ValueError(f"saved training record has dtype {value.dtype}, "
                     "expected floats")
  return value


def take(arrays: dict, key: str, shape=None, dtype=None) -> np.ndarray:
  """Pops ``arrays[key]``, checked against ``shape`` and ``dtype``."""
  if key not in arrays:
    raise ValueError(f"saved router is missing the array {key!r}")
  value = arrays.pop(key)
  if dtype is not None and value.dtype != dtype:
    if value.dtype.kind == "V" and value.dtype.itemsize == np.dtype(dtype).itemsize:
      value = value.view(dtype)   # e.g. bfloat16, which npy stores as void
    else:
      raise ValueError(
          f"saved array {key!r} has dtype {value.dtype}, expected {dtype}")
  if shape is not None and value.shape != tuple(shape):
    raise ValueError(
        f"saved array {key!r} has shape {value.shape}, expected {tuple(shape)}")
  return value
