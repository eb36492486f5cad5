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

import dataclasses
import functools
import json
import pathlib
import warnings
from collections.abc import Mapping
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import checks, clustering, features
from uniroute_jax import io as router_io
from uniroute_jax import maps, routing
from uniroute_jax.types import Array

THIN_CELL = 5
"""Fewer labelled prompts than this in a cluster, and an LLM's error there
is mostly a guess: :meth:`Router.add_models` warns, and the command line's
model table counts such clusters."""


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
    counts: optional [k, m] labelled-prompt weight behind each entry of
      ``psi`` (``ClusterErrors.counts``); default unknown (NaN).
    embedder: optional identity of the encoder the router's prompts were
      embedded with (a JSON-able mapping, e.g. ``MiniLM().id._asdict()``);
      saved with the router, so prompts from another encoder can be
      refused (:meth:`check_embedder`).
    representatives: optional :class:`Representatives`, the prompts a new
      LLM is run on to join the pool (:meth:`with_representatives`,
      :meth:`onboard`).
    psi_prior: how the Psi of LLMs added later is estimated when
      :meth:`add_models` or :meth:`onboard` is given no ``prior_strength``:
      None for the paper's plain cluster means (eq. 13), a number of
      pseudo-prompts of shrinkage towards each LLM's overall error, or
      ``"empirical_bayes"`` (``features.cluster_posterior``). Saved with
      the router, so every LLM of a pool stands on the same footing.

  Attributes:
    cluster_map: the map.
    models: tuple of the pool's LLM names; routing choices index it.
    psi: [k, m] feature vectors of the pool.
    cost: [m] costs of the pool.
    counts: [k, m] labelled-prompt weight behind each entry of ``psi``
      (NaN where unknown, e.g. for LLMs added by :meth:`add_psi`).
    representatives: the representative prompts, or None.
  """

  __slots__ = ("_map", "_models", "_psi", "_cost", "_counts", "_embedder",
               "_representatives", "_psi_prior")

  def __init__(self, cluster_map=None, *, centroids=None, models=(),
               psi=None, cost=None, counts=None, embedder=None,
               representatives=None, psi_prior=None):
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
    counts = _check_counts(counts, k, m)
    if representatives is not None:
      representatives = _check_representatives(representatives, cluster_map)
    _set(self, _map=cluster_map, _models=models,
         _psi=jnp.asarray(psi, dtype), _cost=jnp.asarray(cost, dtype),
         _counts=jnp.asarray(counts, dtype),
         _embedder=_embedder_text(embedder),
         _representatives=representatives, _psi_prior=features.prior_rule(psi_prior))

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
  counts = property(lambda self: self._counts)
  representatives = property(lambda self: self._representatives)

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

  # Immutable, with immutable leaves: a copy is the router itself.
  def __copy__(self):
    return self

  def __deepcopy__(self, memo):
    return self

  def __reduce__(self):
    raise TypeError("Router is not pickled: save it with Router.save and read "
                    "it with Router.load (a file that runs no code)")

  def __delattr__(self, name):
    raise AttributeError("Router is immutable")

  def __repr__(self) -> str:
    return (f"Router(kind={self.kind!r}, num_clusters={self.num_clusters}, "
            f"dim={self.dim}, models={self._models!r})")

  # ------------------------------------------------------------------ pytree

  def tree_flatten_with_keys(self):
    children = tuple((jax.tree_util.GetAttrKey(name), getattr(self, "_" + name))
                     for name in _CHILDREN)
    return children, (self._models, self._embedder, self._psi_prior)

  @classmethod
  def tree_unflatten(cls, aux, children):
    router = object.__new__(cls)
    _set(router, _models=aux[0], _embedder=aux[1], _psi_prior=aux[2],
         **{"_" + name: child for name, child in zip(_CHILDREN, children)})
    return router

  # --------------------------------------------------------------- Psi prior

  @property
  def psi_prior(self) -> float | str | None:
    """How LLMs added later get their Psi (see the constructor)."""
    return self._psi_prior

  def with_psi_prior(self, psi_prior) -> "Router":
    """The same router, estimating the Psi of LLMs added later with
    ``psi_prior`` (the pool's Psi is kept as it is)."""
    return self._replaced(_psi_prior=features.prior_rule(psi_prior))

  # ---------------------------------------------------------------- embedder

  @property
  def embedder(self) -> dict | None:
    """The identity of the encoder the router's prompts came from, if known."""
    return None if self._embedder is None else json.loads(self._embedder)

  def with_embedder(self, embedder) -> "Router":
    """The same router, recording ``embedder`` (see the constructor)."""
    return self._replaced(_embedder=_embedder_text(embedder))

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
                 weights=None, prior_strength=None,
                 warn_below: int | None = THIN_CELL) -> "Router":
    """A new router with LLMs added, Psi from their labels (eq. 13, shrunk
    as ``prior_strength`` or the router's :attr:`psi_prior` says).

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
        overall mean, in pseudo-prompts (see ``cluster_errors``);
        ``"empirical_bayes"`` chooses it per LLM from its own per-cluster
        counts (``cluster_posterior``). Default: the router's
        :attr:`psi_prior` (for a new router, eq. 13's plain means).
      warn_below: warn (:class:`~uniroute_jax.checks.ArgumentWarning`) when
        a new LLM's error in some cluster rests on fewer than this many
        labelled prompts; None never warns. Labels given as JAX arrays are
        not inspected (no value is read back from the device).

    Returns:
      A new :class:`Router` whose pool is this one's followed by ``names``.
    """
    x = self._map.check_embeddings(embeddings)
    checks.host_finite("embeddings", x)
    return self._add_labelled(names, "embeddings", x.shape[0],
                              lambda: self.membership(x), loss, cost, mask=mask,
                              weights=weights, prior_strength=prior_strength,
                              warn_below=warn_below)

  def onboard(self, names, loss, cost, *, mask=None, prior_strength=None,
              warn_below: int | None = THIN_CELL) -> "Router":
    """A new router with LLMs added from their labels on the router's own
    representative prompts (:attr:`representatives`, in their order).

    This is how UniRoute onboards an LLM: run it once on the representative
    prompts, label its answers, and average them per cluster. The result
    equals :meth:`add_models` with the representatives' embeddings, but no
    prompt is embedded or mapped again: their memberships are stored.

    Args:
      names, cost, prior_strength, warn_below: as :meth:`add_models`.
      loss: [n_rep, m_new] loss of each new LLM on each representative
        prompt, in [0, 1].
      mask: optional [n_rep, m_new] bool, False where a label is missing.
    """
    rep = self._representatives
    if rep is None:
      raise ValueError("the router keeps no representative prompts: give "
                       "their embeddings to add_models, or record them with "
                       "with_representatives")
    return self._add_labelled(names, "representatives", len(rep.ids),
                              lambda: rep.membership, loss, cost, mask=mask,
                              prior_strength=prior_strength,
                              warn_below=warn_below)

  def add_psi(self, names, psi, cost, *, counts=None) -> "Router":
    """A new router with LLMs added from feature vectors computed elsewhere.

    Args:
      names: the new LLMs' names (unique, not in the pool).
      psi: [k, m_new] per-cluster loss of each new LLM, in [0, 1].
      cost: [m_new] non-negative cost of each new LLM.
      counts: optional [k, m_new] labelled-prompt weight behind each entry
        of ``psi`` (default unknown, NaN).
    """
    names = self._new_names(names)
    k, m = self.num_clusters, len(names)
    psi = _check_psi(psi, k, m, "names")
    return self._extended(names, psi, _check_cost(cost, m, "names"),
                          _check_counts(counts, k, m))

  def remove_models(self, names) -> "Router":
    """A new router without the LLMs ``names`` (each must be in the pool);
    the others keep their order."""
    drop = set(self._known_names("names", names))
    keep = np.array([i for i, name in enumerate(self._models)
                     if name not in drop], dtype=np.int32)
    return self._replaced(_models=tuple(self._models[i] for i in keep),
                          _psi=self._psi[:, keep], _cost=self._cost[keep],
                          _counts=self._counts[:, keep])

  def with_representatives(self, embeddings, ids=None) -> "Router":
    """The same router, keeping ``embeddings`` [n, d] as its representative
    prompts (with their memberships) for :meth:`onboard`.

    Args:
      embeddings: [n, d] embeddings of the prompts every LLM is (and every
        new LLM will be) labelled on.
      ids: optional n unique prompt ids (strings, or integers, stored as
        text); default "0" .. "n-1".
    """
    x = self._map.check_embeddings(embeddings)
    checks.host_finite("embeddings", x)
    ids = _prompt_ids(ids, x.shape[0])
    x = jnp.asarray(x, self._map.dtype)
    return self._replaced(_representatives=Representatives(
        ids, x, self.membership(x)))

  def labelling_order(self, key, *, selection: str = "random") -> Array:
    """[n_rep] int32 the representative prompts (indices into
    :attr:`representatives`) in the order a new LLM should be run on them
    when it can only be run on some: label the first s.

    Args:
      key: a ``jax.random.key``.
      selection: ``"random"`` (the default), ``"stratified"`` (every
        cluster in proportion to its representatives) or ``"neyman"`` (in
        proportion to that times the spread sqrt(mean Psi (1 - Psi)) of the
        pool's errors there; :func:`~uniroute_jax.features.labelling_ranks`).
        A learned map's prompts count in their most probable cluster.
        Spreading the prompts did not reach random prompts' Area with fewer
        prompts on the shared data (``benchmarks/results/onboarding_curve*.md``:
        a few prompts' worth at best, and worse with 10 prompts on
        RouterBench and 10-50 on MMLU-Pro), so random is the default.
    """
    rep = self._representatives
    if rep is None:
      raise ValueError("the router keeps no representative prompts: record "
                       "them with with_representatives")
    clusters = rep.membership
    if clusters.ndim == 2:
      clusters = jnp.argmax(clusters, axis=1).astype(jnp.int32)
    spread = None
    if self.num_models:
      spread = jnp.sqrt(jnp.mean(self._psi * (1.0 - self._psi), axis=1))
    elif selection == "neyman":
      # Without the spread, Neyman allocation would silently be stratified.
      raise ValueError("selection='neyman' allocates by the spread of the "
                       "pool's errors, and the router has no LLM; use "
                       "'stratified' or 'random'")
    ranks = features.labelling_ranks(key, clusters,
                                     num_clusters=self.num_clusters,
                                     selection=selection, spread=spread)
    return jnp.argsort(ranks).astype(jnp.int32)

  def _add_labelled(self, names, rows_arg: str, n: int, membership, loss, cost,
                    *, mask, weights=None, prior_strength=None,
                    warn_below=None) -> "Router":
    """Checks the labels of new LLMs on ``n`` prompts and adds their Psi,
    grouped by ``membership()`` of those prompts."""
    names = self._new_names(names)
    m = len(names)
    loss = checks.float_array("loss", loss, ndim=2, shape_doc="[n, m_new]")
    if loss.shape[1] != m:
      raise ValueError(
          f"loss must have one column per name ({m}), got shape {loss.shape}")
    cost = _check_cost(cost, m, "names")
    checks.same_size(rows_arg, n, "loss", loss.shape[0], "prompts")
    mask = checks.mask("mask", mask, loss.shape)
    if mask is not None:
      checks.host_bool_mask("mask", mask)
    host_mask = (np.ones(loss.shape, bool) if mask is None
                 else checks.host_values(mask))
    if host_mask is not None:
      checks.host_in_range("loss", loss, 0.0, 1.0, where=host_mask.astype(bool))
      checks.host_labelled("mask", host_mask, names)
    if weights is not None:
      checks.host_positive_weights("weights", checks.weights("weights", weights, n))
    own_rule = prior_strength is None
    if own_rule:
      prior_strength = self._psi_prior
    elif not isinstance(prior_strength, str):
      prior_strength = checks.scalar("prior_strength", prior_strength)
      checks.host_nonnegative("prior_strength", prior_strength)
    if warn_below is not None:
      warn_below = checks.positive_int("warn_below", warn_below)
    groups = membership()
    if own_rule:
      errors = _errors_by_rule(groups, loss, mask, weights,
                               num_clusters=self.num_clusters,
                               rule=prior_strength)
    else:
      errors = features.cluster_errors(
          groups, loss, num_clusters=self.num_clusters, mask=mask,
          weights=weights, prior_strength=prior_strength)
    if warn_below is not None and host_mask is not None and checks.is_host(loss):
      # A traced strength is not known to be 0: the warning then assumes
      # shrinkage, as it does for the empirical-Bayes rule.
      shrunk = prior_strength is not None and (
          isinstance(prior_strength, str) or not checks.is_host(prior_strength)
          or float(prior_strength) > 0)
      _warn_thin(names, groups, host_mask, warn_below, self.num_clusters,
                 shrunk=shrunk)
    return self._extended(names, errors.psi, cost, errors.counts)

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
        values do not recompile); +inf picks the cheapest LLM (the most
        accurate of the cheapest), as in :func:`~uniroute_jax.routing.route`.
      models: optional names of the LLMs available now (a subset of the
        pool, passed on as a traced pool mask: the first call with
        ``models`` compiles once, and every other subset reuses that
        program); default: all.

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
    lambdas = checks.lambdas(lambdas)
    checks.host_nonnegative("lambdas", lambdas, allow_inf=True)
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
        path, router_io.RouterContents(
            self._map, self._models, np.asarray(self._psi),
            np.asarray(self._cost), self.embedder, np.asarray(self._counts),
            None if self._representatives is None else
            router_io.SavedRepresentatives(
                self._representatives.ids,
                np.asarray(self._representatives.embeddings),
                np.asarray(self._representatives.membership)),
            self._psi_prior),
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
      saved = contents.representatives
      return cls(contents.cluster_map, models=contents.models,
                 psi=contents.psi, cost=contents.cost, counts=contents.counts,
                 embedder=contents.embedder, psi_prior=contents.psi_prior,
                 representatives=None if saved is None else Representatives(
                     saved.ids, saved.embeddings, saved.membership))
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

  def _extended(self, names, psi, cost, counts) -> "Router":
    dtype = self.dtype

    def joined(mine, new, axis):
      return jnp.concatenate([mine, jnp.asarray(new).astype(dtype)], axis=axis)

    return self._replaced(_models=self._models + names,
                          _psi=joined(self._psi, psi, 1),
                          _cost=joined(self._cost, cost, 0),
                          _counts=joined(self._counts, counts, 1))

  def _replaced(self, **changes) -> "Router":
    router = object.__new__(type(self))
    _set(router, **{name: changes.get(name, getattr(self, name))
                    for name in self.__slots__})
    return router


