"""fit_router: a router for the pool one has, its map and K chosen on
held-out prompts, every LLM represented on the kept representatives."""

import jax
import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax import features, protocol
from uniroute_jax.fitting import MAPS, candidate_method, fit_router


@pytest.fixture(scope="module")
def data():
  return ur.make_synthetic(jax.random.key(0), num_prompts=400, num_models=4)


def test_a_given_map_and_k_fit_without_a_search(data):
  fitted = fit_router(jax.random.key(1), data, maps=("kmeans",), clusters=(5,),
                      prior_strength=None)
  router, report = fitted
  assert report.scores == {} and (report.map, report.num_clusters) == ("kmeans", 5)
  rep = router.representatives
  assert len(rep.ids) == report.num_representatives == 80
  assert report.num_train + report.num_representatives == data.num_prompts
  where = {str(p): i for i, p in enumerate(data.prompt_ids)}
  rows = np.array([where[i] for i in rep.ids])
  np.testing.assert_array_equal(np.asarray(rep.embeddings),
                                np.asarray(data.embeddings)[rows])
  # Psi: each LLM's mean loss per cluster on the representatives (a loop).
  cluster = np.asarray(rep.membership)
  loss, mask = np.asarray(data.loss)[rows], np.asarray(data.mask)[rows]
  psi = np.asarray(router.psi)
  for j in range(data.num_models):
    overall = loss[mask[:, j], j].mean()
    for c in range(5):
      labelled = (cluster == c) & mask[:, j]
      want = loss[labelled, j].mean() if labelled.any() else overall
      np.testing.assert_allclose(psi[c, j], want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(router.cost), np.asarray(data.cost),
                             rtol=1e-6)
  # The map was fitted on the other prompts: the centroids are k-means of
  # the training prompts, which no representative is among.
  assert not set(rep.ids) & {str(p) for p in np.delete(
      np.asarray(data.prompt_ids), rows)}
  # By default every LLM's Psi is its empirical-Bayes posterior mean, and the
  # router records that rule for the LLMs onboarded later.
  eb = fit_router(jax.random.key(1), data, maps=("kmeans",), clusters=(5,)).router
  assert eb.psi_prior == "empirical_bayes" and router.psi_prior is None
  np.testing.assert_array_equal(np.asarray(eb.representatives.membership), cluster)
  want = features.cluster_posterior(cluster, loss, num_clusters=5, mask=mask).mean
  np.testing.assert_allclose(np.asarray(eb.psi), want, rtol=1e-5)


def test_an_llm_onboarded_later_equals_one_fitted_from_the_start(data, tmp_path):
  full = fit_router(jax.random.key(2), data, maps=("kmeans",), clusters=(4,))
  without = fit_router(jax.random.key(2), data.select_models([0, 1, 2]),
                       maps=("kmeans",), clusters=(4,)).router
  where = {str(p): i for i, p in enumerate(data.prompt_ids)}
  rows = np.array([where[i] for i in without.representatives.ids])
  late = without.onboard(data.model_names[3], np.asarray(data.loss)[rows, 3:],
                         np.asarray(data.cost)[3:],
                         mask=np.asarray(data.mask)[rows, 3:])
  assert late.models == full.router.models
  np.testing.assert_array_equal(np.asarray(late.psi), np.asarray(full.router.psi))
  np.testing.assert_array_equal(np.asarray(late.counts),
                                np.asarray(full.router.counts))
  again = ur.Router.load(late.save(tmp_path / "late.npz"))
  np.testing.assert_array_equal(np.asarray(again.representatives.membership),
                                np.asarray(late.representatives.membership))


