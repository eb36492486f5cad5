"""The evaluation protocol of the paper (section 7, App. F), batched over trials.

One trial: prompts are split into train / validation / test and the LLMs
into a training pool and an unseen test pool. Training prompts carry labels
of the training LLMs only; validation prompts carry labels of both pools;
test prompts with the test LLMs are used only to score the routers. Every
hyper-parameter (K clusters, k neighbours) is chosen per trial from the
training LLMs alone (App. F.1): represent them with training-prompt labels,
route them on the validation prompts, keep the value with the largest area.

Trials are data: index arrays with a leading trial axis. A trial is a pure
function of the dataset's arrays, its indices and a key, so batches of
trials run as one vmapped, compiled call; only the batches are a Python loop
(for progress and memory).

The clairvoyant upper bounds (``mlp``, ``matfac``) are the exception, by
design: they also see the test LLMs' labels on the training prompts, and
are reported as references, never as the best router.

Conventions:
- A test prompt missing a label for any test LLM is left out of that
  trial's scores (weight 0), since its routed loss would be unknown.
- With per-prompt costs (RouterBench), a router cannot know a prompt's cost
  before the LLM answers: every router ranks LLMs by their mean cost on the
  validation prompts, and curves account the cost actually paid. The
  per-prompt oracle ranks by the cost paid.
- The mean deferral curve is the pointwise mean of the trials' monotone
  envelopes over relative cost. Its Area and Area(50%) equal the mean
  per-trial areas (integration is linear); its QNC is the relative cost at
  which it reaches the mean quality of the trials' best single test LLM.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import _validation as check
from uniroute_jax import cluster_map, clustering, features, metrics
from uniroute_jax.baselines import clairvoyant, knn, zero_router
from uniroute_jax.types import Array, RoutingData


# ------------------------------------------------------------------- splits


class Split(NamedTuple):
  """Index arrays of one trial, or of many with a leading trial axis.

  Attributes:
    train: training prompts (embeddings; labels of training LLMs only).
    val: validation prompts (labels of every LLM).
    test: test prompts (scoring only).
    train_models: the LLMs seen in training.
    test_models: the unseen LLMs routed between at test time.
  """

  train: np.ndarray
  val: np.ndarray
  test: np.ndarray
  train_models: np.ndarray
  test_models: np.ndarray


def split_sizes(n: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
  """(train, val, test) counts for n prompts; each is at least 1."""
  for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
    if not 0.0 < frac < 1.0:
      raise ValueError(f"{name} must lie in (0, 1), got {frac}")
  if val_frac + test_frac >= 1.0:
    raise ValueError(
        f"val_frac + test_frac must be below 1, got {val_frac + test_frac}")
  n_val = max(1, round(n * val_frac))
  n_test = max(1, round(n * test_frac))
  n_train = n - n_val - n_test
  if n_train < 1:
    raise ValueError(f"{n} prompts are too few to split into train/val/test")
  return n_train, n_val, n_test


def model_split_sizes(m: int, test_model_frac: float) -> tuple[int, int]:
  """(training, test) pool sizes: at least 2 test LLMs and 1 training LLM."""
  if not 0.0 < test_model_frac < 1.0:
    raise ValueError(f"test_model_frac must lie in (0, 1), got {test_model_frac}")
  m_test = max(2, round(m * test_model_frac))
  if m - m_test < 1:
    raise ValueError(
        f"num_models={m} is too few for a training pool and a test pool of "
        "at least 2 LLMs")
  return m - m_test, m_test


def make_trials(key, num_trials: int, num_prompts: int, num_models: int, *,
                val_frac=0.1, test_frac=0.3, test_model_frac=1 / 3) -> Split:
  """Random prompt and LLM splits for ``num_trials`` trials: a batched Split.

  Each field has shape [num_trials, size]; indices are sorted within a trial.
  Trial t uses ``jax.random.fold_in(key, t)``, so the first trials are the
  same whatever ``num_trials`` is.
  """
  num_trials = check.positive_int("num_trials", num_trials)
  n_train, n_val, _ = split_sizes(num_prompts, val_frac, test_frac)
  m_train, _ = model_split_sizes(num_models, test_model_frac)

  def one(t):
    prompt_key, model_key = jax.random.split(jax.random.fold_in(key, t))
    prompts = jax.random.permutation(prompt_key, num_prompts)
    models = jax.random.permutation(model_key, num_models)
    return (jnp.sort(prompts[:n_train]),
            jnp.sort(prompts[n_train:n_train + n_val]),
            jnp.sort(prompts[n_train + n_val:]),
            jnp.sort(models[:m_train]), jnp.sort(models[m_train:]))

  parts = jax.vmap(one)(jnp.arange(num_trials))
  return Split(*(np.asarray(p, np.int32) for p in parts))


def make_split(key, num_prompts: int, num_models: int, *, val_frac=0.1,
               test_frac=0.3, test_model_frac=1 / 3) -> Split:
  """One trial's split: trial 0 of :func:`make_trials`."""
  trials = make_trials(key, 1, num_prompts, num_models, val_frac=val_frac,
                       test_frac=test_frac, test_model_frac=test_model_frac)
  return Split(*(part[0] for part in trials))


