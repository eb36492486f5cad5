"""A router for a pool one has: its map and K chosen on held-out prompts.

:func:`fit_router` turns a labelled dataset (every LLM's labels on some
prompts) into a :class:`~uniroute_jax.router.Router` ready to route new
prompts and to onboard new LLMs:

1. Choose. Over a few random splits of the prompts (``protocol.evaluate``
   with ``fixed_pool``: every LLM is seen), each candidate map chooses its
   K as the paper does (App. F.1: the largest validation area), and is
   scored by the area of its deferral curve on prompts held out of both
   fitting and K choice. The map with the larger mean held-out area wins;
   its K is the median of the Ks it chose.
2. Fit. The prompts are split once into representative prompts and
   training prompts. The map is fitted on the training prompts, and every
   LLM is represented by its labels on the representative prompts, which
   the router keeps (ids, embeddings, memberships): an LLM onboarded later
   (:meth:`Router.onboard`) is run on the same prompts and stands on the
   same footing as the ones fitted here.

The candidate maps are UniRoute (K-means), hard nearest-centroid clusters,
and the single softmax-dense learned map with soft Psi (section 5.2), which
the project's measurements found the better of the two on MMLU-Pro and
RouterBench (``benchmarks/results/paper_table.md``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from uniroute_jax import checks, cluster_map, features, protocol
from uniroute_jax.router import Router
from uniroute_jax.types import RoutingData

MAPS = ("kmeans", "learned")


def candidate_method(kind: str, clusters=None, prior_strength=None
                     ) -> protocol.Method:
  """The protocol's method for a map kind: "kmeans" (UniRoute K-means) or
  "learned" (the single softmax-dense map with soft Psi), estimating Psi
  with ``prior_strength`` (None: plain cluster means; a number; or
  ``"empirical_bayes"``)."""
  psi = ({"empirical_bayes": True} if prior_strength == features.EMPIRICAL_BAYES
         else {"prior_strength": prior_strength or 0.0})
  if kind == "kmeans":
    return protocol.KMeansRouter(name="kmeans", clusters=clusters, **psi)
  if kind == "learned":
    return protocol.BUILT_IN["learned_map_linear"].replace(
        name="learned", clusters=clusters, **psi)
  raise checks.ArgumentError(lambda name: (
      f"{name('map')} must be one of {', '.join(MAPS)}, got {kind!r}"))


def default_cluster_grid(n_train: int, n_rep: int) -> tuple[int, ...]:
  """Candidate K from 3 to representative prompts / 10, at most 8 of them.

  The paper's grid (3 .. validation prompts / 50, App. F.1) is made for
  thousands of validation prompts; a log of a few hundred would get K = 3
  alone. Ten representative prompts a cluster on average keep each LLM's
  per-cluster error an average of several labels, and the held-out
  prompts decide among the candidates.
  """
  high = max(3, n_rep // 10)
  values = np.unique(np.round(np.geomspace(3, high, 8)).astype(int)) if (
      high > 3) else np.array([3])
  return tuple(int(k) for k in values if k <= n_train) or (n_train,)


class MapScore(NamedTuple):
  """How one candidate map did on the held-out prompts.

  Attributes:
    area: mean deferral-curve Area over the selection trials.
    area_per_trial: [T] the Area of each trial.
    chosen_clusters: [T] the K it chose in each trial.
    area_estimation, area_approximation: the mean Area the map lost to the
      per-prompt oracle, split (:mod:`uniroute_jax.risk`) into what more
      representative prompts per LLM would win back (estimation) and what
      the clusters miss with every label known, with the labels' own noise,
      which no router removes (approximation).
  """

  area: float
  area_per_trial: np.ndarray
  chosen_clusters: np.ndarray
  area_estimation: float = float("nan")
  area_approximation: float = float("nan")


class FitReport(NamedTuple):
  """What :func:`fit_router` chose, and why.

  Attributes:
    map: the map kind of the router ("kmeans" or "learned").
    num_clusters: its K.
    scores: {map kind: MapScore} for every candidate scored (empty when a
      single map and a single K were given: nothing was chosen).
    num_train, num_representatives: the final split's prompt counts.
  """

  map: str
  num_clusters: int
  scores: dict[str, MapScore]
  num_train: int
  num_representatives: int


class FittedRouter(NamedTuple):
  router: Router
  report: FitReport


def fit_router(key, data: RoutingData, *, maps: Sequence[str] = MAPS,
               clusters: Sequence[int] | None = None,
               representative_frac: float = 0.2, holdout_frac: float = 0.2,
               num_trials: int = 3,
               prior_strength: float | str | None = features.EMPIRICAL_BAYES,
               on_progress: Callable[[int, int], None] | None = None
               ) -> FittedRouter:
  """A router on ``data``'s pool, its map and K chosen on held-out prompts.

  Args:
    key: a ``jax.random.key``; the selection splits, the k-means seeding
      and the map's training derive from it.
    data: every LLM's labels on the prompts (missing labels masked); the
      router ranks each LLM by its mean cost over the prompts.
    maps: the candidate map kinds, among :data:`MAPS`.
    clusters: candidate K; default :func:`default_cluster_grid`.
    representative_frac: the share of the prompts every LLM is represented
      on (kept by the router for onboarding).
    holdout_frac: the share held out of each selection trial to score the
      candidates.
    num_trials: selection trials (random splits).
    prior_strength: how every LLM's Psi is estimated, in the selection and
      in the router (which records it for the LLMs onboarded later,
      :attr:`Router.psi_prior`): ``"empirical_bayes"`` (the default: the
      posterior mean of ``features.cluster_posterior``, which measured at
      least as good as plain means on every shared dataset and better with
      few representative prompts, ``benchmarks/results/theory.md``), a
      number of pseudo-prompts, or None for the paper's plain cluster means.
    on_progress: called with (trials done, trials in all) while choosing.

  Returns:
    A :class:`FittedRouter`: the router (every LLM of ``data`` added, the
    representatives kept) and a :class:`FitReport`.
  """
  checks.prng_key("key", key)
  data.validate()
  maps = tuple(dict.fromkeys(maps))
  if not maps:
    raise ValueError("maps must name at least one map kind")
  for kind in maps:
    candidate_method(kind)
  prior_strength = features.prior_rule(prior_strength, "prior_strength")
  n = data.num_prompts
  try:
    one_candidate = clusters is not None and np.size(clusters) == 1
  except (TypeError, ValueError):
    one_candidate = False      # candidate_array below says what is wrong
  # With one map and one K nothing is chosen, so nothing is held out.
  n_train, n_rep, _ = split_sizes(
      n, representative_frac,
      holdout_frac if len(maps) > 1 or not one_candidate else None)
  choose_key, fit_key = jax.random.split(key)
  grid = clusters
  if grid is None:
    grid = default_cluster_grid(n_train, n_rep)
    one_candidate = len(grid) == 1
  if len(maps) > 1 or not one_candidate:
    # Chosen on selection trials, whose maps see their training prompts.
    limit, where = n_train, f"the {n_train} training prompts of a trial"
  else:
    # Fitted once, on every prompt but the representatives.
    limit, where = n - n_rep, f"the {n - n_rep} prompts the map is fitted on"
  grid = tuple(int(k) for k in
               protocol.methods.candidate_array("clusters", grid, limit, where))
  scores = {}
  if len(maps) > 1 or len(grid) > 1:
    evaluation = protocol.evaluate(
        choose_key, data, num_trials=num_trials,
        methods=[candidate_method(kind, grid, prior_strength) for kind in maps],
        val_frac=representative_frac, test_frac=holdout_frac,
        fixed_pool=True, on_progress=on_progress)
    for kind in maps:
      summary = evaluation.methods[kind]
      per_trial = np.asarray(summary.trials.area)
      if not np.all(np.isfinite(per_trial)):
        raise checks.ArgumentError(lambda name: (
            f"the held-out prompts of a selection trial ({n - n_train - n_rep})"
            f" leave the deferral area undefined (too few, or none labelled "
            f"by every LLM); raise {name('holdout_frac')}"))
      scores[kind] = MapScore(float(per_trial.mean()), per_trial,
                              np.asarray(summary.trials.chosen),
                              summary.area_estimation,
                              summary.area_approximation)
    kind = max(maps, key=lambda k: scores[k].area)
    chosen = np.sort(scores[kind].chosen_clusters)
    k = int(chosen[(chosen.size - 1) // 2])   # the lower median: a K it chose
  else:
    kind, k = maps[0], grid[0]
  router, num_train = _fit(fit_key, data, kind, k, representative_frac,
                           prior_strength)
  return FittedRouter(router, FitReport(kind, k, scores, num_train,
                                        data.num_prompts - num_train))


def split_sizes(n: int, representative_frac: float,
                holdout_frac: float | None) -> tuple[int, int, int]:
  """(training, representative, held-out) prompt counts of :func:`fit_router`
  on ``n`` prompts, each at least 1; no held-out prompts when
  ``holdout_frac`` is None (one map and one K: nothing to choose).

  Raises:
    ValueError: a fraction outside (0, 1), or too few prompts.
  """
  if holdout_frac is not None:
    return protocol.split_sizes(n, representative_frac, holdout_frac)
  if not 0.0 < representative_frac < 1.0:
    raise checks.ArgumentError(lambda name: (
        f"{name('representative_frac')} must lie in (0, 1), got "
        f"{representative_frac}"))
  n_rep = max(1, round(n * representative_frac))
  if n - n_rep < 1:
    raise checks.ArgumentError(lambda name: (
        f"{n} prompt(s) are too few to fit a map on some and represent the "
        f"LLMs on the others with {name('representative_frac')} "
        f"{representative_frac}"))
  return n - n_rep, n_rep, 0


def _fit(key, data: RoutingData, kind: str, k: int, representative_frac: float,
         prior_strength) -> tuple[Router, int]:
  """The final router: the map on the training prompts, every LLM on the
  representative ones."""
  n = data.num_prompts
  n_rep = max(1, round(n * representative_frac))
  split_key, kmeans_key, map_key = jax.random.split(key, 3)
  order = np.asarray(jax.random.permutation(split_key, n))
  rep, train = np.sort(order[:n_rep]), np.sort(order[n_rep:])
  if k > train.size:
    raise ValueError(f"{k} clusters need at least as many training prompts; "
                     f"there are {train.size}")
  x_train = np.asarray(data.embeddings)[train]
  router = Router.from_kmeans(kmeans_key, x_train, num_clusters=k)
  loss, mask = np.asarray(data.loss), np.asarray(data.mask)
  if kind == "learned":
    method = candidate_method("learned")
    # As the protocol's LearnedMap: the map learns to predict the training
    # prompts' labels through the k-means clusters' error profiles.
    train_psi = features.cluster_errors(
        router.membership(x_train), loss[train], num_clusters=k,
        mask=mask[train], prior_strength=prior_strength).psi
    fitted = cluster_map.fit_cluster_map(
        map_key, x_train, loss[train], train_psi, mask=mask[train],
        hidden=method.hidden, batch_norm=method.batch_norm,
        learning_rate=method.learning_rate, batch_size=method.batch_size,
        epochs=method.epochs)
    router = Router.from_cluster_map(fitted)
  # The mean in float64: a float32 sum of many equal costs drifts.
  cost = np.asarray(data.cost, np.float64)
  cost = (cost.mean(axis=0) if cost.ndim == 2 else cost).astype(
      np.asarray(data.cost).dtype)
  unlabelled = [name for j, name in enumerate(data.model_names)
                if not mask[rep, j].any()]
  if unlabelled:
    raise checks.ArgumentError(lambda name: (
        f"LLM {unlabelled[0]!r} has no label on the {rep.size} representative "
        f"prompts, so nothing would represent it; label more of its prompts "
        f"or raise {name('representative_frac')}"))
  router = router.with_representatives(
      np.asarray(data.embeddings)[rep],
      ids=[str(i) for i in np.asarray(data.prompt_ids)[rep].tolist()]
  ).with_psi_prior(prior_strength)
  # The caller reports thin clusters once for the whole pool (the command
  # line's uncovered-cluster warning), not once per LLM.
  router = router.onboard(list(data.model_names), loss[rep], cost,
                          mask=mask[rep], warn_below=None)
  return router, int(train.size)


__all__ = ["FitReport", "FittedRouter", "MAPS", "MapScore", "candidate_method",
           "default_cluster_grid", "fit_router", "split_sizes"]
