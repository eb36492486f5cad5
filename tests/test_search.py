"""The hyper-parameter search: one traced step over candidates, in turn or
vectorised, with optional size classes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniroute_jax import make_synthetic, protocol
from uniroute_jax.protocol import search


def oracle_best(areas):
  """First index of the largest non-NaN area; 0 when every area is NaN."""
  scores = [(-np.inf if np.isnan(a) else a) for a in areas]
  return int(np.argmax(scores))


def synthetic_search(areas, together, sizes=None):
  """best_candidate over candidates 1..c whose areas are given; each
  candidate's gamma records its value and the size it ran in."""
  areas = jnp.asarray(areas, jnp.float32)
  candidates = jnp.arange(1, areas.shape[0] + 1, dtype=jnp.int32)

  def evaluate(value, index, size):
    gamma = jnp.stack([value.astype(jnp.float32),
                       jnp.float32(-1 if size is None else size)])
    return areas[index], gamma

  return jax.jit(lambda c: search.best_candidate(
      c, evaluate, (2,), jnp.float32, together=together, sizes=sizes))(candidates)


area_lists = st.lists(
    st.one_of(st.sampled_from([0.1, 0.2, 0.5, float("nan")]),
              st.floats(0, 1, width=32)), min_size=1, max_size=9)


@settings(max_examples=40, deadline=None)
@given(areas=area_lists, together=st.sampled_from([1, 2, 3, 16]))
def test_best_candidate_is_the_first_largest_area(areas, together):
  best = synthetic_search(areas, together)
  want = oracle_best(areas)
  assert int(best.index) == want and int(best.value) == want + 1
  np.testing.assert_array_equal(best.gamma, [want + 1, -1])
  np.testing.assert_array_equal(best.area, np.float32(areas[want]))


def test_each_candidate_runs_in_the_smallest_size_that_holds_it():
  sizes = search.size_classes(8, smallest=2)
  assert sizes == (2, 4, 8)
  for c in range(1, 9):
    # Only candidate c has a positive area: it wins, and says where it ran.
    areas = [1.0 if i == c - 1 else 0.0 for i in range(8)]
    best = synthetic_search(areas, 1, sizes)
    assert int(best.value) == c
    assert float(best.gamma[1]) == min(s for s in sizes if s >= c)


def test_size_classes():
  assert search.size_classes(24) == (6, 12, 24)
  assert search.size_classes(40) == (10, 20, 40)
  assert search.size_classes(40, 2) == (20, 40)
  assert search.size_classes(15) == (8, 15)
  assert search.size_classes(14) == (7, 14)
  assert search.size_classes(10) == (10,)
  assert search.size_classes(5, smallest=1) == (2, 3, 5)
  assert search.size_classes(3, 5, smallest=1) == (1, 2, 3)
  assert search.size_classes(24, 1) == (24,)
  with pytest.raises(ValueError, match="largest"):
    search.size_classes(0)


def test_vectorised_candidates_need_one_size():
  with pytest.raises(ValueError, match="together=1"):
    synthetic_search([0.1, 0.2], 2, (1, 2))


@pytest.fixture(scope="module")
def small():
  return make_synthetic(jax.random.key(5), num_prompts=500, num_models=6, dim=10)


@pytest.mark.slow
def test_size_classes_do_not_change_the_kmeans_router(small):
  """Small K fitted in small padded steps: the same choices and areas as
  every candidate padded to the largest."""
  splits = protocol.make_trials(jax.random.key(2), 2, small.num_prompts,
                                small.num_models)
  base = protocol.KMeansRouter(clusters=(2, 5, 12, 20), max_iter=30)
  assert search.size_classes(20) == (10, 20)
  # One name, so both runs draw the same keys.
  padded, classes = (protocol.run_trials(
      jax.random.key(3), small, splits, methods=(base.replace(size_classes=n),),
      curve_points=51)[0]["kmeans"] for n in (1, 3))
  np.testing.assert_array_equal(padded.chosen, classes.chosen)
  np.testing.assert_allclose(padded.area, classes.area, rtol=1e-6)


def test_vectorised_ranks_equal_ranks_in_turn(small):
  """Ranks trained side by side (vmapped) or one after the other: the same
  fits (in float64, where the rounding of the two programs is negligible)."""
  small = small._replace(
      embeddings=np.asarray(small.embeddings, np.float64),
      loss=np.asarray(small.loss, np.float64), cost=np.asarray(small.cost, np.float64))
  splits = protocol.make_trials(jax.random.key(4), 1, small.num_prompts,
                                small.num_models)
  base = protocol.MatrixFactorizationRouter(ranks=(2, 4), epochs=2)
  # One name, so both runs draw the same keys.
  in_turn, together = (protocol.run_trials(
      jax.random.key(5), small, splits, methods=(base.replace(together=t),),
      curve_points=51)[0]["matfac"] for t in (1, None))
  np.testing.assert_array_equal(in_turn.chosen, together.chosen)
  np.testing.assert_allclose(in_turn.area, together.area, rtol=1e-9)


def test_every_rank_is_fitted_from_the_trial_key(small):
  """The rank search fits every candidate from the method's one key (one
  initialisation with its first d units active, one mini-batch order), as a
  grid search with a fixed seed does: it equals a loop of separate
  ``fit_matrix_factorization`` calls with that key, the rank kept being the
  one with the largest clairvoyant validation area."""
  from uniroute_jax import metrics
  from uniroute_jax.baselines import clairvoyant
  from uniroute_jax.learn import CheckpointSelection
  from uniroute_jax.protocol.running import method_key
  splits = protocol.make_trials(jax.random.key(6), 2, small.num_prompts,
                                small.num_models)
  ranks = (2, 3, 5)
  method = protocol.MatrixFactorizationRouter(ranks=ranks, epochs=2)
  searched = protocol.run_trials(jax.random.key(7), small, splits,
                                 methods=(method,), curve_points=51)[0]["matfac"]
  arrays = protocol.dataset_arrays(small)
  for t in range(2):
    trial = protocol.gather_trial(arrays, protocol.Split(*(p[t] for p in splits)))
    key = method_key(jax.random.fold_in(jax.random.key(7), t), method)
    select = CheckpointSelection(trial.val_emb, trial.val_test_loss,
                                 trial.val_test_cost, trial.test_models,
                                 trial.val_test_mask)
    areas, tests = [], []
    for d in ranks:
      fit = clairvoyant.fit_matrix_factorization(
          key, trial.train_emb, trial.train_all_loss, rank=max(ranks),
          active_rank=d, mask=trial.train_all_mask, epochs=2, select=select)
      areas.append(float(fit.validation_area[fit.best_epoch]))
      gamma = clairvoyant.predict_loss(fit, trial.test_emb)[:, trial.test_models]
      tests.append(float(metrics.deferral_metrics(
          protocol.test_curve(gamma, trial)).area))
    best = oracle_best(areas)
    assert searched.chosen[t] == ranks[best]
    np.testing.assert_allclose(searched.area[t], tests[best], rtol=1e-5)