# The router's arrays (pytree children); the names and the encoder are its
# static data.
_CHILDREN = ("map", "psi", "cost", "counts", "representatives")


def _set(router, **fields) -> None:
  for name, value in fields.items():
    object.__setattr__(router, name, value)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["embeddings", "membership"],
                   meta_fields=["ids"])
@dataclasses.dataclass(frozen=True)
class Representatives:
  """The representative prompts a router keeps: every LLM of its pool is
  represented by its labels on them, and a new LLM is run on them once to
  join (:meth:`Router.onboard`).

  Attributes:
    ids: n unique prompt ids, strings (static: they name rows, never enter
      a computation).
    embeddings: [n, d] their embeddings.
    membership: [n] int32 clusters or [n, k] soft memberships under the
      router's map.
  """

  ids: tuple[str, ...]
  embeddings: Array
  membership: Array

  def __repr__(self):
    return (f"Representatives({len(self.ids)} prompts, "
            f"dim={self.embeddings.shape[-1]})")


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


@checks.kernel(static_argnames=("num_clusters", "rule"))
def _errors_by_rule(groups, loss, mask, weights, *, num_clusters, rule):
  """``cluster_errors`` under a router's own :attr:`Router.psi_prior`. The
  rule is static metadata of the router, so it is a constant of the
  program: as a traced scalar it would be copied to the device on every
  call."""
  return features.cluster_errors(groups, loss, num_clusters=num_clusters,
                                 mask=mask, weights=weights,
                                 prior_strength=rule)