# --------------------------------------------------------- one trial's data


class TrialData(NamedTuple):
  """The arrays one trial's routers may see, gathered by its split.

  ``*_cost`` entries are [m] or [rows, m] like the dataset's cost;
  ``*_route_cost`` are [m] mean validation costs, what a router ranks by.
  """

  train_emb: Array          # [n_train, d]
  val_emb: Array            # [n_val, d]
  test_emb: Array           # [n_test, d]
  train_loss: Array         # [n_train, m_train] training LLMs on training prompts
  train_mask: Array         # [n_train, m_train]
  val_train_loss: Array     # [n_val, m_train]
  val_train_mask: Array     # [n_val, m_train]
  val_train_cost: Array     # costs paid on validation prompts, training LLMs
  val_test_loss: Array      # [n_val, m_test]
  val_test_mask: Array      # [n_val, m_test]
  val_test_cost: Array      # costs paid on validation prompts, test LLMs
  test_loss: Array          # [n_test, m_test] scoring only
  test_weights: Array       # [n_test] 1 where every test LLM is labelled
  test_cost: Array          # costs paid on test prompts, test LLMs
  test_route_cost: Array    # [m_test]
  # The test LLMs' training labels: for the clairvoyant upper bounds only.
  train_all_loss: Array     # [n_train, m] every LLM on the training prompts
  train_all_mask: Array     # [n_train, m]
  test_models: Array        # [m_test] the test LLMs' columns in the dataset


def gather_trial(arrays, split: Split) -> TrialData:
  """Slices the dataset's (embeddings, loss, mask, cost) by one trial's split."""
  emb, loss, mask, cost = arrays
  dtype = loss.dtype

  def cells(prompts, models):
    return loss[prompts][:, models], mask[prompts][:, models]

  def costs(prompts, models):
    return cost[prompts][:, models] if cost.ndim == 2 else cost[models]

  def route_cost(models):
    per_model = jnp.mean(cost[split.val], axis=0) if cost.ndim == 2 else cost
    return per_model[models]

  train_loss, train_mask = cells(split.train, split.train_models)
  val_train_loss, val_train_mask = cells(split.val, split.train_models)
  val_test_loss, val_test_mask = cells(split.val, split.test_models)
  test_loss, test_mask = cells(split.test, split.test_models)
  return TrialData(
      train_emb=emb[split.train], val_emb=emb[split.val], test_emb=emb[split.test],
      train_loss=train_loss, train_mask=train_mask,
      val_train_loss=val_train_loss, val_train_mask=val_train_mask,
      val_train_cost=costs(split.val, split.train_models),
      val_test_loss=val_test_loss, val_test_mask=val_test_mask,
      test_loss=jnp.where(test_mask, test_loss, 0.0),
      test_weights=jnp.all(test_mask, axis=1).astype(dtype),
      test_cost=costs(split.test, split.test_models),
      test_route_cost=route_cost(split.test_models),
      train_all_loss=loss[split.train], train_all_mask=mask[split.train],
      val_test_cost=costs(split.val, split.test_models),
      test_models=split.test_models)


def _validation_area(gamma, trial: TrialData):
  """Area of the training LLMs' curve on the validation prompts (App. F.1)."""
  return metrics._labelled_area(gamma, trial.val_train_loss,
                                trial.val_train_mask, trial.val_train_cost)


def _test_curve(gamma, trial: TrialData):
  return metrics._deferral_curve(
      gamma, trial.test_loss, trial.test_cost,
      jnp.ones(gamma.shape[1], bool), trial.test_weights, trial.test_route_cost)


# ------------------------------------------------------------------ methods


