"""Synthetic data, trial splits and the batched evaluation protocol."""

import math

import jax
import numpy as np
import pytest

from uniroute_jax import RoutingData, make_synthetic, protocol


@pytest.fixture(scope="module")
def small():
  return make_synthetic(jax.random.key(3), num_prompts=700, num_models=7, dim=12)


def test_synthetic_is_seeded_and_valid():
  a = make_synthetic(jax.random.key(0), num_prompts=300, num_models=5, dim=8)
  b = make_synthetic(jax.random.key(0), num_prompts=300, num_models=5, dim=8)
  c = make_synthetic(jax.random.key(1), num_prompts=300, num_models=5, dim=8)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(a.loss, c.loss)
  assert a.embeddings.shape == (300, 8) and a.loss.shape == (300, 5)
  assert set(np.unique(a.loss)) <= {0.0, 1.0}
  assert 0.9 < a.mask.mean() < 1.0  # some labels missing, most present
  np.testing.assert_allclose(np.linalg.norm(a.embeddings, axis=1), 1.0, rtol=1e-5)


def test_synthetic_cost_rises_with_skill():
  data = make_synthetic(jax.random.key(2), num_prompts=4000, num_models=8)
  accuracy = 1 - (data.loss * data.mask).sum(0) / data.mask.sum(0)
  assert np.corrcoef(np.log(data.cost), accuracy)[0, 1] > 0.5


def test_trials_are_partitions_and_prefix_stable():
  splits = protocol.make_trials(jax.random.key(0), 5, 1000, 9)
  assert splits.train.shape == (5, 600) and splits.val.shape == (5, 100)
  assert splits.test.shape == (5, 300) and splits.test_models.shape == (5, 3)
  for t in range(5):
    prompts = np.concatenate([splits.train[t], splits.val[t], splits.test[t]])
    assert sorted(prompts.tolist()) == list(range(1000))
    models = np.concatenate([splits.train_models[t], splits.test_models[t]])
    assert sorted(models.tolist()) == list(range(9))
  assert not np.array_equal(splits.test_models[0], splits.test_models[1]) or \
      not np.array_equal(splits.test[0], splits.test[1])
  fewer = protocol.make_trials(jax.random.key(0), 2, 1000, 9)
  for a, b in zip(fewer, splits):
    np.testing.assert_array_equal(a, b[:2])
  one = protocol.make_split(jax.random.key(0), 1000, 9)
  np.testing.assert_array_equal(one.test, splits.test[0])


def settings_for(splits, **kw):
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  return protocol.Settings(
      cluster_grid=kw.get("clusters", protocol.default_cluster_grid(n_train, n_val)),
      neighbor_grid=kw.get("neighbors", protocol.default_neighbor_grid(n_train, n_val)),
      kmeans_max_iter=30, curve_points=101)


def test_batched_trials_equal_one_at_a_time(small):
  splits = protocol.make_trials(jax.random.key(1), 3, small.num_prompts,
                                small.num_models)
  settings = settings_for(splits, clusters=(3, 5), neighbors=(5, 9))
  batched, _ = protocol.run_trials(jax.random.key(2), small, splits,
                                   settings=settings, batch_size=3)
  single, _ = protocol.run_trials(jax.random.key(2), small, splits,
                                  settings=settings, batch_size=1)
  padded, _ = protocol.run_trials(jax.random.key(2), small, splits,
                                  settings=settings, batch_size=2)
  for name in protocol.DEFAULT_METHODS:
    for a, b, c in zip(batched[name], single[name], padded[name]):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7)


