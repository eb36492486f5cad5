"""The evaluation protocol: split prompts and LLMs, fit on one side, score on the other.

One trial (section 7 of the paper): prompts are split into train / validation
/ test; LLMs into a training pool and an unseen test pool. k-means sees only
the training prompts' embeddings; the test LLMs are represented only through
their validation labels; the test prompts with the test LLMs are used only to
score the routers.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import _validation as check
from uniroute_jax import clustering, features, metrics
from uniroute_jax.baselines import knn, zero_router
from uniroute_jax.types import RoutingData

METHODS = ("zero", "knn", "kmeans", "oracle")
METHOD_TITLES = {
    "zero": "ZeroRouter",
    "knn": "K-NN",
    "kmeans": "UniRoute (K-means)",
    "oracle": "Oracle (per prompt)",
}


class Split(NamedTuple):
  """Index arrays of one trial.

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


def make_split(key, num_prompts: int, num_models: int, *, val_frac=0.1,
               test_frac=0.3, test_model_frac=1 / 3) -> Split:
  """A random prompt split and a random split of LLMs into training/test pools.

  Args:
    key: a ``jax.random.key``.
    num_prompts, num_models: n and m.
    val_frac, test_frac: fractions of prompts (the rest is training).
    test_model_frac: fraction of LLMs held out as the unseen test pool (at
      least 2 so there is something to route between, and at least 1 left
      for training).
  """
  n_train, n_val, _ = split_sizes(num_prompts, val_frac, test_frac)
  if not 0.0 < test_model_frac < 1.0:
    raise ValueError(f"test_model_frac must lie in (0, 1), got {test_model_frac}")
  m_test = max(2, round(num_models * test_model_frac))
  if num_models - m_test < 1:
    raise ValueError(
        f"num_models={num_models} is too few for a training pool and a test "
        "pool of at least 2 LLMs")
  prompt_key, model_key = jax.random.split(key)
  prompts = np.asarray(jax.random.permutation(prompt_key, num_prompts))
  models = np.asarray(jax.random.permutation(model_key, num_models))
  return Split(
      train=np.sort(prompts[:n_train]),
      val=np.sort(prompts[n_train:n_train + n_val]),
      test=np.sort(prompts[n_train + n_val:]),
      train_models=np.sort(models[m_test:]),
      test_models=np.sort(models[:m_test]))


class MethodResult(NamedTuple):
  curve: metrics.DeferralCurve
  metrics: metrics.DeferralMetrics


def default_num_clusters(num_val: int) -> int:
  """K = N_val / 50 (App. F.1, without training LLMs to select it), >= 2."""
  return max(2, num_val // 50)


def default_num_neighbors(num_val: int) -> int:
  """k = sqrt(N_val) (App. F.1, without training LLMs to select it)."""
  return max(1, min(num_val, round(math.sqrt(num_val))))


def evaluate_split(key, data: RoutingData, split: Split, *,
                   num_clusters: int | None = None,
                   num_neighbors: int | None = None,
                   methods=METHODS,
                   on_step: Callable[[str], None] | None = None
                   ) -> dict[str, MethodResult]:
  """Scores each router on the unseen test LLMs and test prompts of one split.

  Test prompts missing a label for any test LLM are left out of the scores
  (weight 0), since their routed loss would be unknown.

  Args:
    key: a ``jax.random.key`` (k-means seeding).
    data: the dataset.
    split: from :func:`make_split`.
    num_clusters: K for UniRoute; default :func:`default_num_clusters`.
    num_neighbors: k for K-NN; default :func:`default_num_neighbors`.
    methods: any of ``METHODS``.
    on_step: called with a short description before each step (progress).

  Returns:
    {method: MethodResult} in the order of ``methods``.
  """
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"methods must be among {METHODS}, got {unknown}")
  report = on_step or (lambda _: None)
  test_llms = data.select_models(split.test_models)
  val = test_llms.select_prompts(split.val)
  test = test_llms.select_prompts(split.test)
  num_clusters = num_clusters or default_num_clusters(len(split.val))
  num_neighbors = num_neighbors or default_num_neighbors(len(split.val))
  check.positive_int("num_clusters", num_clusters, upper=len(split.train),
                     upper_doc=f"the number of training prompts ({len(split.train)})")
  check.positive_int("num_neighbors", num_neighbors, upper=len(split.val),
                     upper_doc=f"the number of validation prompts ({len(split.val)})")
  weights = np.all(test.mask, axis=1).astype(np.float32)
  if not weights.any():
    raise ValueError("no test prompt has labels for every test LLM")
  truth = np.where(test.mask, test.loss, 0.0)
  results: dict[str, MethodResult] = {}

  def score(name, curve):
    results[name] = MethodResult(curve, metrics.deferral_metrics(curve))

  for name in methods:
    if name == "zero":
      report("ZeroRouter: hull of the validation (cost, loss) points")
      overall = features.cluster_errors(
          np.zeros(len(split.val), np.int32), val.loss, num_clusters=1,
          mask=val.mask).overall
      hull = zero_router.zero_router_hull(overall, _model_cost(val))
      score(name, zero_router.zero_router_curve(hull, truth, test.cost,
                                                weights=weights))
    elif name == "knn":
      report(f"K-NN: {num_neighbors} nearest validation prompts")
      gamma = knn.knn_predicted_loss(
          test.embeddings, val.embeddings, val.loss, mask=val.mask,
          num_neighbors=num_neighbors)
      score(name, metrics.deferral_curve(gamma, truth, test.cost,
                                         weights=weights))
    elif name == "kmeans":
      report(f"UniRoute: k-means with K={num_clusters} on "
             f"{len(split.train)} training prompts")
      fit = clustering.kmeans(key, data.embeddings[split.train],
                          num_clusters=num_clusters)
      val_clusters = clustering.assign_clusters(val.embeddings, fit.centroids).cluster
      test_clusters = clustering.assign_clusters(test.embeddings, fit.centroids).cluster
      psi = features.cluster_errors(val_clusters, val.loss, mask=val.mask,
                                    num_clusters=num_clusters).psi
      gamma = psi[test_clusters]
      score(name, metrics.deferral_curve(gamma, truth, test.cost,
                                         weights=weights))
    elif name == "oracle":
      report("Oracle: every test label known")
      score(name, metrics.deferral_curve(truth, truth, test.cost,
                                         weights=weights))
  return results


def _model_cost(data: RoutingData) -> np.ndarray:
  """[m] cost per LLM: per-prompt costs averaged over the prompts."""
  cost = np.asarray(data.cost)
  return cost.mean(axis=0) if cost.ndim == 2 else cost
