"""How many prompts a new LLM must be run on: the onboarding curve.

Per trial (the protocol's splits): k-means on the training prompts for each
candidate K; the unseen test LLMs get Psi from only the first s of the
validation (representative) prompts in some order; the test prompts are
routed among them and the deferral Area is recorded. Sizes, orders and
candidate K are batch axes of one traced computation (the sizes are prompt
weights, so every size has the same shapes), and trials run in compiled
batches as in :func:`~uniroute_jax.protocol.run_trials`.

Orders (``SELECTIONS``):
- ``"random"``: a random order, what the paper's protocol amounts to.
- ``"stratified"``: every cluster in proportion to its share of the
  representative prompts, in random order within each cluster, so the
  first s prompts spread over the clusters as evenly as s allows.
- ``"neyman"``: clusters in proportion to their share times sigma_c, the
  spread of a new LLM's error there (sqrt of the training LLMs' mean
  Psi (1 - Psi) in the cluster): Neyman allocation, which spends labels
  where an error rate is most uncertain.

K is chosen per trial as the protocol chooses it (App. F.1: the training
LLMs' validation area), independently of the size; the per-K curves are
returned too, to show which K a small budget of prompts would prefer.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import blocks, checks, clustering, features, metrics, routing
from uniroute_jax.protocol.methods import default_cluster_grid, candidate_array
from uniroute_jax.protocol.running import dataset_arrays
from uniroute_jax.protocol.splits import Split, make_trials
from uniroute_jax.protocol.statistics import area_interval
from uniroute_jax.protocol.trials import (TrialData, gather_trial, test_curve,
                                          validation_area)
from uniroute_jax.types import Array, RoutingData

SELECTIONS = features.SELECTIONS
DEFAULT_SIZES = (25, 50, 100, 200, 400, None)


class OnboardingCurve(NamedTuple):
  """The deferral Area against the number of prompts a new LLM is run on.

  Attributes:
    sizes: [S] prompts per new LLM (the last may be every representative).
    selections: the orders, one per row of ``area``'s second axis.
    clusters: [C] candidate K.
    area: [T, O, S] per trial, order and size, at the trial's chosen K.
    area_by_k: [T, C, O, S] the same for every candidate K.
    chosen: [T] int the K chosen per trial (App. F.1).
    num_representatives: validation prompts per trial (the most a size
      can be).
  """

  sizes: np.ndarray
  selections: tuple[str, ...]
  clusters: np.ndarray
  area: np.ndarray
  area_by_k: np.ndarray
  chosen: np.ndarray
  num_representatives: int

  def mean(self) -> np.ndarray:
    """[O, S] the mean Area over trials."""
    return self.area.mean(axis=0)

  def interval(self) -> tuple[np.ndarray, np.ndarray]:
    """([O, S] low, [O, S] high): 95% normal intervals of the mean, within
    [0, 1] where every Area lies (NaN for one trial)."""
    return area_interval(self.area)


def _trial_curves(trial: TrialData, key, clusters, sizes, prior_strength, *,
                  max_clusters: int, max_iter: int, empirical_bayes: bool):
  """(validation areas [C], test Areas [C, O, S]) of one trial."""
  if empirical_bayes:
    prior_strength = features.EMPIRICAL_BAYES

  def one_k(item):
    k, i = item
    fit_key, order_key = jax.random.split(jax.random.fold_in(key, i))
    fit = clustering.kmeans(fit_key, trial.train_emb, num_clusters=max_clusters,
                            active_clusters=k, max_iter=max_iter)
    assign = lambda x: clustering.assign_clusters(
        x, fit.centroids, cluster_mask=fit.cluster_mask).cluster
    val_clusters, test_clusters = assign(trial.val_emb), assign(trial.test_emb)
    train_psi = features.cluster_errors(
        fit.assignment, trial.train_loss, mask=trial.train_mask,
        num_clusters=max_clusters).psi
    area = validation_area(routing.predicted_loss(val_clusters, train_psi),
                           trial)
    spread = jnp.sqrt(jnp.mean(train_psi * (1.0 - train_psi), axis=1))
    ranks = jnp.stack([features.labelling_ranks(
        order_key, val_clusters, num_clusters=max_clusters, selection=name,
        spread=spread) for name in SELECTIONS])

    def area_at(rank, size):
      weights = (rank < size).astype(trial.val_test_loss.dtype)
      psi = features.cluster_errors(
          val_clusters, trial.val_test_loss, mask=trial.val_test_mask,
          weights=weights, num_clusters=max_clusters,
          prior_strength=prior_strength).psi
      curve = test_curve(routing.predicted_loss(test_clusters, psi), trial)
      return metrics.deferral_metrics(curve).area

    by_size = jax.vmap(area_at, in_axes=(None, 0))
    return area, jax.vmap(by_size, in_axes=(0, None))(ranks, sizes)

  index = jnp.arange(clusters.shape[0])
  return jax.lax.map(one_k, (clusters, index))


@checks.kernel(static_argnames=("max_clusters", "max_iter", "empirical_bayes",
                                "batch"))
def _batch(arrays, splits: Split, keys, clusters, sizes, prior_strength, *,
           max_clusters, max_iter, empirical_bayes, batch):
  def one(item):
    split, key = item
    val_area, test_area = _trial_curves(
        gather_trial(arrays, split), key, clusters, sizes, prior_strength,
        max_clusters=max_clusters, max_iter=max_iter,
        empirical_bayes=empirical_bayes)
    best = jnp.argmax(jnp.where(jnp.isnan(val_area), -jnp.inf, val_area))
    return test_area[best], test_area, clusters[best]

  return blocks.map_batched(one, (splits, keys), batch)


def onboarding_curve(key, data: RoutingData, *, sizes: Sequence[int | None] =
                     DEFAULT_SIZES, num_trials: int = 10, clusters=None,
                     val_frac=0.1, test_frac=0.3, test_model_frac=1 / 3,
                     prior_strength=0.0, max_iter: int = 100,
                     batch_size: int = 4,
                     on_progress: Callable[[int, int], None] | None = None
                     ) -> OnboardingCurve:
  """The onboarding curve of UniRoute (K-means) on ``data``.

  Args:
    key: a ``jax.random.key``: splits, k-means and the orders derive from it.
    data: the dataset (validated here, on the host).
    sizes: prompts per new LLM; None (or a size of at least the number of
      representatives) is every representative prompt.
    num_trials: independent trials (the protocol's splits of ``key``).
    clusters: candidate K; default the protocol's (App. F.1).
    val_frac, test_frac, test_model_frac: as :func:`evaluate`.
    prior_strength: Psi's shrinkage towards each LLM's overall error, or
      ``"empirical_bayes"`` (``features.cluster_errors``).
    max_iter: Lloyd iterations per k-means fit.
    batch_size: trials per compiled call.
    on_progress: called with (trials done, trials in all) after each batch.

  Returns:
    An :class:`OnboardingCurve`.
  """
  checks.prng_key("key", key)
  data.validate(labelled_models=True)
  num_trials = checks.positive_int("num_trials", num_trials)
  batch_size = checks.positive_int("batch_size", batch_size)
  max_iter = checks.positive_int("max_iter", max_iter)
  split_key, run_key = jax.random.split(key)
  splits = make_trials(split_key, num_trials, data.num_prompts, data.num_models,
                       val_frac=val_frac, test_frac=test_frac,
                       test_model_frac=test_model_frac)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  size_values = _sizes(sizes, n_val)
  if clusters is None:
    clusters = default_cluster_grid(n_train, n_val)
  clusters = candidate_array("clusters", clusters, n_train,
                             f"the number of training prompts ({n_train})")
  empirical_bayes = features.is_empirical_bayes(prior_strength)
  if empirical_bayes:
    prior_strength = 0.0
  checks.scalar("prior_strength", prior_strength)
  checks.host_finite("prior_strength", prior_strength)
  checks.host_nonnegative("prior_strength", prior_strength)
  dtype = checks.compute_dtype(data.embeddings, data.loss)
  arrays = dataset_arrays(data)
  trial_keys = jax.vmap(lambda t: jax.random.fold_in(run_key, t))(
      jnp.arange(num_trials))
  batch_size = min(batch_size, num_trials)
  pieces = []
  for start in range(0, num_trials, batch_size):
    index = np.minimum(np.arange(start, start + batch_size), num_trials - 1)
    split = Split(*(np.asarray(part)[index] for part in splits))
    out = _batch(arrays, split, trial_keys[index], clusters,
                 jnp.asarray(size_values, jnp.int32),
                 jnp.asarray(prior_strength, dtype),
                 max_clusters=int(clusters.max()), max_iter=max_iter,
                 empirical_bayes=empirical_bayes,
                 batch=1 if jax.default_backend() == "cpu" else batch_size)
    keep = min(batch_size, num_trials - start)
    pieces.append([np.asarray(a)[:keep] for a in out])
    if on_progress is not None:
      on_progress(start + keep, num_trials)
  area, by_k, chosen = (np.concatenate([p[i] for p in pieces]) for i in range(3))
  return OnboardingCurve(size_values, SELECTIONS, clusters, area, by_k, chosen,
                         int(n_val))


def _sizes(sizes, n_val: int) -> np.ndarray:
  """Sizes on the host, checked: positive, each at most n_val (None and
  larger ones are every representative), ascending, without repeats."""
  if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
    raise ValueError(f"sizes must be a sequence of positive integers (or "
                     f"None for every representative), got {sizes!r}")
  values = []
  for size in sizes:
    if size is None:
      values.append(n_val)
      continue
    checks.positive_int("sizes", size)
    values.append(min(int(size), n_val))
  if not values:
    raise ValueError("sizes must hold at least one size")
  return np.unique(np.asarray(values, np.int64))