def test_test_llms_never_inform_selection_or_clustering(small):
  """K and k are chosen from training LLMs only, and k-means sees training
  prompts only: flipping every label of the test LLMs, and shuffling the
  test prompts' embeddings, leaves the chosen K and k alone (while the test
  scores do change)."""
  splits = protocol.make_trials(jax.random.key(4), 2, small.num_prompts,
                                small.num_models)
  settings = settings_for(splits, clusters=(3, 4, 6), neighbors=(5, 8, 13))
  for t in range(2):
    one = protocol.Split(*(part[t:t + 1] for part in splits))
    base, _ = protocol.run_trials(jax.random.key(5), small, one,
                                  settings=settings, methods=("knn", "kmeans"))
    loss = small.loss.copy()
    loss[:, one.test_models[0]] = 1 - loss[:, one.test_models[0]]
    emb = small.embeddings.copy()
    emb[one.test[0]] = emb[one.test[0]][::-1]
    changed = small._replace(loss=loss, embeddings=emb)
    out, _ = protocol.run_trials(jax.random.key(5), changed, one,
                                 settings=settings, methods=("knn", "kmeans"))
    for name in ("knn", "kmeans"):
      assert out[name].chosen[0] == base[name].chosen[0]
      assert out[name].area[0] != base[name].area[0]


def test_evaluate_is_seeded_and_orders_the_routers():
  data = make_synthetic(jax.random.key(0), num_prompts=3000, num_models=10)
  a = protocol.evaluate(jax.random.key(1), data, num_trials=4, curve_points=201)
  b = protocol.evaluate(jax.random.key(1), data, num_trials=4, curve_points=201)
  for name in protocol.DEFAULT_METHODS:
    np.testing.assert_array_equal(a.methods[name].trials.area,
                                  b.methods[name].trials.area)
  area = {name: s.area for name, s in a.methods.items()}
  assert area["zero"] < area["kmeans"] < area["oracle"]
  assert area["knn"] < area["oracle"]
  assert a.best in ("knn", "kmeans")
  # The mean curve's area is the mean of the per-trial areas (linearity);
  # the gridded curve agrees to within the grid's resolution.
  s = a.methods["kmeans"]
  np.testing.assert_allclose(s.area, np.trapezoid(s.quality, s.relative_cost), atol=2e-3)
  assert s.area_ci[0] < s.area < s.area_ci[1]


def test_oracle_dominates_every_router_in_every_trial(small):
  ev = protocol.evaluate(jax.random.key(7), small, num_trials=3, curve_points=101,
                         cluster_grid=(3,), neighbor_grid=(5,))
  oracle = ev.methods["oracle"].trials.area
  for name in ("zero", "knn", "kmeans"):
    assert np.all(ev.methods[name].trials.area <= oracle + 1e-6)


@pytest.mark.parametrize("wins, losses, expected", [
    (0, 10, 2 / 1024),                       # 2 * P[X <= 0], n = 10
    (1, 9, 2 * 11 / 1024),                   # 2 * (1 + 10) / 2**10
    (5, 5, 1.0),
    (3, 17, 2 * sum(math.comb(20, i) for i in range(4)) / 2 ** 20),
])
def test_sign_test_against_the_binomial(wins, losses, expected):
  a = np.array([1.0] * wins + [0.0] * losses + [0.5, 0.5])
  b = np.array([0.0] * wins + [1.0] * losses + [0.5, 0.5])
  out = protocol.sign_test(a, b)
  assert (out.wins, out.losses, out.ties) == (wins, losses, 2)
  np.testing.assert_allclose(out.p_value, expected, rtol=1e-12)


def test_sign_test_brute_force_enumeration():
  """p equals the probability, under fair coins, of a split at least as
  uneven as the observed one: counted over all 2**12 sign patterns."""
  import itertools
  n, wins = 12, 3
  extreme = sum(1 for signs in itertools.product((0, 1), repeat=n)
                if min(sum(signs), n - sum(signs)) <= wins)
  a = np.array([1.0] * wins + [0.0] * (n - wins))
  np.testing.assert_allclose(protocol.sign_test(a, 1 - a).p_value, extreme / 2 ** n)


