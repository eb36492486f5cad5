"""The onboarding curve: Area against the prompts a new LLM is run on."""

import jax
import numpy as np
import pytest

from conftest import no_retrace
from test_metrics import numpy_area
from uniroute_jax import features, make_synthetic, protocol


@pytest.fixture(scope="module")
def data():
  return make_synthetic(jax.random.key(2), num_prompts=600, num_models=7, dim=8)


def test_orders_are_permutations_that_fill_clusters_in_proportion():
  rng = np.random.default_rng(0)
  k = 4
  clusters = np.repeat(np.arange(k), [40, 20, 10, 30]).astype(np.int32)
  rng.shuffle(clusters)
  spread = np.array([0.5, 0.1, 0.4, 0.2], np.float32)
  ranks = np.stack([np.asarray(features.labelling_ranks(
      jax.random.key(1), clusters, num_clusters=k, selection=name,
      spread=spread)) for name in features.SELECTIONS])
  n = clusters.size
  for row in ranks:
    np.testing.assert_array_equal(np.sort(row), np.arange(n))
  sizes = np.bincount(clusters, minlength=k)
  for s in (10, 25, 50):
    stratified = np.bincount(clusters[ranks[1] < s], minlength=k)
    assert np.all(np.abs(stratified - s * sizes / n) <= 1), (s, stratified)
    share = sizes * spread
    neyman = np.bincount(clusters[ranks[2] < s], minlength=k)
    want = np.minimum(s * share / share.sum(), sizes)
    # Allocation in proportion to share (no cluster is exhausted this early).
    assert np.all(np.abs(neyman - want) <= 1.5), (s, neyman, want)
  # Equal spreads make the Neyman order the stratified one.
  equal = np.asarray(features.labelling_ranks(
      jax.random.key(1), clusters, num_clusters=k, selection="neyman"))
  np.testing.assert_array_equal(equal, ranks[1])
  with pytest.raises(ValueError, match="selection must be one of"):
    features.labelling_ranks(jax.random.key(1), clusters, num_clusters=k,
                             selection="greedy")


def test_every_representative_gives_one_area_whatever_the_order(data):
  c = protocol.onboarding_curve(jax.random.key(0), data, num_trials=3,
                                sizes=(10, 40, None), clusters=(2, 4))
  assert c.area.shape == (3, 3, 3) and c.area_by_k.shape == (3, 2, 3, 3)
  np.testing.assert_array_equal(c.sizes, [10, 40, c.num_representatives])
  full = c.area[:, :, -1]
  np.testing.assert_allclose(full, full[:, :1].repeat(3, axis=1), rtol=1e-6)
  for t in range(3):
    i = list(c.clusters).index(c.chosen[t])
    np.testing.assert_array_equal(c.area[t], c.area_by_k[t, i])
  low, high = c.interval()
  assert np.all((low <= c.mean()) & (c.mean() <= high))


def test_one_cluster_with_every_prompt_is_the_prompt_blind_rule(data):
  """K = 1 and every representative: Psi is each test LLM's validation
  mean, the rule sends every prompt to argmin mean + lambda cost, and its
  Area is that of the lower hull of the test LLMs' own test points."""
  c = protocol.onboarding_curve(jax.random.key(3), data, num_trials=2,
                                sizes=(None,), clusters=(1,))
  splits = protocol.make_trials(jax.random.split(jax.random.key(3))[0], 2,
                                data.num_prompts, data.num_models)
  loss, mask, cost = (np.asarray(a, np.float64) for a in
                      (data.loss, data.mask, data.cost))
  for t in range(2):
    models, val, test = (np.asarray(splits.test_models[t]),
                         np.asarray(splits.val[t]), np.asarray(splits.test[t]))
    vm = mask[val][:, models]
    val_mean = (loss[val][:, models] * vm).sum(0) / vm.sum(0)
    scored = np.all(mask[test][:, models] > 0, axis=1)
    test_quality = 1 - loss[test][scored][:, models].mean(0)
    c_m = cost[models] / cost[models].max()
    breaks = sorted({0.0} | {(val_mean[a] - val_mean[b]) / (c_m[b] - c_m[a])
                             for a in range(len(models))
                             for b in range(len(models))
                             if c_m[b] > c_m[a] and val_mean[a] > val_mean[b]})
    probes = np.concatenate([[0.0], np.array(breaks[1:]) * 1.0001,
                             [1e9]]) if len(breaks) > 1 else np.array([0.0, 1e9])
    points = []
    for lam in probes:
      j = min(range(len(models)), key=lambda j: (val_mean[j] + lam * c_m[j],
                                                  c_m[j], j))
      points.append((c_m[j], test_quality[j]))
    np.testing.assert_allclose(c.area[t, 0, 0], numpy_area(points, 1.0),
                               atol=1e-4)


def test_sizes_and_priors_are_values_not_programs(data):
  kwargs = dict(num_trials=1, clusters=(2, 3), max_iter=10)
  protocol.onboarding_curve(jax.random.key(0), data, sizes=(10, 20), **kwargs)
  with no_retrace():
    protocol.onboarding_curve(jax.random.key(1), data, sizes=(15, 30),
                              prior_strength=2.0, **kwargs)
  eb = protocol.onboarding_curve(jax.random.key(1), data, sizes=(15, 30),
                                 prior_strength="empirical_bayes", **kwargs)
  assert np.all(np.isfinite(eb.area))


@pytest.mark.parametrize("kwargs, match", [
    (dict(sizes=()), "sizes must hold at least one size"),
    (dict(sizes=(0,)), "sizes must be a positive integer"),
    (dict(sizes=10), "sizes must be a sequence"),
    (dict(clusters=(10 ** 6,)), "clusters must be at most"),
    (dict(prior_strength=-1.0), "prior_strength must be non-negative"),
    (dict(prior_strength="auto"), "prior_strength must be a non-negative number"),
])
def test_bad_arguments_are_named(data, kwargs, match):
  with pytest.raises(ValueError, match=match):
    protocol.onboarding_curve(jax.random.key(0), data, num_trials=1, **kwargs)