def _warn_thin(names, membership, mask, warn_below: int, k: int, *,
               shrunk: bool) -> None:
  """Warns about the clusters where a new LLM's error rests on fewer than
  ``warn_below`` labelled prompts, counted as prompts (a learned map's in
  their most probable cluster), whatever their weights; read back only for
  labels the user gave as host data."""
  if isinstance(membership, jax.core.Tracer):
    return
  membership = np.asarray(membership)
  cluster = membership.argmax(axis=1) if membership.ndim == 2 else membership
  for j, name in enumerate(names):
    counts = np.bincount(cluster[np.asarray(mask)[:, j].astype(bool)],
                         minlength=k)
    thin = int(np.sum(counts < warn_below))
    if thin:
      remedy = ("" if shrunk else
                ", or shrink them towards the LLM's overall error "
                "({prior}, e.g. 'empirical_bayes')")
      warnings.warn(checks.ArgumentWarning(
          lambda arg, name=name, thin=thin, remedy=remedy: (
              f"{name!r}: its error in {thin} of {k} clusters rests on fewer "
              f"than {warn_below} labelled prompts, so it is mostly a guess "
              "there; label more representative prompts of those clusters"
              + remedy.format(prior=arg("prior_strength")))), stacklevel=4)


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
          f"{name(arg)} must hold non-empty strings, got "
          f"{checks.shown(value)}"))
  # NumPy's str_ is a str: kept as one, it would print as np.str_('a') in
  # the router's repr and in every message that lists the pool.
  names = tuple(str(value) for value in names)
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