def test_default_grids_follow_the_paper():
  assert protocol.default_cluster_grid(7219, 1203)[0] == 3
  assert protocol.default_cluster_grid(7219, 1203)[-1] == 1203 // 50
  assert protocol.default_neighbor_grid(7219, 1203)[0] == 5
  assert protocol.default_neighbor_grid(7219, 1203)[-1] == 1203 // 3
  assert max(protocol.default_neighbor_grid(1000, 40)) <= 40
  assert len(protocol.default_cluster_grid(10 ** 6, 10 ** 5)) <= 8


def test_routing_data_validation():
  good = make_synthetic(jax.random.key(0), num_prompts=20, num_models=3)
  with pytest.raises(ValueError, match=r"loss must lie in \[0.0, 1.0\]"):
    good._replace(loss=good.loss + 2).validate()
  with pytest.raises(ValueError, match="embeddings must be finite"):
    good._replace(embeddings=np.full_like(good.embeddings, np.nan)).validate()
  with pytest.raises(ValueError, match="cost must be non-negative"):
    good._replace(cost=-good.cost).validate()
  with pytest.raises(ValueError, match="embeddings and loss must agree"):
    good._replace(embeddings=good.embeddings[:5]).validate()
  with pytest.raises(ValueError, match="model_names must be unique"):
    good._replace(model_names=("a", "a", "b")).validate()
  sub = good.select_models([2, 0]).select_prompts(np.arange(20) < 10)
  assert sub.model_names == ("llm-02", "llm-00") and sub.num_prompts == 10
  assert isinstance(sub, RoutingData)