@dataclasses.dataclass(frozen=True)
class LearnedMapOptions:
  """How the ``learned_map`` router trains and uses its cluster map.

  The defaults are the paper's (section 5.2, App. E.3).

  Attributes:
    hidden: hidden widths of the map; () is the single softmax-dense layer.
    batch_norm: BatchNorm on the input and hidden layers.
    epochs, learning_rate, batch_size: Adam's training.
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
  """

  hidden: tuple[int, ...] = (128, 128)
  batch_norm: bool = True
  epochs: int = 5
  learning_rate: float = 5e-3
  batch_size: int = 64
  select_epoch: bool = False
  train_psi_from: str = "train"
  soft_psi: bool = False

  def __post_init__(self):
    object.__setattr__(self, "hidden", check.widths("hidden", self.hidden))
    check.positive_int("epochs", self.epochs)
    check.positive_int("batch_size", self.batch_size)
    if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
      raise ValueError(f"learning_rate must be a positive number, got "
                       f"{self.learning_rate!r}")
    if self.train_psi_from not in ("train", "val"):
      raise ValueError(f"train_psi_from must be 'train' or 'val', got "
                       f"{self.train_psi_from!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Static settings of an evaluation (they fix shapes and programs).

  Attributes:
    cluster_grid: candidate K for UniRoute (App. F.1).
    neighbor_grid: candidate k for K-NN.
    kmeans_max_iter: Lloyd iterations per k-means fit.
    curve_points: relative-cost grid size of the mean deferral curve.
    psi_prior_strength: shrinkage of every Psi towards each LLM's overall
      error, in pseudo-prompts (``features.cluster_errors``); 0 is eq. 13.
    clairvoyant_epochs: training epochs of the clairvoyant MLP and matrix
      factorisation (the paper's 30).
    learned_map: how ``learned_map`` trains and uses its map.
  """

  cluster_grid: tuple[int, ...]
  neighbor_grid: tuple[int, ...]
  kmeans_max_iter: int = 100
  curve_points: int = 1001
  psi_prior_strength: float = 0.0
  clairvoyant_epochs: int = 30
  learned_map: LearnedMapOptions = LearnedMapOptions()


class MethodOutput(NamedTuple):
  """What a method returns for one trial: its test curve and its chosen
  hyper-parameter (0 when it has none)."""

  curve: metrics.DeferralCurve
  chosen: Array


MethodFn = Callable[[TrialData, Array, Settings], MethodOutput]


def _zero_router(trial: TrialData, key, settings: Settings) -> MethodOutput:
  del key, settings
  mean_loss = features.mean_loss(trial.val_test_loss, trial.val_test_mask)
  hull = zero_router.zero_router_hull(mean_loss, trial.test_route_cost)
  curve = zero_router.zero_router_curve(hull, trial.test_loss, trial.test_cost,
                                        weights=trial.test_weights)
  return MethodOutput(curve, jnp.zeros((), jnp.int32))


def _knn_router(trial: TrialData, key, settings: Settings) -> MethodOutput:
  del key
  grid = settings.neighbor_grid
  # Selection: training LLMs, represented on the training prompts.
  val_gamma = knn.knn_predicted_loss_grid(
      trial.val_emb, trial.train_emb, trial.train_loss, num_neighbors=grid,
      mask=trial.train_mask)
  areas = jax.vmap(lambda g: _validation_area(g, trial))(val_gamma)
  best = jnp.argmax(areas)
  test_gamma = knn.knn_predicted_loss_grid(
      trial.test_emb, trial.val_emb, trial.val_test_loss, num_neighbors=grid,
      mask=trial.val_test_mask)[best]
  return MethodOutput(_test_curve(test_gamma, trial),
                      jnp.asarray(grid, jnp.int32)[best])


class _Best(NamedTuple):
  """The candidate with the largest validation area so far."""

  area: Array   # []
  gamma: Array  # [n_test, m_test] its predicted loss on the test prompts
  k: Array      # [] its hyper-parameter


def _no_best(trial: TrialData) -> _Best:
  dtype = trial.test_loss.dtype
  return _Best(jnp.array(-jnp.inf, dtype), jnp.zeros(trial.test_loss.shape, dtype),
               jnp.zeros((), jnp.int32))


def _keep_better(best: _Best, area, gamma, k: int) -> _Best:
  better = area > best.area
  return _Best(jnp.where(better, area, best.area),
               jnp.where(better, gamma, best.gamma),
               jnp.where(better, k, best.k))


class _Clusters(NamedTuple):
  """One candidate K's k-means fit and the feature vectors both pools get."""

  centroids: Array    # [k, d]
  val_clusters: Array  # [n_val]
  train_psi: Array    # [k, m_train] training LLMs, from training prompts
  test_psi: Array     # [k, m_test] test LLMs, from validation prompts


def _fit_clusters(trial: TrialData, key, k: int, settings: Settings,
                  selection_weights=None) -> _Clusters:
  fit = clustering.kmeans(key, trial.train_emb, num_clusters=k,
                          max_iter=settings.kmeans_max_iter)
  val_clusters = clustering.assign_clusters(trial.val_emb, fit.centroids).cluster
  train_psi = features.cluster_errors(
      fit.assignment, trial.train_loss, mask=trial.train_mask,
      weights=selection_weights, num_clusters=k,
      prior_strength=settings.psi_prior_strength).psi
  test_psi = features.cluster_errors(
      val_clusters, trial.val_test_loss, mask=trial.val_test_mask,
      num_clusters=k, prior_strength=settings.psi_prior_strength).psi
  return _Clusters(fit.centroids, val_clusters, train_psi, test_psi)


def _kmeans_router(trial: TrialData, key, settings: Settings, *,
                   matched: bool = False) -> MethodOutput:
  """UniRoute (K-means) with K chosen on the training LLMs (App. F.1).

  With ``matched``, the training LLMs are represented for the choice by as
  many (random) training prompts as there are validation prompts, so their
  Psi is as noisy as the test LLMs' will be. The paper's rule uses every
  training prompt, which favours a K too large for the validation set when
  that set is much smaller (MMLU-Pro: see benchmarks/results/).
  """
  best = _no_best(trial)
  n_train, n_val = trial.train_emb.shape[0], trial.val_emb.shape[0]
  selection_weights = None
  if matched and n_val < n_train:
    subset_key = jax.random.fold_in(key, len(settings.cluster_grid))
    chosen = jax.random.permutation(subset_key, n_train)[:n_val]
    selection_weights = jnp.zeros(n_train, trial.train_loss.dtype).at[chosen].set(1.0)
  for i, k in enumerate(settings.cluster_grid):
    c = _fit_clusters(trial, jax.random.fold_in(key, i), k, settings,
                      selection_weights)
    test_clusters = clustering.assign_clusters(trial.test_emb, c.centroids).cluster
    area = _validation_area(c.train_psi[c.val_clusters], trial)
    best = _keep_better(best, area, c.test_psi[test_clusters], k)
  return MethodOutput(_test_curve(best.gamma, trial), best.k)


def _learned_map_router(trial: TrialData, key, settings: Settings, *,
                        options: LearnedMapOptions | None = None
                        ) -> MethodOutput:
  """UniRoute (LearnedMap, section 5.2): a trained soft cluster map.

  Per candidate K: k-means on the training prompts; Psi of the training LLMs
  (from their training-prompt labels by default), held fixed while the map
  is fitted to their training-prompt labels (binary cross-entropy, Adam,
  the paper's defaults: :class:`LearnedMapOptions`); K is chosen by the
  training LLMs' area on the validation prompts. The test LLMs get Psi from
  the validation prompts (nearest centroid, or Phi with ``soft_psi``), and
  gamma(x) = Phi(x)^T Psi. ``options`` (a fixed variant) overrides
  ``settings.learned_map``.
  """
  options = options or settings.learned_map
  best = _no_best(trial)
  for i, k in enumerate(settings.cluster_grid):
    fit_key, map_key = jax.random.split(jax.random.fold_in(key, i))
    c = _fit_clusters(trial, fit_key, k, settings)
    train_psi = c.train_psi
    if options.train_psi_from == "val":
      train_psi = features.cluster_errors(
          c.val_clusters, trial.val_train_loss, mask=trial.val_train_mask,
          num_clusters=k, prior_strength=settings.psi_prior_strength).psi
    select = None
    if options.select_epoch:
      select = cluster_map.CheckpointSelection(
          trial.val_emb, trial.val_train_loss, trial.val_train_cost,
          jnp.arange(train_psi.shape[1]), trial.val_train_mask)
    learned = cluster_map.fit_cluster_map(
        map_key, trial.train_emb, trial.train_loss, train_psi,
        mask=trial.train_mask, hidden=options.hidden,
        batch_norm=options.batch_norm, learning_rate=options.learning_rate,
        batch_size=options.batch_size, epochs=options.epochs, select=select)
    area = _validation_area(
        cluster_map.learned_map_predicted_loss(learned, trial.val_emb, train_psi),
        trial)
    test_psi = c.test_psi
    if options.soft_psi:
      test_psi = features.cluster_errors(
          cluster_map.apply_cluster_map(learned, trial.val_emb),
          trial.val_test_loss, mask=trial.val_test_mask,
          prior_strength=settings.psi_prior_strength).psi
    gamma = cluster_map.learned_map_predicted_loss(learned, trial.test_emb,
                                                   test_psi)
    best = _keep_better(best, area, gamma, k)
  return MethodOutput(_test_curve(best.gamma, trial), best.k)


def _clairvoyant_selection(trial: TrialData) -> clairvoyant.CheckpointSelection:
  """The validation prompts with the test LLMs' labels: what a clairvoyant
  predictor keeps its best epoch on (the test pool is what it routes)."""
  return clairvoyant.CheckpointSelection(
      trial.val_emb, trial.val_test_loss, trial.val_test_cost,
      trial.test_models, trial.val_test_mask)


def _mlp_router(trial: TrialData, key, settings: Settings) -> MethodOutput:
  """Clairvoyant MLP: trained on the training prompts with EVERY LLM's labels
  (the test LLMs' included), best epoch by the test pool's validation area."""
  fit = clairvoyant.fit_mlp(key, trial.train_emb, trial.train_all_loss,
                            mask=trial.train_all_mask,
                            epochs=settings.clairvoyant_epochs,
                            select=_clairvoyant_selection(trial))
  gamma = clairvoyant.predict_loss(fit, trial.test_emb)[:, trial.test_models]
  return MethodOutput(_test_curve(gamma, trial), fit.best_epoch + 1)


def _matfac_router(trial: TrialData, key, settings: Settings) -> MethodOutput:
  """Clairvoyant matrix factorisation; its rank d is chosen like K, from the
  same candidates, by the (clairvoyant) validation area of its best epoch."""
  best = _no_best(trial)
  select = _clairvoyant_selection(trial)
  for i, rank in enumerate(settings.cluster_grid):
    fit = clairvoyant.fit_matrix_factorization(
        jax.random.fold_in(key, i), trial.train_emb, trial.train_all_loss,
        rank=rank, mask=trial.train_all_mask,
        epochs=settings.clairvoyant_epochs, select=select)
    gamma = clairvoyant.predict_loss(fit, trial.test_emb)[:, trial.test_models]
    best = _keep_better(best, fit.validation_area[fit.best_epoch], gamma, rank)
  return MethodOutput(_test_curve(best.gamma, trial), best.k)


def _oracle(trial: TrialData, key, settings: Settings) -> MethodOutput:
  del key, settings
  curve = metrics._deferral_curve(
      trial.test_loss, trial.test_loss, trial.test_cost,
      jnp.ones(trial.test_loss.shape[1], bool), trial.test_weights,
      trial.test_cost)
  return MethodOutput(curve, jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class Method:
  """A router the protocol can evaluate.

  Attributes:
    title: how tables name it.
    run: (trial data, key, settings) -> MethodOutput; pure and vmappable.
    reference: True for upper bounds (the oracle, clairvoyant routers):
      reported, but never the "best method" others are tested against.
    hyperparameter: what ``MethodOutput.chosen`` is, e.g. "K"; "" for none.
    clairvoyant: True for routers trained with the test LLMs' labels (not
      dynamic routers); they are reference methods too.
  """

  title: str
  run: MethodFn
  reference: bool = False
  hyperparameter: str = ""
  clairvoyant: bool = False

  def __post_init__(self):
    if self.clairvoyant and not self.reference:
      raise ValueError("a clairvoyant method must be a reference method")


METHODS: dict[str, Method] = {
    "zero": Method("ZeroRouter", _zero_router),
    "knn": Method("K-NN", _knn_router, hyperparameter="k"),
    "kmeans": Method("UniRoute (K-means)", _kmeans_router, hyperparameter="K"),
    "kmeans_matched": Method("UniRoute (K-means, matched K choice)",
                             functools.partial(_kmeans_router, matched=True),
                             hyperparameter="K"),
    "learned_map": Method("UniRoute (LearnedMap)", _learned_map_router,
                          hyperparameter="K"),
    # The variant that matched K-NN on MMLU-Pro (benchmarks/results/).
    "learned_map_linear": Method(
        "UniRoute (LearnedMap, softmax-dense, soft Psi)",
        functools.partial(_learned_map_router, options=LearnedMapOptions(
            hidden=(), batch_norm=False, soft_psi=True)),
        hyperparameter="K"),
    "mlp": Method("MLP (clairvoyant)", _mlp_router, reference=True,
                  hyperparameter="epoch", clairvoyant=True),
    "matfac": Method("Matrix factorisation (clairvoyant)", _matfac_router,
                     reference=True, hyperparameter="d", clairvoyant=True),
    "oracle": Method("Oracle (per prompt)", _oracle, reference=True),
}
DEFAULT_METHODS = ("zero", "knn", "kmeans", "oracle")


def register_method(name: str, method: Method) -> None:
  """Adds a router to :data:`METHODS` (e.g. a learned cluster map)."""
  if not name.isidentifier():
    raise ValueError(f"method name must be an identifier, got {name!r}")
  METHODS[name] = method


# ------------------------------------------------------- hyper-parameters


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


# --------------------------------------------------------------- evaluation


class TrialMetrics(NamedTuple):
  """Per-trial results of one method, each [T]; ``curve_quality`` [T, G]."""

  area: Array
  area50: Array
  qnc: Array
  peak_quality: Array
  best_quality: Array
  chosen: Array
  curve_quality: Array


def _name_seed(name: str) -> int:
  """A method's own key offset: its results do not depend on which other
  methods run beside it."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


class PoolPoints(NamedTuple):
  """Each test LLM alone on the test prompts, [T, m_test] each."""

  relative_cost: Array
  quality: Array


def _pool_points(trial: TrialData) -> PoolPoints:
  cost, quality = metrics._single_llm_points(trial.test_loss, trial.test_cost,
                                             trial.test_weights)
  return PoolPoints(cost / jnp.max(cost), quality)


@functools.partial(jax.jit, static_argnames=("methods", "settings"))
def _run_batch(arrays, splits: Split, keys, *, methods: tuple[str, ...],
               settings: Settings):
  grid = jnp.linspace(0.0, 1.0, settings.curve_points, dtype=arrays[1].dtype)

  def one(split, key):
    trial = gather_trial(arrays, split)
    out = {"pool": _pool_points(trial)}
    for name in methods:
      result = METHODS[name].run(trial, jax.random.fold_in(key, _name_seed(name)),
                                 settings)
      m = metrics._deferral_metrics(result.curve, None)
      env = metrics._upper_envelope(result.curve)
      out[name] = TrialMetrics(m.area, m.area50, m.qnc, m.peak_quality,
                               result.curve.best_quality, result.chosen,
                               metrics.interpolate(env, grid))
    return out

  return jax.vmap(one)(splits, keys)


def _replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _by_trial(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))


def run_trials(key, data: RoutingData, splits: Split, *,
               methods: Sequence[str] = DEFAULT_METHODS,
               settings: Settings, batch_size: int = 8,
               on_progress: Callable[[int, int], None] | None = None,
               mesh: jax.sharding.Mesh | None = None
               ) -> tuple[dict[str, TrialMetrics], PoolPoints]:
  """Runs every method on every trial.

  Returns:
    ({method: per-trial metrics}, the test LLMs' own points per trial).

  Trials run ``batch_size`` at a time as one vmapped call (the last batch is
  padded by repeating a trial, then trimmed), so the results do not depend
  on the batch size.

  With a ``mesh`` (one axis, e.g. ``jax.make_mesh((jax.device_count(),),
  ("trials",))``), every batch is split across the mesh's devices along the
  trial axis (``NamedSharding``) and the dataset is replicated on each:
  trials are independent, so each device runs its own trials.
  ``batch_size`` is rounded up to a multiple of the number of devices.
  """
  methods = tuple(methods)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"methods must be among {tuple(METHODS)}, got {unknown}")
  batch_size = check.positive_int("batch_size", batch_size)
  num_trials = splits.train.shape[0]
  dtype = check.compute_dtype(data.embeddings, data.loss)
  arrays = (jnp.asarray(data.embeddings, dtype), jnp.asarray(data.loss, dtype),
            jnp.asarray(data.mask, bool), jnp.asarray(data.cost, dtype))
  trial_keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(
      jnp.arange(num_trials))
  batch_size = min(batch_size, num_trials)
  if mesh is not None:
    if not isinstance(mesh, jax.sharding.Mesh) or len(mesh.axis_names) != 1:
      raise ValueError(f"mesh must be a jax.sharding.Mesh with one axis, got "
                       f"{mesh!r}")
    # Only the devices and the axis name matter: the compiler propagates
    # the trial sharding of the inputs (JAX's automatic mode, whatever mode
    # the caller's mesh is in), and trials never interact.
    mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                             axis_types=(jax.sharding.AxisType.Auto,))
    batch_size = -(-batch_size // mesh.size) * mesh.size
    arrays = jax.device_put(arrays, _replicated(mesh))
  pieces = []
  for start in range(0, num_trials, batch_size):
    index = np.minimum(np.arange(start, start + batch_size), num_trials - 1)
    batch = Split(*(np.asarray(part)[index] for part in splits))
    batch_keys = trial_keys[index]
    if mesh is not None:
      batch, batch_keys = jax.device_put((batch, batch_keys), _by_trial(mesh))
    out = _run_batch(arrays, batch, batch_keys, methods=methods,
                     settings=settings)
    keep = min(batch_size, num_trials - start)
    pieces.append(jax.tree.map(lambda a: np.asarray(a)[:keep], out))
    if on_progress is not None:
      on_progress(start + keep, num_trials)
  def joined(name, kind):
    return kind(*(np.concatenate([p[name][f] for p in pieces])
                  for f in range(len(kind._fields))))

  return ({name: joined(name, TrialMetrics) for name in methods},
          joined("pool", PoolPoints))


class SignTest(NamedTuple):
  """Two-sided exact sign test of per-trial areas against another method."""

  wins: int
  losses: int
  ties: int
  p_value: float


def sign_test(a, b) -> SignTest:
  """Exact two-sided sign test that ``a`` and ``b`` (paired) differ.

  Ties are dropped; p = min(1, 2 P[Binomial(wins + losses, 1/2) <= min]).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"sign_test needs two 1-d arrays of equal length, got "
                     f"{a.shape} and {b.shape}")
  wins, losses = int(np.sum(a > b)), int(np.sum(a < b))
  n = wins + losses
  tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
  p = min(1.0, 2.0 * tail / 2.0 ** n) if n else 1.0
  return SignTest(wins, losses, int(a.size - n), p)


class MethodSummary(NamedTuple):
  """One method's results over all trials.

  Attributes:
    name, title: the method's key and display name.
    area, area50, qnc, peak_quality: metrics of the mean deferral curve.
    area_ci: 95% normal-approximation interval of the mean per-trial area.
    relative_cost, quality: the mean curve, [G] each.
    trials: the per-trial :class:`TrialMetrics`.
    versus_best: sign test of the per-trial areas against the best method
      (None for the best method itself and for reference methods).
    significantly_worse: p < alpha and fewer wins than losses.
  """

  name: str
  title: str
  area: float
  area50: float
  qnc: float
  peak_quality: float
  area_ci: tuple[float, float]
  relative_cost: np.ndarray
  quality: np.ndarray
  trials: TrialMetrics
  versus_best: SignTest | None
  significantly_worse: bool


def summarise(results: dict[str, TrialMetrics], *, alpha: float = 0.01
              ) -> tuple[dict[str, MethodSummary], str | None]:
  """Mean-curve metrics, intervals and sign tests; also the best method.

  The best method is the non-reference method with the largest mean area.
  """
  summaries, best = {}, None
  candidates = [n for n in results if not METHODS[n].reference]
  if candidates:
    best = max(candidates, key=lambda n: float(np.mean(results[n].area)))
  for name, r in results.items():
    t = r.area.shape[0]
    quality = np.mean(r.curve_quality, axis=0)
    grid = np.linspace(0.0, 1.0, quality.shape[0])
    curve = metrics.curve_from_points(grid, quality, max_cost=1.0,
                                      best_quality=float(np.mean(r.best_quality)))
    mean_metrics = metrics.deferral_metrics(curve)
    mean = float(np.mean(r.area))
    half = 1.96 * float(np.std(r.area, ddof=1)) / math.sqrt(t) if t > 1 else math.nan
    test = None
    if best is not None and name != best and not METHODS[name].reference:
      test = sign_test(r.area, results[best].area)
    summaries[name] = MethodSummary(
        name=name, title=METHODS[name].title, area=mean,
        area50=float(np.mean(r.area50)), qnc=float(mean_metrics.qnc),
        peak_quality=float(np.max(quality)), area_ci=(mean - half, mean + half),
        relative_cost=grid, quality=quality, trials=r, versus_best=test,
        significantly_worse=bool(test is not None and test.p_value < alpha
                                 and test.wins < test.losses))
  return summaries, best


class Evaluation(NamedTuple):
  """Everything :func:`evaluate` measured."""

  methods: dict[str, MethodSummary]
  best: str | None
  splits: Split
  settings: Settings
  alpha: float
  pool: PoolPoints


def _learned_map_options(options) -> LearnedMapOptions:
  if options is None:
    return LearnedMapOptions()
  if not isinstance(options, LearnedMapOptions):
    raise ValueError(f"learned_map must be a protocol.LearnedMapOptions, got "
                     f"{type(options).__name__}")
  return options


def evaluate(key, data: RoutingData, *, num_trials: int = 10,
             methods: Sequence[str] = DEFAULT_METHODS, val_frac=0.1,
             test_frac=0.3, test_model_frac=1 / 3,
             cluster_grid: Sequence[int] | None = None,
             neighbor_grid: Sequence[int] | None = None,
             kmeans_max_iter: int = 100, curve_points: int = 1001,
             clairvoyant_epochs: int = 30,
             learned_map: LearnedMapOptions | None = None,
             alpha: float = 0.01, batch_size: int = 8,
             on_progress: Callable[[int, int], None] | None = None,
             mesh: jax.sharding.Mesh | None = None
             ) -> Evaluation:
  """The paper's evaluation: many random trials, unseen test LLMs, mean curves.

  Args:
    key: a ``jax.random.key``: splits and k-means seeds derive from it.
    data: the dataset (validated here).
    num_trials: independent trials (the paper uses 400).
    methods: keys of :data:`METHODS`.
    val_frac, test_frac: prompt fractions (the rest trains); the paper uses
      0.1 / 0.3, and 0.01 validation for RouterBench.
    test_model_frac: fraction of LLMs held out as the unseen test pool.
    cluster_grid, neighbor_grid: candidate K and k, selected per trial on
      the training LLMs; default :func:`default_cluster_grid` and
      :func:`default_neighbor_grid`. One value fixes it.
    kmeans_max_iter: Lloyd iterations per fit.
    curve_points: size of the relative-cost grid of the mean curves.
    clairvoyant_epochs: training epochs of ``mlp`` and ``matfac``.
    learned_map: how ``learned_map`` trains its map (default: the paper's).
    alpha: level of the sign tests.
    batch_size: trials per vmapped call (memory grows with it).
    on_progress: called with (trials done, trials in all) after each batch.
    mesh: optional one-axis device mesh to split each batch's trials over
      (see :func:`run_trials`).
  """
  data.validate()
  split_key, run_key = jax.random.split(key)
  splits = make_trials(split_key, num_trials, data.num_prompts, data.num_models,
                       val_frac=val_frac, test_frac=test_frac,
                       test_model_frac=test_model_frac)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  clusters = tuple(cluster_grid) if cluster_grid else default_cluster_grid(n_train, n_val)
  neighbors = tuple(neighbor_grid) if neighbor_grid else default_neighbor_grid(n_train, n_val)
  for k in clusters:
    check.positive_int("cluster_grid", k, upper=n_train,
                       upper_doc=f"the number of training prompts ({n_train})")
  for k in neighbors:
    check.positive_int("neighbor_grid", k, upper=min(n_train, n_val),
                       upper_doc=f"the number of training and of validation "
                                 f"prompts ({min(n_train, n_val)})")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
  settings = Settings(cluster_grid=clusters, neighbor_grid=neighbors,
                      kmeans_max_iter=check.positive_int("kmeans_max_iter", kmeans_max_iter),
                      curve_points=check.positive_int("curve_points", curve_points),
                      clairvoyant_epochs=check.positive_int("clairvoyant_epochs",
                                                            clairvoyant_epochs),
                      learned_map=_learned_map_options(learned_map))
  results, pool = run_trials(run_key, data, splits,
                             methods=methods, settings=settings,
                             batch_size=batch_size, on_progress=on_progress,
                             mesh=mesh)
  summaries, best = summarise(results, alpha=alpha)
  return Evaluation(summaries, best, splits, settings, alpha, pool)