def _check_counts(counts, k: int, m: int):
  if counts is None:
    return np.full((k, m), np.nan, np.float32)
  counts = checks.float_array("counts", counts, ndim=2, shape_doc="[k, m]")
  if counts.shape != (k, m):
    raise ValueError(f"counts must have shape [{k}, {m}], like psi, got "
                     f"{counts.shape}")
  host = checks.host_values(counts)
  if host is not None and np.any(host[~np.isnan(host)] < 0):
    raise ValueError("counts must be non-negative (NaN where unknown)")
  return counts


def _prompt_ids(ids, n: int) -> tuple[str, ...]:
  """n unique ids as text; default "0" .. "n-1"."""
  if ids is None:
    return tuple(str(i) for i in range(n))
  values = np.asarray(ids)
  if values.ndim != 1 or values.shape[0] != n:
    raise ValueError(f"ids must be one id per representative prompt ({n}), "
                     f"got shape {values.shape}")
  if values.dtype.kind not in "iuUS":
    raise ValueError(f"ids must be strings or integers, got dtype {values.dtype}")
  text = tuple(v.decode() if isinstance(v, bytes) else str(v)
               for v in values.tolist())
  if len(set(text)) != n:
    first = next(t for t in text if text.count(t) > 1)
    raise ValueError(f"ids must be unique; {first!r} repeats")
  return text