@pytest.mark.slow
def test_the_search_keeps_the_map_with_the_larger_held_out_area(data):
  key = jax.random.key(3)
  fitted = fit_router(key, data, clusters=(3, 6), num_trials=2)
  report = fitted.report
  assert set(report.scores) == {"kmeans", "learned"}
  best = max(report.scores, key=lambda k: report.scores[k].area)
  assert report.map == best
  assert report.num_clusters in report.scores[best].chosen_clusters.tolist()
  assert fitted.router.kind == {"kmeans": "kmeans", "learned": "learned_map"}[best]
  # The scores are the fixed-pool protocol's, trial for trial.
  choose_key, _ = jax.random.split(key)
  evaluation = protocol.evaluate(
      choose_key, data, num_trials=2, fixed_pool=True, val_frac=0.2,
      test_frac=0.2, methods=[candidate_method(k, (3, 6), "empirical_bayes")
                              for k in MAPS])
  for kind in MAPS:
    np.testing.assert_allclose(report.scores[kind].area_per_trial,
                               np.asarray(evaluation.methods[kind].trials.area))
    np.testing.assert_array_equal(report.scores[kind].chosen_clusters,
                                  np.asarray(evaluation.methods[kind].trials.chosen))
    summary = evaluation.methods[kind]
    np.testing.assert_allclose(report.scores[kind].area_estimation,
                               summary.area_estimation)
    np.testing.assert_allclose(report.scores[kind].area_approximation,
                               summary.area_approximation)


def test_fit_router_refuses_what_cannot_be_fitted(data):
  with pytest.raises(ValueError, match="map must be one of kmeans, learned"):
    fit_router(jax.random.key(0), data, maps=("tree",))
  for bad in ("auto", -1.0, True):
    with pytest.raises(ValueError, match="^prior_strength must be"):
      fit_router(jax.random.key(0), data, prior_strength=bad)
  sparse = data._replace(mask=np.asarray(data.mask).copy())
  sparse.mask[:, 2] = False
  sparse.mask[0, 2] = True
  with pytest.raises(ValueError, match="no label on the 80 representative"):
    fit_router(jax.random.key(0), sparse, maps=("kmeans",), clusters=(3,))


def test_an_undefined_held_out_area_is_an_error_not_a_choice(data):
  """Held-out prompts without every LLM's label leave the area undefined:
  fit_router says so, naming the share to raise, rather than choose on NaN."""
  rng = np.random.default_rng(0)
  mask = np.asarray(data.mask).copy()
  mask[:, 0] &= rng.random(data.num_prompts) < 0.3
  with pytest.raises(ValueError, match="leave the deferral area undefined.*"
                                       "raise holdout_frac"):
    fit_router(jax.random.key(4), data._replace(mask=mask), maps=("kmeans",),
               clusters=(3, 4), holdout_frac=0.003, num_trials=3)


def test_split_sizes_hold_out_prompts_only_for_a_choice():
  from uniroute_jax.fitting import split_sizes
  # A choice scores its candidates on held-out prompts: the protocol's split.
  assert split_sizes(400, 0.2, 0.2) == protocol.split_sizes(400, 0.2, 0.2)
  # One map and one K: every prompt but the representatives fits the map.
  assert split_sizes(400, 0.2, None) == (320, 80, 0)
  assert split_sizes(2, 0.2, None) == (1, 1, 0)
  with pytest.raises(ValueError, match="^1 prompt.* representative_frac 0.2$"):
    split_sizes(1, 0.2, None)
  with pytest.raises(ValueError, match="^representative_frac must lie in"):
    split_sizes(10, 1.0, None)


def test_one_map_and_one_k_need_no_held_out_prompts(data):
  """Two prompts cannot split three ways, but a fixed map and K hold
  nothing out: one fits the map, one represents every LLM."""
  tiny = data.select_prompts(np.arange(2))
  _, report = fit_router(jax.random.key(0), tiny, maps=("kmeans",),
                         clusters=(1,), holdout_frac=0.2)
  assert (report.num_train, report.num_representatives) == (1, 1)
  with pytest.raises(ValueError, match="^2 prompt.* too few to split"):
    fit_router(jax.random.key(0), tiny, maps=("kmeans", "learned"),
               clusters=(1,))