@pytest.mark.parametrize("kwargs, match", [
    (dict(val_frac=0.0), "val_frac must lie in"),
    (dict(val_frac=0.5, test_frac=0.5), "val_frac \\+ test_frac must be below 1"),
    (dict(test_model_frac=1.0), "test_model_frac must lie in"),
    (dict(num_trials=0), "num_trials must be a positive integer"),
])
def test_bad_split_arguments(kwargs, match):
  args = dict(num_trials=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    protocol.make_trials(jax.random.key(0), args.pop("num_trials"), 100, 6, **args)


def test_bad_evaluate_arguments(small):
  with pytest.raises(ValueError, match="methods must be among"):
    protocol.evaluate(jax.random.key(0), small, num_trials=1, methods=("nope",))
  with pytest.raises(ValueError, match="cluster_grid must be at most"):
    protocol.evaluate(jax.random.key(0), small, num_trials=1, cluster_grid=(10 ** 6,))
  with pytest.raises(ValueError, match="neighbor_grid must be at most"):
    protocol.evaluate(jax.random.key(0), small, num_trials=1, neighbor_grid=(10 ** 6,))


def test_matched_k_choice(small):
  """With as many validation as training prompts the matched choice is the
  paper's choice; otherwise it is a valid K from the grid."""
  splits = protocol.make_trials(jax.random.key(8), 2, small.num_prompts,
                                small.num_models, val_frac=0.4, test_frac=0.2)
  assert splits.val.shape[1] >= splits.train.shape[1]
  settings = settings_for(splits, clusters=(3, 5, 8), neighbors=(5,))
  arrays = tuple(jax.numpy.asarray(a) for a in
                 (small.embeddings, small.loss, small.mask, small.cost))
  trial = protocol.gather_trial(arrays, protocol.Split(*(p[0] for p in splits)))
  key = jax.random.key(9)
  paper = protocol.METHODS["kmeans"].run(trial, key, settings)
  matched = protocol.METHODS["kmeans_matched"].run(trial, key, settings)
  assert int(paper.chosen) == int(matched.chosen)
  np.testing.assert_array_equal(np.asarray(paper.curve.quality),
                                np.asarray(matched.curve.quality))
  # A method's results do not depend on the methods run beside it.
  both, _ = protocol.run_trials(key, small, splits, settings=settings,
                                methods=("kmeans", "kmeans_matched"))
  alone, _ = protocol.run_trials(key, small, splits, settings=settings,
                                 methods=("kmeans",))
  for a, b in zip(both["kmeans"], alone["kmeans"]):
    np.testing.assert_array_equal(a, b)
  splits = protocol.make_trials(jax.random.key(8), 2, small.num_prompts,
                                small.num_models)
  out, _ = protocol.run_trials(jax.random.key(9), small, splits, settings=settings,
                               methods=("kmeans_matched",))
  assert set(out["kmeans_matched"].chosen.tolist()) <= {3, 5, 8}


def test_learned_map_plugs_into_the_protocol(small):
  splits = protocol.make_trials(jax.random.key(10), 2, small.num_prompts,
                                small.num_models)
  settings = settings_for(splits, clusters=(3, 5), neighbors=(5,))
  out, _ = protocol.run_trials(jax.random.key(11), small, splits, settings=settings,
                               methods=("zero", "learned_map", "oracle"))
  lm = out["learned_map"]
  assert set(lm.chosen.tolist()) <= {3, 5}
  assert np.all((lm.area > 0) & (lm.area <= out["oracle"].area + 1e-6))


def test_learned_map_options_are_the_documented_fit(small):
  """With every option on (Psi of the training LLMs from validation labels,
  best epoch on the validation area, soft Psi for the test LLMs), the
  protocol's LearnedMap equals the fit assembled by hand from the split."""
  from uniroute_jax import cluster_map, clustering, features, metrics
  split = protocol.make_split(jax.random.key(15), small.num_prompts, small.num_models)
  options = protocol.LearnedMapOptions(hidden=(8,), epochs=3, batch_size=32,
                                       select_epoch=True, train_psi_from="val",
                                       soft_psi=True)
  settings = protocol.Settings(cluster_grid=(4,), neighbor_grid=(5,),
                               kmeans_max_iter=20, learned_map=options)
  arrays = tuple(jax.numpy.asarray(a) for a in
                 (small.embeddings, small.loss, small.mask, small.cost))
  trial = protocol.gather_trial(arrays, split)
  key = jax.random.key(16)
  out = protocol.METHODS["learned_map"].run(trial, key, settings)

  e, loss, mask, cost = small.embeddings, small.loss, small.mask, small.cost
  seen, unseen = split.train_models, split.test_models
  tr, val, test = split.train, split.val, split.test
  fit_key, map_key = jax.random.split(jax.random.fold_in(key, 0))
  centroids = clustering.kmeans(fit_key, e[tr], num_clusters=4, max_iter=20).centroids
  val_clusters = clustering.assign_clusters(e[val], centroids).cluster
  train_psi = features.cluster_errors(val_clusters, loss[val][:, seen],
                                      mask=mask[val][:, seen], num_clusters=4).psi
  select = cluster_map.CheckpointSelection(
      e[val], loss[val][:, seen], cost[seen], np.arange(len(seen)),
      mask[val][:, seen])
  fit = cluster_map.fit_cluster_map(
      map_key, e[tr], loss[tr][:, seen], train_psi, mask=mask[tr][:, seen],
      hidden=(8,), epochs=3, batch_size=32, select=select)
  assert int(fit.best_epoch) == int(np.argmax(fit.validation_area))
  test_psi = features.cluster_errors(
      cluster_map.apply_cluster_map(fit, e[val]), loss[val][:, unseen],
      mask=mask[val][:, unseen]).psi
  gamma = cluster_map.learned_map_predicted_loss(fit, e[test], test_psi)
  test_mask = mask[test][:, unseen]
  curve = metrics.deferral_curve(gamma, np.where(test_mask, loss[test][:, unseen], 0),
                                 cost[unseen], weights=test_mask.all(axis=1))
  assert int(out.chosen) == 4
  np.testing.assert_allclose(metrics.deferral_metrics(out.curve).area,
                             metrics.deferral_metrics(curve).area, rtol=1e-9)
  with pytest.raises(ValueError, match="train_psi_from must be"):
    protocol.LearnedMapOptions(train_psi_from="test")
  with pytest.raises(ValueError, match="learned_map must be a protocol.LearnedMapOptions"):
    protocol.evaluate(jax.random.key(0), small, num_trials=1, learned_map={})