def _check_representatives(rep, cluster_map) -> Representatives:
  if not isinstance(rep, Representatives):
    raise ValueError(f"representatives must be a Representatives, got "
                     f"{type(rep).__name__}")
  n = len(rep.ids)
  x = cluster_map.check_embeddings(rep.embeddings)
  checks.same_size("representatives.embeddings", x.shape[0],
                   "representatives.ids", n, "prompts")
  k = cluster_map.num_clusters
  membership = checks.array("representatives.membership", rep.membership,
                            ndim=(1, 2), shape_doc="[n] or [n, k]")
  if membership.shape[0] != n or membership.shape[1:] not in ((), (k,)):
    raise ValueError(f"representatives.membership must be [{n}] or [{n}, {k}], "
                     f"got {membership.shape}")
  if membership.ndim == 1:
    if not jnp.issubdtype(membership.dtype, jnp.integer):
      raise ValueError(f"representatives.membership must hold integer "
                       f"clusters when 1-d, got dtype {membership.dtype}")
    checks.host_in_range("representatives.membership", membership, 0, k - 1)
    # int32 whatever the caller's (int64 under x64): what save and load keep.
    membership = jnp.asarray(membership, jnp.int32)
  else:
    checks.float_array("representatives.membership", membership, ndim=2,
                       shape_doc=f"[{n}, {k}]")
    checks.host_in_range("representatives.membership", membership, 0.0, 1.0)
    membership = jnp.asarray(membership, cluster_map.dtype)
  return Representatives(_prompt_ids(rep.ids, n),
                         jnp.asarray(x, cluster_map.dtype), membership)


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
