"""The routers the protocol evaluates, as values.

A method is an immutable pytree: its numeric hyper-parameters (candidate
grids, Psi shrinkage, k-means tolerance, learning rates) are leaves, traced
when a batch of trials is compiled, so changing them never recompiles; what
fixes shapes (the largest candidate, epochs, widths) is static. A method is
passed to :func:`~uniroute_jax.protocol.evaluate` or
:func:`~uniroute_jax.protocol.run_trials` by value; :data:`BUILT_IN` maps
the names the command line knows to default values, and is only read to
turn names into methods before anything runs.

Every method's ``run(trial, key)`` is pure and traceable: it sees a
:class:`~uniroute_jax.protocol.TrialData` and returns the test curve and
the hyper-parameter it chose, choosing it (App. F.1) from the training
LLMs alone: represent them with training-prompt labels, route them on the
validation prompts, keep the candidate with the largest area. The
candidates run through one traced step (``search.best_candidate``).

The clairvoyant upper bounds (``mlp``, ``matfac``) are the exception, by
design: they also see the test LLMs' labels on the training prompts, and
are reported as references, never as the best router.

To add a router, subclass :class:`Method`, decorate it with
:func:`method_dataclass` and pass an instance in ``methods``.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import (checks, cluster_map, clustering, features, metrics,
                          routing)
from uniroute_jax.baselines import clairvoyant, knn, zero_router
from uniroute_jax.learn import CheckpointSelection
from uniroute_jax.protocol import search
from uniroute_jax.protocol.trials import TrialData, test_curve, validation_area
from uniroute_jax.types import Array


class MethodOutput(NamedTuple):
  """What a method returns for one trial.

  Attributes:
    curve: its deferral curve on the test prompts.
    chosen: its hyper-parameter (0 when it has none).
    gamma: [n_test, m_test] the predicted loss it routed the test prompts
      by, for its excess risk over the oracle; None when it routes by no
      predicted loss.
    cluster_gamma: for a cluster router, the predicted loss with Psi-star
      (the same clusters' errors on the test prompts), which splits that
      excess into estimation and approximation (:mod:`uniroute_jax.risk`).
    routing_cost: the costs ``gamma`` was ranked by; None for the mean
      validation costs (``TrialData.test_route_cost``).
  """

  curve: metrics.DeferralCurve
  chosen: Array
  gamma: Array | None = None
  cluster_gamma: Array | None = None
  routing_cost: Array | None = None


def _test_psi_star(membership, trial: TrialData, num_clusters=None) -> Array:
  """Psi-star: the clusters' errors on the test prompts that are scored."""
  return features.cluster_errors(membership, trial.test_loss,
                                 weights=trial.test_weights,
                                 num_clusters=num_clusters).psi


def method_dataclass(cls=None, *, data: tuple[str, ...] = ()):
  """Makes ``cls`` a frozen dataclass and a pytree whose ``data`` fields are
  leaves (traced) and whose other fields are static."""
  if cls is None:
    return lambda c: method_dataclass(c, data=data)
  cls = dataclasses.dataclass(frozen=True, eq=False)(cls)
  fields = [f.name for f in dataclasses.fields(cls)]
  return jax.tree_util.register_dataclass(
      cls, data_fields=list(data), meta_fields=[f for f in fields if f not in data])


class Method:
  """A router the protocol can evaluate.

  Attributes:
    name: the key its results are stored under (unique in an evaluation).
    title: how tables name it.
    hyperparameter: what ``MethodOutput.chosen`` is, e.g. "K"; "" for none.
    reference: True for upper bounds (the oracle, clairvoyant routers):
      reported, but never the "best method" others are tested against.
    clairvoyant: True for routers trained with the test LLMs' labels (not
      dynamic routers); they are reference methods too.
    vectorize_on_cpu: True when, on a CPU, vmapping a batch of trials runs
      this method faster than visiting them in turn (fits of a fixed number
      of small steps; not k-means, whose iterations vary per trial).
  """

  name: str
  title: str
  hyperparameter: ClassVar[str] = ""
  reference: ClassVar[bool] = False
  clairvoyant: ClassVar[bool] = False
  vectorize_on_cpu: ClassVar[bool] = False

  def resolve(self, n_train: int, n_val: int) -> "Method":
    """This method with its defaults that depend on the split sizes filled
    in and checked (on the host, before anything is compiled)."""
    del n_train, n_val
    return self

  def run(self, trial: TrialData, key) -> MethodOutput:
    raise NotImplementedError

  def neighbor_list_length(self, num_prompts: int, n_train: int) -> int:
    """How many nearest prompts of every prompt of the dataset this method
    reads (``TrialData.val_train_neighbors``), found once for all trials
    (``knn.neighbor_lists``); 0, the default, for none."""
    del num_prompts, n_train
    return 0

  def replace(self, **changes) -> "Method":
    """A copy with some fields changed (the method is immutable)."""
    return dataclasses.replace(self, **changes)

  def __repr__(self):
    fields = ", ".join(f"{f.name}={_short(getattr(self, f.name))}"
                       for f in dataclasses.fields(self))
    return f"{type(self).__name__}({fields})"


def _short(value):
  if isinstance(value, np.ndarray):
    return tuple(value.tolist())
  return repr(value)


# ------------------------------------------------------------- candidates


def _integer_grid(low: int, high: int, size: int = 8) -> tuple[int, ...]:
  """Up to ``size`` distinct integers from low to high, geometrically spaced."""
  if high <= low:
    return (low,)
  values = np.unique(np.round(np.geomspace(low, high, size)).astype(int))
  return tuple(int(v) for v in values)


def default_cluster_grid(n_train: int, n_val: int) -> tuple[int, ...]:
  """K from 3 to N_val / 50 (App. F.1), at most the training prompts."""
  high = max(3, n_val // 50)
  return tuple(k for k in _integer_grid(3, high) if k <= n_train) or (n_train,)


def default_neighbor_grid(n_train: int, n_val: int) -> tuple[int, ...]:
  """k from 5 to N_val / 3 (App. F.1); k neighbours must exist both among
  the training prompts (selection) and the validation prompts (test)."""
  cap = min(n_train, n_val)
  return tuple(k for k in _integer_grid(5, max(5, n_val // 3)) if k <= cap) or (cap,)


def candidate_array(name: str, values, upper: int, upper_doc: str) -> np.ndarray:
  """Candidate values as an int32 array [c], each in [1, upper]."""
  if isinstance(values, (int, np.integer)):
    values = (values,)
  try:
    values = tuple(np.asarray(values).tolist())
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a sequence of positive integers, got "
                     f"{values!r}") from None
  if not values:
    raise ValueError(f"{name} must hold at least one candidate")
  return np.asarray([checks.positive_int(name, v, upper=upper,
                                         upper_doc=upper_doc)
                     for v in values], np.int32)


def _resolved(method, field: str, values, default, upper: int, upper_doc: str):
  values = default if values is None else values
  array = candidate_array(f"{method.name}: {field}", values, upper, upper_doc)
  return array, int(array.max())


def _require_resolved(method, field: str):
  if not isinstance(getattr(method, field), (np.ndarray, jax.Array)):
    raise ValueError(f"{method.name}: call resolve(n_train, n_val) before run "
                     f"(its {field} are not set)")


# ---------------------------------------------------------------- routers


@method_dataclass
class ZeroRouter(Method):
  """ZeroRouter: the prompt-blind lower convex hull of (cost, loss)."""

  name: str = "zero"
  title: str = "ZeroRouter"

  def run(self, trial, key):
    del key
    mean_loss = features.mean_loss(trial.val_test_loss, trial.val_test_mask)
    hull = zero_router.zero_router_hull(mean_loss, trial.test_route_cost)
    curve = zero_router.zero_router_curve(hull, trial.test_loss, trial.test_cost,
                                          weights=trial.test_weights)
    # At each lambda the hull's rule is one LLM for every prompt: a cluster
    # router with one cluster (Prop. 9), whose Psi-star is the test means.
    ones = jnp.zeros(trial.test_loss.shape[:1], jnp.int32)
    gamma = routing.predicted_loss(ones, mean_loss[None, :])
    cluster_gamma = routing.predicted_loss(ones, _test_psi_star(ones, trial, 1))
    return MethodOutput(curve, jnp.zeros((), jnp.int32), gamma, cluster_gamma)


@method_dataclass(data=("neighbors",))
class KNN(Method):
  """K-NN routing, k chosen per trial on the training LLMs.

  Attributes:
    neighbors: candidate k (traced); None: 5 .. N_val / 3 (App. F.1).
    max_neighbors: the largest candidate (set by ``resolve``).
    shared_lists: search the validation prompts' nearest training prompts
      in lists of every prompt's nearest prompts found once for all trials
      (``knn.neighbor_lists``, :meth:`neighbor_list_length` long), instead
      of ranking the training prompts in every trial; a trial whose lists
      hold too few training prompts for some row ranks them itself. The
      neighbours are the same but for prompts whose similarities differ
      only by rounding. None (the default): on a CPU, where XLA's top-k
      is slow; an accelerator vmaps trials, and under ``vmap`` the
      fallback would run beside the lists (static).
  """

  name: str = "knn"
  title: str = "K-NN"
  neighbors: Any = None
  max_neighbors: int = 0
  shared_lists: bool | None = None
  hyperparameter: ClassVar[str] = "k"

  def resolve(self, n_train, n_val):
    cap = min(n_train, n_val)
    values, top = _resolved(self, "neighbors", self.neighbors,
                            default_neighbor_grid(n_train, n_val), cap,
                            f"the number of training and of validation "
                            f"prompts ({cap})")
    return self.replace(neighbors=values, max_neighbors=top)

  def _uses_lists(self) -> bool:
    if self.shared_lists is None:
      return jax.default_backend() == "cpu"
    return bool(self.shared_lists)

  def neighbor_list_length(self, num_prompts, n_train):
    if not self._uses_lists():
      return 0
    _require_resolved(self, "neighbors")
    # Half as many training prompts again as the largest k needs on
    # average, and 64 more: a list short of the largest k (a trial then
    # ranks its own) is many standard deviations away.
    wanted = 1.5 * self.max_neighbors * num_prompts / max(n_train, 1) + 64
    return min(num_prompts, -(-int(wanted) // 64) * 64)

  def run(self, trial, key):
    del key
    _require_resolved(self, "neighbors")
    grid = dict(num_neighbors=self.neighbors, max_neighbors=self.max_neighbors)

    def ranked_here(_):
      return knn.knn_predicted_loss_grid(
          trial.val_emb, trial.train_emb, trial.train_loss,
          mask=trial.train_mask, **grid)

    # Selection: training LLMs, represented on the training prompts.
    if not self._uses_lists() or trial.val_train_neighbors is None:
      val_gamma = ranked_here(None)
    else:
      listed, complete = knn.knn_predicted_loss_grid_from_lists(
          trial.val_train_neighbors, trial.train_loss, mask=trial.train_mask,
          num_neighbors=jnp.asarray(self.neighbors, jnp.int32),
          max_neighbors=self.max_neighbors)
      val_gamma = jax.lax.cond(jnp.all(complete), lambda _: listed,
                               ranked_here, None)
    areas = jax.vmap(lambda g: validation_area(g, trial))(val_gamma)
    k = jnp.asarray(self.neighbors, jnp.int32)[jnp.argmax(areas)]
    # Only the chosen k routes the test prompts: one search for one k.
    test_gamma = knn.knn_predicted_loss(
        trial.test_emb, trial.val_emb, trial.val_test_loss,
        mask=trial.val_test_mask, num_neighbors=k)
    return MethodOutput(test_curve(test_gamma, trial), k, test_gamma)


class _Clusters(NamedTuple):
  """One candidate K's k-means fit and the feature vectors both pools get."""

  fit: clustering.KMeansResult
  val_clusters: Array   # [n_val]
  train_psi: Array      # [k_max, m_train] training LLMs, from training prompts
  test_psi: Array       # [k_max, m_test] test LLMs, from validation prompts


def _psi(method, membership, loss, mask, num_clusters=None, weights=None):
  """Psi as ``method`` estimates it: the cluster means shrunk by its prior
  (fixed or empirical Bayes), or a quantile of their posterior."""
  eb = getattr(method, "empirical_bayes", False)
  quantile = getattr(method, "psi_quantile", None)
  if quantile is None:
    strength = features.EMPIRICAL_BAYES if eb else method.prior_strength
    return features.cluster_errors(membership, loss, mask=mask, weights=weights,
                                   num_clusters=num_clusters,
                                   prior_strength=strength).psi
  return features.cluster_posterior(
      membership, loss, mask=mask, weights=weights, num_clusters=num_clusters,
      prior_strength=None if eb else method.prior_strength).quantile(quantile)


def _fit_clusters(trial: TrialData, key, k, method, weights=None,
                  slots: int | None = None) -> _Clusters:
  """K-means with ``k`` active of ``slots`` (default ``method.max_clusters``)
  on the training prompts, and both pools' Psi."""
  slots = method.max_clusters if slots is None else slots
  fit = clustering.kmeans(key, trial.train_emb, num_clusters=slots,
                          active_clusters=k, max_iter=method.max_iter,
                          tol=method.tol)
  val_clusters = clustering.assign_clusters(
      trial.val_emb, fit.centroids, cluster_mask=fit.cluster_mask).cluster
  train_psi = _psi(method, fit.assignment, trial.train_loss, trial.train_mask,
                   slots, weights)
  test_psi = _psi(method, val_clusters, trial.val_test_loss,
                  trial.val_test_mask, slots)
  return _Clusters(fit, val_clusters, train_psi, test_psi)


def _check_numbers(method, *, nonnegative=(), positive=()) -> None:
  """Host checks of a method's numeric hyper-parameters (traced later)."""
  for field in nonnegative + positive:
    name = f"{method.name}: {field}"
    value = getattr(method, field)
    checks.scalar(name, value)
    checks.host_finite(name, value)
    if field in positive and not np.asarray(value) > 0:
      raise ValueError(f"{name} must be positive, got {checks.shown(value)}")
    checks.host_nonnegative(name, value)


def _resolve_clusters(method, n_train, n_val):
  values, top = _resolved(method, "clusters", method.clusters,
                          default_cluster_grid(n_train, n_val), n_train,
                          f"the number of training prompts ({n_train})")
  checks.positive_int(f"{method.name}: max_iter", method.max_iter)
  _check_numbers(method, nonnegative=("prior_strength", "tol"),
                 positive=("learning_rate",) if hasattr(method, "learning_rate")
                 else ())
  shrunk = bool(np.asarray(method.prior_strength) != 0)
  if method.empirical_bayes and shrunk:
    raise ValueError(f"{method.name}: empirical_bayes chooses the prior "
                     f"strength itself; prior_strength={method.prior_strength!r}"
                     " would be ignored (give one of them)")
  if method.psi_quantile is not None:
    _check_numbers(method, nonnegative=("psi_quantile",))
    if not np.asarray(method.psi_quantile) <= 1:
      raise ValueError(f"{method.name}: psi_quantile must lie in [0, 1], got "
                       f"{method.psi_quantile!r}")
    if not (method.empirical_bayes or shrunk):
      # Without a prior, a cluster with one right answer has the posterior
      # Beta(0, 1), a point mass at 0: quantiles would trust it most.
      raise ValueError(f"{method.name}: psi_quantile needs a prior "
                       "(empirical_bayes=True or prior_strength > 0)")
  return method.replace(clusters=values, max_clusters=top)


@dataclasses.dataclass(frozen=True, eq=False)
class _ClusterSearch(Method):
  """The fields, defaults and ``resolve`` of the methods that choose K over
  k-means fits of the training prompts (documented on
  :class:`KMeansRouter`); subclasses set their own name and title."""

  name: str = ""
  title: str = ""
  clusters: Any = None
  max_clusters: int = 0
  max_iter: int = 100
  prior_strength: Any = 0.0
  tol: Any = 1e-4
  empirical_bayes: bool = False
  psi_quantile: Any = None
  hyperparameter: ClassVar[str] = "K"

  def resolve(self, n_train, n_val):
    return _resolve_clusters(self, n_train, n_val)


def _check_together(together) -> None:
  if together is not None:
    checks.positive_int("together", together)


@method_dataclass(data=("clusters", "prior_strength", "tol", "psi_quantile"))
class KMeansRouter(_ClusterSearch):
  """UniRoute (K-means), K chosen on the training LLMs (App. F.1).

  Attributes:
    clusters: candidate K (traced); None: 3 .. N_val / 50 (App. F.1).
    max_clusters: the largest candidate (set by ``resolve``).
    max_iter: Lloyd iterations per k-means fit (static).
    prior_strength: shrinkage of every Psi towards each LLM's overall
      error, in pseudo-prompts (``features.cluster_errors``); 0 is eq. 13.
    empirical_bayes: choose each LLM's prior strength from its own
      per-cluster counts instead (``features.cluster_posterior``; static).
    psi_quantile: route on this quantile of each cell's Beta posterior
      instead of its mean (traced, in [0, 1]; None: the mean): above 0.5
      an LLM measured on few prompts of a cluster is trusted less there.
    tol: k-means tolerance (``clustering.kmeans``).
    matched: choose K with the training LLMs represented by as many (random)
      training prompts as there are validation prompts, so their Psi is as
      noisy as the test LLMs' will be. The paper's rule uses every training
      prompt, which favours a K too large for the validation set when that
      set is much smaller (MMLU-Pro: see benchmarks/results/).
    size_classes: at most how many padded sizes the candidates run in
      (static; the largest halved each time down to 6 slots,
      ``search.size_classes``): a small K fits in a small step instead of
      one padded to the largest. 1 pads every candidate to the largest.
      Padding leaves each fit as an unpadded fit of its K, so only the
      speed depends on it (and the float rounding of differently compiled
      steps).
  """

  name: str = "kmeans"
  title: str = "UniRoute (K-means)"
  matched: bool = False
  size_classes: int = 3

  def __post_init__(self):
    checks.positive_int("size_classes", self.size_classes)

  def run(self, trial, key):
    _require_resolved(self, "clusters")
    n_train, n_val = trial.train_emb.shape[0], trial.val_emb.shape[0]
    weights = None
    if self.matched and n_val < n_train:
      subset_key = jax.random.fold_in(key, self.clusters.shape[0])
      chosen = jax.random.permutation(subset_key, n_train)[:n_val]
      weights = jnp.zeros(n_train, trial.train_loss.dtype).at[chosen].set(1.0)

    def evaluate(k, i, slots):
      c = _fit_clusters(trial, jax.random.fold_in(key, i), k, self, weights,
                        slots)
      test_clusters = clustering.assign_clusters(
          trial.test_emb, c.fit.centroids, cluster_mask=c.fit.cluster_mask).cluster
      area = validation_area(routing.predicted_loss(c.val_clusters, c.train_psi),
                             trial)
      psi_star = _test_psi_star(test_clusters, trial, c.test_psi.shape[0])
      return area, jnp.stack([routing.predicted_loss(test_clusters, c.test_psi),
                              routing.predicted_loss(test_clusters, psi_star)])

    best = search.best_candidate(
        self.clusters, evaluate, (2,) + trial.test_loss.shape,
        trial.test_loss.dtype,
        sizes=search.size_classes(self.max_clusters, self.size_classes))
    gamma, cluster_gamma = best.gamma
    return MethodOutput(test_curve(gamma, trial), best.value, gamma,
                        cluster_gamma)


@method_dataclass(data=("clusters", "prior_strength", "tol", "learning_rate",
                         "psi_quantile"))
class LearnedMapRouter(_ClusterSearch):
  """UniRoute (LearnedMap, section 5.2): a trained soft cluster map.

  Per candidate K: k-means on the training prompts; Psi of the training LLMs
  (from their training-prompt labels by default), held fixed while the map
  is fitted to their training-prompt labels (binary cross-entropy, Adam);
  K is chosen by the training LLMs' area on the validation prompts. The
  test LLMs get Psi from the validation prompts (nearest centroid, or Phi
  with ``soft_psi``), and gamma(x) = Phi(x)^T Psi. The defaults are the
  paper's (section 5.2, App. E.3).

  Attributes:
    clusters, max_clusters, max_iter, prior_strength, tol, empirical_bayes,
      psi_quantile: as :class:`KMeansRouter`.
    hidden: hidden widths of the map; () is the single softmax-dense layer.
    batch_norm: BatchNorm on the input and hidden layers.
    epochs, learning_rate, batch_size: Adam's training (the learning rate
      is traced).
    select_epoch: keep the epoch whose map gives the training LLMs the
      largest area on the validation prompts (early stopping with the best
      checkpoint restored) instead of the last.
    train_psi_from: which labels give the training LLMs' Psi, held fixed
      while the map trains: "train" (their training-prompt labels, the
      paper's default) or "val" (their validation-prompt labels, the way
      test LLMs get theirs). With "val", the K choice scores the training
      LLMs on the prompts their Psi came from.
    soft_psi: compute the test LLMs' Psi with the map's soft memberships of
      the validation prompts, Phi(x), instead of their nearest k-means
      centroid: the same membership that later routes the test prompts.
    together: candidate maps trained at once, vmapped (static); None: all
      of them.

  Each candidate's k-means has its own key; the maps of all candidates
  share one (the same mini-batch order, the same initial hidden layers),
  as a grid search with a fixed seed does, so they differ only by their K.
  Vectorised, they then share each step's rows and its first matmul: the
  single softmax-dense maps train 1.7x faster than with a key each
  (MMLU-Pro, 2 cores: 1.08 s to 0.64 s a trial, benchmarks/results/protocol.md).
  """

  name: str = "learned_map"
  title: str = "UniRoute (LearnedMap)"
  hidden: tuple[int, ...] = (128, 128)
  batch_norm: bool = True
  epochs: int = 5
  learning_rate: Any = 5e-3
  batch_size: int = 64
  select_epoch: bool = False
  train_psi_from: str = "train"
  soft_psi: bool = False
  together: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "hidden", checks.widths("hidden", self.hidden))
    _check_together(self.together)
    checks.positive_int("epochs", self.epochs)
    checks.positive_int("batch_size", self.batch_size)
    if self.train_psi_from not in ("train", "val"):
      raise ValueError(f"train_psi_from must be 'train' or 'val', got "
                       f"{self.train_psi_from!r}")

  def run(self, trial, key):
    _require_resolved(self, "clusters")
    kmeans_key, map_key = jax.random.split(key)
    candidates = jnp.asarray(self.clusters, jnp.int32)
    # The k-means fits run in turn, each to its own convergence; the map
    # fits, a fixed number of steps each, then run side by side.
    clusters = jax.lax.map(
        lambda item: _fit_clusters(trial, jax.random.fold_in(kmeans_key, item[1]),
                                   item[0], self),
        (candidates, jnp.arange(candidates.shape[0], dtype=jnp.int32)))

    def evaluate(k, i, slots):
      del k, slots  # every candidate is padded to the largest
      c = jax.tree.map(lambda a: a[i], clusters)
      train_psi = c.train_psi
      if self.train_psi_from == "val":
        train_psi = _psi(self, c.val_clusters, trial.val_train_loss,
                         trial.val_train_mask, self.max_clusters)
      select = None
      if self.select_epoch:
        select = CheckpointSelection(
            trial.val_emb, trial.val_train_loss, trial.val_train_cost,
            jnp.arange(train_psi.shape[1]), trial.val_train_mask)
      learned = cluster_map.fit_cluster_map(
          map_key, trial.train_emb, trial.train_loss, train_psi,
          mask=trial.train_mask, cluster_mask=c.fit.cluster_mask,
          hidden=self.hidden, batch_norm=self.batch_norm,
          learning_rate=self.learning_rate, batch_size=self.batch_size,
          epochs=self.epochs, select=select)
      area = validation_area(cluster_map.learned_map_predicted_loss(
          learned, trial.val_emb, train_psi), trial)
      test_psi = c.test_psi
      if self.soft_psi:
        test_psi = _psi(self, cluster_map.apply_cluster_map(learned, trial.val_emb),
                        trial.val_test_loss, trial.val_test_mask)
      test_phi = cluster_map.apply_cluster_map(learned, trial.test_emb)
      psi_star = _test_psi_star(test_phi, trial)
      return area, jnp.stack([routing.predicted_loss(test_phi, test_psi),
                              routing.predicted_loss(test_phi, psi_star)])

    best = search.best_candidate(
        self.clusters, evaluate, (2,) + trial.test_loss.shape,
        trial.test_loss.dtype, together=_together(self.together, self.clusters))
    gamma, cluster_gamma = best.gamma
    return MethodOutput(test_curve(gamma, trial), best.value, gamma,
                        cluster_gamma)


def _together(together: int | None, candidates) -> int:
  return candidates.shape[0] if together is None else together


def _clairvoyant_selection(trial: TrialData) -> CheckpointSelection:
  """The validation prompts with the test LLMs' labels: what a clairvoyant
  predictor keeps its best epoch on (the test pool is what it routes)."""
  return CheckpointSelection(trial.val_emb, trial.val_test_loss,
                             trial.val_test_cost, trial.test_models,
                             trial.val_test_mask)


@method_dataclass(data=("learning_rate",))
class MLPRouter(Method):
  """Clairvoyant MLP: trained on the training prompts with EVERY LLM's labels
  (the test LLMs' included), best epoch by the test pool's validation area.

  Attributes:
    hidden, epochs, learning_rate, batch_size: the fit (``fit_mlp``; the
      paper's two layers of 100, 30 epochs, Adam 1e-3, batch 64).
  """

  name: str = "mlp"
  title: str = "MLP (clairvoyant)"
  hidden: tuple[int, ...] = (100, 100)
  epochs: int = 30
  learning_rate: Any = 1e-3
  batch_size: int = 64
  hyperparameter: ClassVar[str] = "epoch"
  reference: ClassVar[bool] = True
  clairvoyant: ClassVar[bool] = True
  vectorize_on_cpu: ClassVar[bool] = True

  def resolve(self, n_train, n_val):
    del n_train, n_val
    _check_numbers(self, positive=("learning_rate",))
    return self

  def run(self, trial, key):
    fit = clairvoyant.fit_mlp(key, trial.train_emb, trial.train_all_loss,
                              mask=trial.train_all_mask, hidden=self.hidden,
                              epochs=self.epochs, batch_size=self.batch_size,
                              learning_rate=self.learning_rate,
                              select=_clairvoyant_selection(trial))
    gamma = clairvoyant.predict_loss(fit, trial.test_emb)[:, trial.test_models]
    return MethodOutput(test_curve(gamma, trial), fit.best_epoch + 1, gamma)


@method_dataclass(data=("ranks", "learning_rate"))
class MatrixFactorizationRouter(Method):
  """Clairvoyant matrix factorisation; its rank d is chosen like K, by the
  (clairvoyant) validation area of its best epoch.

  Attributes:
    ranks: candidate d (traced); None: the default K grid.
    max_rank: the largest candidate (set by ``resolve``).
    epochs, learning_rate, batch_size: the fit (``fit_matrix_factorization``).
    together: candidate d trained at once, vmapped (static); None: all.

  Every candidate is fitted from the trial's one key, as a grid search with
  a fixed seed does: the same initialisation (a rank-d candidate uses its
  first d units) and the same mini-batch order, so the candidates differ
  only by their rank. Vectorised, they then share each step's rows and its
  first matmul: 1.8x faster than a key per candidate (MMLU-Pro, 2 cores).
  """

  name: str = "matfac"
  title: str = "Matrix factorisation (clairvoyant)"
  ranks: Any = None
  max_rank: int = 0
  epochs: int = 30
  learning_rate: Any = 1e-3
  batch_size: int = 64
  together: int | None = None
  hyperparameter: ClassVar[str] = "d"

  def __post_init__(self):
    _check_together(self.together)
  reference: ClassVar[bool] = True
  clairvoyant: ClassVar[bool] = True

  def resolve(self, n_train, n_val):
    values, top = _resolved(self, "ranks", self.ranks,
                            default_cluster_grid(n_train, n_val), 10 ** 6,
                            "10**6")
    _check_numbers(self, positive=("learning_rate",))
    return self.replace(ranks=values, max_rank=top)

  def run(self, trial, key):
    _require_resolved(self, "ranks")
    select = _clairvoyant_selection(trial)

    def evaluate(rank, i, size):
      del i, size  # one key for all; every candidate is padded to the largest
      fit = clairvoyant.fit_matrix_factorization(
          key, trial.train_emb, trial.train_all_loss,
          rank=self.max_rank, active_rank=rank, mask=trial.train_all_mask,
          epochs=self.epochs, batch_size=self.batch_size,
          learning_rate=self.learning_rate, select=select)
      gamma = clairvoyant.predict_loss(fit, trial.test_emb)[:, trial.test_models]
      return fit.validation_area[fit.best_epoch], gamma

    best = search.best_candidate(
        self.ranks, evaluate, trial.test_loss.shape, trial.test_loss.dtype,
        together=_together(self.together, self.ranks))
    return MethodOutput(test_curve(best.gamma, trial), best.value, best.gamma)


@method_dataclass
class Oracle(Method):
  """The per-prompt oracle: routes by the true test losses."""

  name: str = "oracle"
  title: str = "Oracle (per prompt)"
  reference: ClassVar[bool] = True

  def run(self, trial, key):
    del key
    curve = metrics.deferral_curve(
        trial.test_loss, trial.test_loss, trial.test_cost,
        weights=trial.test_weights, routing_cost=trial.test_cost)
    return MethodOutput(curve, jnp.zeros((), jnp.int32), trial.test_loss,
                        routing_cost=trial.test_cost)


BUILT_IN: types.MappingProxyType = types.MappingProxyType({
    "zero": ZeroRouter(),
    "knn": KNN(),
    "kmeans": KMeansRouter(),
    "kmeans_matched": KMeansRouter(
        name="kmeans_matched", title="UniRoute (K-means, matched K choice)",
        matched=True),
    "learned_map": LearnedMapRouter(),
    # The variant that matched K-NN on MMLU-Pro (benchmarks/results/).
    "learned_map_linear": LearnedMapRouter(
        name="learned_map_linear",
        title="UniRoute (LearnedMap, softmax-dense, soft Psi)", hidden=(),
        batch_norm=False, soft_psi=True),
    "mlp": MLPRouter(),
    "matfac": MatrixFactorizationRouter(),
    "oracle": Oracle(),
})
"""Default values of the built-in routers, by the names the command line
uses (read-only: pass method values to evaluate others)."""

DEFAULT_METHODS = ("zero", "knn", "kmeans", "oracle")


def as_method(method) -> Method:
  """A :class:`Method` from a method value or a :data:`BUILT_IN` name."""
  if isinstance(method, Method):
    return method
  if isinstance(method, str) and method in BUILT_IN:
    return BUILT_IN[method]
  raise ValueError(f"methods must be Method values or names among "
                   f"{tuple(BUILT_IN)}, got {method!r}")


def as_methods(methods) -> tuple[Method, ...]:
  """Methods from values or names, with unique names."""
  if isinstance(methods, (str, Method)):
    methods = (methods,)
  out = tuple(as_method(m) for m in methods)
  if not out:
    raise ValueError("methods must name at least one router")
  names = [m.name for m in out]
  if len(set(names)) != len(names):
    dupes = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f"methods must have distinct names, {dupes} repeat "
                     f"(give one a name=)")
  return out
