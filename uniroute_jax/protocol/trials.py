"""One trial's data: the arrays its routers may see, gathered by its split,
and the two scores every router of the protocol is judged by.

Conventions:
- A test prompt missing a label for any test LLM is left out of that
  trial's scores (weight 0), since its routed loss would be unknown.
- With per-prompt costs (RouterBench), a router cannot know a prompt's cost
  before the LLM answers: every router ranks LLMs by their mean cost on the
  validation prompts, and curves account the cost actually paid.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from uniroute_jax import metrics
from uniroute_jax.protocol.splits import Split
from uniroute_jax.types import Array


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
  # [n_val, L] each validation prompt's nearest prompts of the dataset,
  # nearest first, as rows of train_emb (-1: not a training prompt); None
  # unless the dataset's arrays hold neighbour lists (DatasetArrays).
  val_train_neighbors: Array | None = None


class DatasetArrays(NamedTuple):
  """A dataset as device arrays, what trials are gathered from
  (:func:`~uniroute_jax.protocol.dataset_arrays`)."""

  embeddings: Array         # [n, d]
  loss: Array               # [n, m]
  mask: Array               # [n, m] bool
  cost: Array               # [m] or [n, m]
  # [n, L] int32 the prompts' L nearest prompts (knn.neighbor_lists; zeros
  # for prompts whose lists were not asked for), or None when no method
  # reads them.
  neighbors: Array | None = None


def gather_trial(arrays: DatasetArrays, split: Split) -> TrialData:
  """Slices a dataset's arrays by one trial's split."""
  emb, loss, mask, cost = arrays[:4]
  neighbors = arrays[4] if len(arrays) > 4 else None
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
      test_models=split.test_models,
      val_train_neighbors=None if neighbors is None
      else _as_positions(neighbors[split.val], split.train, emb.shape[0]))


def _as_positions(prompts, subset, num_prompts: int):
  """``prompts`` (dataset rows) as positions in the sorted ``subset``, -1
  for those outside it."""
  position = jnp.full((num_prompts,), -1, jnp.int32).at[subset].set(
      jnp.arange(subset.shape[0], dtype=jnp.int32))
  return position[prompts]


def scored_test_prompts(mask, splits: Split) -> np.ndarray:
  """[T] how many test prompts each trial scores: those labelled for every
  one of its test LLMs (the others get weight 0, see the conventions
  above). Host arrays: ``mask`` [n, m], ``splits`` of T trials."""
  mask = np.asarray(mask, bool)
  return np.asarray([int(np.all(mask[np.ix_(prompts, models)], axis=1).sum())
                     for prompts, models in zip(np.asarray(splits.test),
                                                np.asarray(splits.test_models))],
                    np.int64)


def validation_area(gamma, trial: TrialData) -> Array:
  """[] Area of the training LLMs' curve on the validation prompts: how a
  hyper-parameter is chosen (App. F.1), never from the test LLMs."""
  return metrics.labelled_area(gamma, trial.val_train_loss,
                               trial.val_train_mask, trial.val_train_cost)


def test_curve(gamma, trial: TrialData) -> metrics.DeferralCurve:
  """The deferral curve of routing the test LLMs by ``gamma`` [n_test,
  m_test] on the test prompts (ranked by mean validation cost)."""
  return metrics.deferral_curve(
      gamma, trial.test_loss, trial.test_cost, weights=trial.test_weights,
      routing_cost=trial.test_route_cost)
