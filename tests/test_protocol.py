"""Synthetic data, trial splits and the batched evaluation protocol."""

import math

import chex
import jax
import numpy as np
import pytest

from conftest import no_retrace
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


def routers(clusters=None, neighbors=None, names=("zero", "knn", "kmeans", "oracle")):
  """Built-in routers with small grids and few Lloyd iterations."""
  out = []
  for name in names:
    method = protocol.BUILT_IN[name]
    if clusters is not None and hasattr(method, "clusters"):
      method = method.replace(clusters=clusters, max_iter=30)
    if neighbors is not None and hasattr(method, "neighbors"):
      method = method.replace(neighbors=neighbors)
    out.append(method)
  return tuple(out)


@pytest.mark.slow
def test_batched_trials_equal_one_at_a_time(small):
  """Batch size and vectorised or mapped trials change nothing."""
  splits = protocol.make_trials(jax.random.key(1), 3, small.num_prompts,
                                small.num_models)
  methods = routers(clusters=(3, 5), neighbors=(5, 9))
  kw = dict(methods=methods, curve_points=101)
  batched, _ = protocol.run_trials(jax.random.key(2), small, splits,
                                   batch_size=3, vectorize=3, **kw)
  single, _ = protocol.run_trials(jax.random.key(2), small, splits,
                                  batch_size=1, **kw)
  padded, _ = protocol.run_trials(jax.random.key(2), small, splits,
                                  batch_size=2, vectorize=1, **kw)
  # An excess is a difference of two risks of size up to 1 + lambda, so its
  # rounding is that of the risks: its tolerance scales with 1 + lambda.
  risk_scale = 1e-6 * (1.0 + protocol.EXCESS_LAMBDAS)
  for m in methods:
    for field in protocol.TrialMetrics._fields:
      a, b, c = (getattr(r[m.name], field) for r in (batched, single, padded))
      if field not in ("excess", "estimation", "approximation"):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=field)
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-7, err_msg=field)
        continue
      for other in (b, c):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(other))
        both = ~np.isnan(a)
        gap = np.abs(np.asarray(a, np.float64) - other)
        bound = np.broadcast_to(risk_scale, gap.shape) + 1e-6 * np.abs(other)
        assert np.all(gap[both] <= bound[both]), (field, float(gap[both].max()))


@pytest.mark.slow
def test_learned_map_trials_vectorised_or_in_turn_agree(small):
  """Trials vmapped (an accelerator's way) and trials in turn train the same
  maps: BatchNorm's statistics, the mini-batch orders and the checkpoint
  choice are each trial's own."""
  data = small._replace(embeddings=small.embeddings.astype(np.float64),
                        loss=small.loss.astype(np.float64),
                        cost=small.cost.astype(np.float64))
  splits = protocol.make_trials(jax.random.key(1), 2, data.num_prompts,
                                data.num_models)
  arrays = protocol.dataset_arrays(data)
  keys = jax.random.split(jax.random.key(2), 2)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  # The matrix factorisation's check runs under XLA's defaults
  # (test_xla_flags.py): under this suite's two flags together it differs.
  method = protocol.LearnedMapRouter(
      clusters=(3, 5), max_iter=10, epochs=2, hidden=(8,), batch_norm=True,
      select_epoch=True).resolve(n_train, n_val)

  def run(split, key):
    return method.run(protocol.gather_trial(arrays, split), key)

  vectorised = jax.jit(jax.vmap(run))(splits, keys)
  in_turn = jax.jit(lambda s, k: jax.lax.map(lambda a: run(*a), (s, k)))(
      splits, keys)
  np.testing.assert_array_equal(vectorised.chosen, in_turn.chosen)
  chex.assert_trees_all_close(vectorised, in_turn, rtol=1e-9, atol=1e-12)


def test_batches_from_two_threads_equal_one_thread(small):
  """Batches run from two host threads give the very numbers of one thread,
  and progress is still reported in order."""
  splits = protocol.make_trials(jax.random.key(1), 3, small.num_prompts,
                                small.num_models)
  kw = dict(methods=routers(clusters=(3, 5), neighbors=(5, 9)),
            curve_points=101, batch_size=1)
  seen = []
  two, pool_two = protocol.run_trials(
      jax.random.key(2), small, splits, workers=2,
      on_progress=lambda done, total: seen.append((done, total)), **kw)
  one, pool_one = protocol.run_trials(jax.random.key(2), small, splits,
                                      workers=1, **kw)
  assert seen == [(1, 3), (2, 3), (3, 3)]
  chex.assert_trees_all_equal(two, one)
  chex.assert_trees_all_equal(pool_two, pool_one)


@pytest.mark.slow
def test_grid_search_equals_a_loop_over_unpadded_candidates(small):
  """The traced search over K (candidates padded to their size class, one
  program) equals a Python loop over separate, unpadded k-means fits: the
  same K chosen on the training LLMs' validation area, the same test area.
  K-NN's search equals a run with only the chosen k."""
  from uniroute_jax import clustering, features, metrics, routing
  from uniroute_jax.protocol.running import method_key
  splits = protocol.make_trials(jax.random.key(12), 2, small.num_prompts,
                                small.num_models)
  grid = (3, 4, 17)   # size classes (9, 17): both used
  kmeans, knn = routers(clusters=grid, neighbors=(5, 8, 13),
                        names=("kmeans", "knn"))
  searched, _ = protocol.run_trials(jax.random.key(13), small, splits,
                                    curve_points=101, methods=(kmeans, knn))
  arrays = protocol.dataset_arrays(small)
  for t in range(2):
    split = protocol.Split(*(part[t] for part in splits))
    trial = protocol.gather_trial(arrays, split)
    key = method_key(jax.random.fold_in(jax.random.key(13), t), kmeans)
    areas, tests = [], []
    for i, k in enumerate(grid):
      fit = clustering.kmeans(jax.random.fold_in(key, i), trial.train_emb,
                              num_clusters=k, max_iter=30)
      val = clustering.assign_clusters(trial.val_emb, fit.centroids).cluster
      test = clustering.assign_clusters(trial.test_emb, fit.centroids).cluster
      train_psi = features.cluster_errors(fit.assignment, trial.train_loss,
                                          mask=trial.train_mask, num_clusters=k).psi
      test_psi = features.cluster_errors(val, trial.val_test_loss,
                                         mask=trial.val_test_mask,
                                         num_clusters=k).psi
      areas.append(float(metrics.labelled_area(
          routing.predicted_loss(val, train_psi), trial.val_train_loss,
          trial.val_train_mask, trial.val_train_cost)))
      tests.append(float(metrics.deferral_metrics(protocol.test_curve(
          routing.predicted_loss(test, test_psi), trial)).area))
    best = int(np.argmax(areas))
    assert searched["kmeans"].chosen[t] == grid[best]
    np.testing.assert_allclose(searched["kmeans"].area[t], tests[best], rtol=1e-6)
    one = protocol.Split(*(part[t:t + 1] for part in splits))
    alone, _ = protocol.run_trials(
        jax.random.key(13), small, one, curve_points=101,
        methods=(knn.replace(neighbors=(int(searched["knn"].chosen[t]),)),))
    np.testing.assert_allclose(alone["knn"].area[0], searched["knn"].area[t],
                               rtol=1e-6)


def test_search_compiles_one_step_whatever_the_grid(small):
  """The lowered program of a batch is the same size for 2 and 8 candidate
  K (and k): the search is a loop over candidates, not unrolled."""
  splits = protocol.make_trials(jax.random.key(1), 2, small.num_prompts,
                                small.num_models)
  arrays = protocol.dataset_arrays(small)
  keys = jax.random.split(jax.random.key(2), 2)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]

  def size(method):
    method = method.resolve(n_train, n_val)
    lowered = protocol.run_batch.lower(arrays, splits, keys, (method,),
                                       curve_points=11, vectorize=1)
    return len(lowered.as_text())

  kmeans = protocol.KMeansRouter(max_iter=5)
  assert size(kmeans.replace(clusters=(3, 9))) == size(
      kmeans.replace(clusters=(2, 3, 4, 5, 6, 7, 8, 9)))
  learned = protocol.LearnedMapRouter(max_iter=5, epochs=1, hidden=(4,))
  assert size(learned.replace(clusters=(3, 6))) == size(
      learned.replace(clusters=(2, 3, 4, 5, 6, 6, 6, 6)))
  knn = protocol.KNN()
  assert size(knn.replace(neighbors=(5, 30))) == size(
      knn.replace(neighbors=(5, 8, 11, 15, 19, 22, 26, 30)))


def test_hyperparameters_are_traced_not_recompiled(small):
  """New values of the candidates (same largest), the Psi shrinkage, the
  k-means tolerance and a learning rate reuse the compiled batch."""
  splits = protocol.make_trials(jax.random.key(1), 1, small.num_prompts,
                                small.num_models)
  base = (protocol.KMeansRouter(clusters=(3, 6), max_iter=10),
          protocol.LearnedMapRouter(clusters=(3, 6), max_iter=10, epochs=1,
                                    hidden=()))
  protocol.run_trials(jax.random.key(2), small, splits, methods=base,
                      curve_points=11)
  changed = (base[0].replace(clusters=(2, 6), prior_strength=2.0, tol=1e-2),
             base[1].replace(clusters=(4, 6), learning_rate=0.02,
                             prior_strength=1.0))
  with no_retrace():
    out, _ = protocol.run_trials(jax.random.key(2), small, splits,
                                 methods=changed, curve_points=11)
  assert out["kmeans"].chosen[0] in (2, 6)
  assert out["learned_map"].chosen[0] in (4, 6)


def test_posterior_quantiles_are_traced_and_change_the_routing(small):
  """Routing on a posterior quantile: a new quantile reuses the compiled
  batch and changes the routing; one cluster's empirical-Bayes mean is the
  LLM's overall error, as today's Psi is."""
  splits = protocol.make_trials(jax.random.key(5), 2, small.num_prompts,
                                small.num_models)
  run = lambda *methods: protocol.run_trials(
      jax.random.key(6), small, splits, methods=methods, curve_points=101)[0]
  q = protocol.KMeansRouter(name="q", clusters=(3, 5), max_iter=20,
                            empirical_bayes=True, psi_quantile=0.9)
  first = run(q)
  with no_retrace():
    again = run(q.replace(psi_quantile=0.6))
  assert not np.allclose(first["q"].area, again["q"].area)
  # At quantile 1 every LLM looks always wrong: ties go to the cheapest, and
  # the curve is that one LLM's point.
  out, pool = protocol.run_trials(jax.random.key(6), small, splits,
                                  methods=(q.replace(psi_quantile=1.0),),
                                  curve_points=101)
  models = np.asarray(splits.test_models)
  cheapest = np.argmin(np.asarray(small.cost)[models], axis=1)
  np.testing.assert_allclose(out["q"].area,
                             pool.quality[np.arange(2), cheapest], rtol=1e-6)
  plain = protocol.KMeansRouter(name="plain", clusters=(1,), max_iter=20)
  eb = plain.replace(name="eb", empirical_bayes=True)
  out = run(plain, eb)
  np.testing.assert_allclose(out["eb"].area, out["plain"].area, rtol=1e-6)


def test_methods_are_values_not_a_registry(small):
  """Two variants of a method run side by side under their own names, and
  a method's results do not depend on the others beside it."""
  splits = protocol.make_trials(jax.random.key(3), 2, small.num_prompts,
                                small.num_models)
  a = protocol.KMeansRouter(clusters=(3,), max_iter=20)
  b = a.replace(name="kmeans_shrunk", prior_strength=5.0)
  both, _ = protocol.run_trials(jax.random.key(4), small, splits, methods=(a, b),
                                curve_points=101)
  alone, _ = protocol.run_trials(jax.random.key(4), small, splits, methods=(a,),
                                 curve_points=101)
  np.testing.assert_array_equal(both["kmeans"].area, alone["kmeans"].area)
  assert not np.array_equal(both["kmeans"].area, both["kmeans_shrunk"].area)
  with pytest.raises(ValueError, match="distinct names"):
    protocol.run_trials(jax.random.key(4), small, splits, methods=(a, a))


def test_test_llms_never_inform_selection_or_clustering(small):
  """K and k are chosen from training LLMs only, and k-means sees training
  prompts only: flipping every label of the test LLMs, and shuffling the
  test prompts' embeddings, leaves the chosen K and k alone (while the test
  scores do change)."""
  splits = protocol.make_trials(jax.random.key(4), 2, small.num_prompts,
                                small.num_models)
  methods = routers(clusters=(3, 4, 6), neighbors=(5, 8, 13),
                    names=("knn", "kmeans"))
  for t in range(2):
    one = protocol.Split(*(part[t:t + 1] for part in splits))
    base, _ = protocol.run_trials(jax.random.key(5), small, one, methods=methods)
    loss = small.loss.copy()
    loss[:, one.test_models[0]] = 1 - loss[:, one.test_models[0]]
    emb = small.embeddings.copy()
    emb[one.test[0]] = emb[one.test[0]][::-1]
    changed = small._replace(loss=loss, embeddings=emb)
    out, _ = protocol.run_trials(jax.random.key(5), changed, one, methods=methods)
    for name in ("knn", "kmeans"):
      assert out[name].chosen[0] == base[name].chosen[0]
      assert out[name].area[0] != base[name].area[0]


@pytest.mark.slow
def test_evaluate_is_seeded_and_orders_the_routers():
  data = make_synthetic(jax.random.key(0), num_prompts=3000, num_models=10)
  a = protocol.evaluate(jax.random.key(1), data, num_trials=4, curve_points=201)
  b = protocol.evaluate(jax.random.key(1), data, num_trials=4, curve_points=201,
                        methods=[protocol.BUILT_IN[n] for n in protocol.DEFAULT_METHODS])
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
                         methods=routers(clusters=(3,), neighbors=(5,)))
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


@pytest.mark.parametrize("wins, losses", [(1100, 0), (530, 570), (0, 2000),
                                          (1000, 1000)])
def test_sign_test_over_a_thousand_pairs_against_scipy(wins, losses):
  """Above 1023 pairs 2.0 ** n overflows a float; the p-value stays exact."""
  from scipy import stats
  a = np.array([1.0] * wins + [0.0] * losses)
  out = protocol.sign_test(a, 1 - a)
  expected = stats.binomtest(min(wins, losses), wins + losses, 0.5).pvalue
  np.testing.assert_allclose(out.p_value, expected, rtol=1e-9, atol=1e-300)


def test_sign_test_counts_differences_within_the_tolerance_as_ties():
  a = np.array([0.5, 0.5 + 1e-7, 0.5 - 1e-7, 0.6, 0.4])
  b = np.full(5, 0.5)
  exact = protocol.sign_test(a, b)
  assert (exact.wins, exact.losses, exact.ties) == (2, 2, 1)
  tolerant = protocol.sign_test(a, b, tie_tolerance=1e-6)
  assert (tolerant.wins, tolerant.losses, tolerant.ties) == (1, 1, 3)
  with pytest.raises(ValueError, match="tie_tolerance"):
    protocol.sign_test(a, b, tie_tolerance=-1.0)


def test_one_cluster_and_zero_router_tie_in_every_trial(small):
  """K-means with K = 1 routes as ZeroRouter does (Prop. 9): their areas
  may differ by rounding, which the sign test against the best counts as
  ties, never as wins."""
  ev = protocol.evaluate(jax.random.key(2), small, num_trials=6,
                         methods=(protocol.ZeroRouter(),
                                  protocol.KMeansRouter(clusters=(1,))))
  zero, one = ev.methods["zero"].trials.area, ev.methods["kmeans"].trials.area
  np.testing.assert_allclose(zero, one, atol=1e-6)
  other = ev.methods["kmeans" if ev.best == "zero" else "zero"]
  assert (other.versus_best.wins, other.versus_best.losses) == (0, 0)
  assert other.versus_best.p_value == 1.0 and not other.significantly_worse


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


@pytest.mark.parametrize("method, match", [
    ("nope", "methods must be Method values or names among"),
    (protocol.KMeansRouter(clusters=(10 ** 6,)), "kmeans: clusters must be at most"),
    (protocol.KMeansRouter(clusters=()), "kmeans: clusters must hold at least one"),
    (protocol.KNN(neighbors=(10 ** 6,)), "knn: neighbors must be at most"),
    (protocol.KMeansRouter(prior_strength=-1.0), "kmeans: prior_strength must be non-negative"),
    (protocol.KMeansRouter(tol=np.nan), "kmeans: tol must be finite"),
    (protocol.KMeansRouter(psi_quantile=1.5, empirical_bayes=True),
     "kmeans: psi_quantile must lie in"),
    (protocol.KMeansRouter(psi_quantile=-0.1, empirical_bayes=True),
     "kmeans: psi_quantile must be non-negative"),
    (protocol.KMeansRouter(psi_quantile=0.9), "kmeans: psi_quantile needs a prior"),
    (protocol.KMeansRouter(empirical_bayes=True, prior_strength=5.0),
     "kmeans: empirical_bayes chooses the prior strength itself"),
    (protocol.MLPRouter(learning_rate=0.0), "mlp: learning_rate must be positive"),
])
def test_bad_evaluate_arguments(small, method, match):
  """Every method is resolved and checked on the host before any work."""
  with pytest.raises(ValueError, match=match):
    protocol.evaluate(jax.random.key(0), small, num_trials=1, methods=(method,))


def test_an_llm_without_labels_is_refused_before_any_trial(small):
  """Its areas would all be NaN: the protocol names it instead."""
  mask = np.asarray(small.mask).copy()
  mask[:, 1] = False
  unlabelled = small._replace(mask=mask)
  name = small.model_names[1]
  with pytest.raises(ValueError, match=rf"^mask: LLM '{name}' has no label at "
                     r"all; label some of its prompts or leave it out"):
    protocol.evaluate(jax.random.key(0), unlabelled, num_trials=1,
                      methods=("zero",))
  with pytest.raises(ValueError, match=rf"LLM '{name}' has no label at all"):
    protocol.onboarding_curve(jax.random.key(0), unlabelled, num_trials=1)
  mask[:, 2] = False
  with pytest.raises(ValueError, match=r"no label at all \(nor have 1 other"):
    unlabelled._replace(mask=mask).validate(labelled_models=True)
  unlabelled.validate()   # valid data: the loaders accept it


@pytest.mark.slow
def test_matched_k_choice(small):
  """With as many validation as training prompts the matched choice is the
  paper's choice; otherwise it is a valid K from the grid."""
  splits = protocol.make_trials(jax.random.key(8), 2, small.num_prompts,
                                small.num_models, val_frac=0.4, test_frac=0.2)
  assert splits.val.shape[1] >= splits.train.shape[1]
  kmeans, matched = routers(clusters=(3, 5, 8),
                            names=("kmeans", "kmeans_matched"))
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  kmeans, matched = kmeans.resolve(n_train, n_val), matched.resolve(n_train, n_val)
  arrays = protocol.dataset_arrays(small)
  trial = protocol.gather_trial(arrays, protocol.Split(*(p[0] for p in splits)))
  key = jax.random.key(9)
  paper, same = (jax.jit(m.run)(trial, key) for m in (kmeans, matched))
  assert int(paper.chosen) == int(same.chosen)
  np.testing.assert_array_equal(np.asarray(paper.curve.quality),
                                np.asarray(same.curve.quality))
  # A method's results do not depend on the methods run beside it.
  both, _ = protocol.run_trials(key, small, splits, methods=(kmeans, matched))
  alone, _ = protocol.run_trials(key, small, splits, methods=(kmeans,))
  for a, b in zip(both["kmeans"], alone["kmeans"]):
    np.testing.assert_array_equal(a, b)
  splits = protocol.make_trials(jax.random.key(8), 2, small.num_prompts,
                                small.num_models)
  out, _ = protocol.run_trials(jax.random.key(9), small, splits,
                               methods=(matched,))
  assert set(out["kmeans_matched"].chosen.tolist()) <= {3, 5, 8}


def test_learned_map_plugs_into_the_protocol(small):
  splits = protocol.make_trials(jax.random.key(10), 2, small.num_prompts,
                                small.num_models)
  out, _ = protocol.run_trials(
      jax.random.key(11), small, splits,
      methods=routers(clusters=(3, 5), names=("zero", "learned_map", "oracle")))
  lm = out["learned_map"]
  assert set(lm.chosen.tolist()) <= {3, 5}
  assert np.all((lm.area > 0) & (lm.area <= out["oracle"].area + 1e-6))


@pytest.mark.slow
def test_learned_map_options_are_the_documented_fit(small):
  """With every option on (Psi of the training LLMs from validation labels,
  best epoch on the validation area, soft Psi for the test LLMs), the
  protocol's LearnedMap equals the fit assembled by hand from the split."""
  from uniroute_jax import cluster_map, clustering, features, learn, metrics
  split = protocol.make_split(jax.random.key(15), small.num_prompts, small.num_models)
  method = protocol.LearnedMapRouter(
      clusters=(4,), max_iter=20, hidden=(8,), epochs=3, batch_size=32,
      select_epoch=True, train_psi_from="val", soft_psi=True)
  method = method.resolve(split.train.shape[0], split.val.shape[0])
  arrays = protocol.dataset_arrays(small)
  trial = protocol.gather_trial(arrays, split)
  key = jax.random.key(16)
  out = method.run(trial, key)

  e, loss, mask, cost = small.embeddings, small.loss, small.mask, small.cost
  seen, unseen = split.train_models, split.test_models
  tr, val, test = split.train, split.val, split.test
  # Each candidate's k-means has a key of its own; the maps share one.
  kmeans_key, map_key = jax.random.split(key)
  centroids = clustering.kmeans(jax.random.fold_in(kmeans_key, 0), e[tr],
                                num_clusters=4, max_iter=20).centroids
  val_clusters = clustering.assign_clusters(e[val], centroids).cluster
  train_psi = features.cluster_errors(val_clusters, loss[val][:, seen],
                                      mask=mask[val][:, seen], num_clusters=4).psi
  select = learn.CheckpointSelection(
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
    protocol.LearnedMapRouter(train_psi_from="test")


def test_fixed_pool_trials_route_among_every_llm():
  splits = protocol.make_trials(jax.random.key(0), 3, 50, 4, fixed_pool=True)
  for t in range(3):
    np.testing.assert_array_equal(splits.test_models[t], np.arange(4))
    np.testing.assert_array_equal(splits.train_models[t], np.arange(4))
    prompts = np.concatenate([splits.train[t], splits.val[t], splits.test[t]])
    np.testing.assert_array_equal(np.sort(prompts), np.arange(50))
  with pytest.raises(ValueError, match="too few to route between"):
    protocol.make_trials(jax.random.key(0), 1, 50, 1, fixed_pool=True)
  data = make_synthetic(jax.random.key(1), num_prompts=300, num_models=2)
  evaluation = protocol.evaluate(jax.random.key(2), data, num_trials=2,
                           fixed_pool=True, methods=["zero", "oracle"])
  assert evaluation.pool.quality.shape == (2, 2)
  # The oracle picks, per test prompt, the best of both LLMs.
  assert evaluation.methods["oracle"].area >= evaluation.methods["zero"].area


def test_scored_test_prompts_are_the_trials_nonzero_test_weights(small):
  """Against the trial data the routers are scored with: the prompts of
  weight 1 (every test LLM labelled)."""
  splits = protocol.make_trials(jax.random.key(4), 3, small.num_prompts,
                                small.num_models)
  scored = protocol.scored_test_prompts(np.asarray(small.mask), splits)
  arrays = protocol.dataset_arrays(small)
  for t in range(3):
    trial = protocol.gather_trial(arrays, protocol.Split(*(p[t] for p in splits)))
    assert scored[t] == int(np.sum(np.asarray(trial.test_weights) > 0))
  assert np.all(scored < splits.test.shape[1])   # some labels are missing


def test_onboarding_intervals_stay_in_the_unit_interval():
  area = np.array([[[0.0, 0.9]], [[0.25, 1.0]], [[0.0, 0.95]]])   # [T, O, S]
  curve = protocol.OnboardingCurve(
      sizes=np.array([10, 20]), selections=("random",), clusters=np.array([3]),
      area=area, area_by_k=area[:, None], chosen=np.array([3, 3, 3]),
      num_representatives=20)
  low, high = curve.interval()
  mean = area.mean(axis=0)
  half = 1.96 * area.std(axis=0, ddof=1) / np.sqrt(3)
  assert np.any(mean - half < 0) and np.any(mean + half > 1)
  np.testing.assert_allclose(low, np.maximum(mean - half, 0.0))
  np.testing.assert_allclose(high, np.minimum(mean + half, 1.0))


def test_knn_from_shared_lists_equals_ranking_in_each_trial(small):
  """K-NN's search from neighbour lists found once for the dataset gives
  each trial's search over its own training prompts, and so does a trial
  whose lists are too short for the largest k (it ranks its own)."""
  splits = protocol.make_trials(jax.random.key(3), 2, small.num_prompts,
                                small.num_models)
  keys = jax.random.split(jax.random.key(4), 2)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  knn = protocol.KNN(neighbors=(5, 8, 13, 40)).resolve(n_train, n_val)
  length = knn.neighbor_list_length(small.num_prompts, n_train)
  assert 40 < length <= small.num_prompts
  assert knn.replace(shared_lists=False).neighbor_list_length(
      small.num_prompts, n_train) == 0
  assert protocol.ZeroRouter().neighbor_list_length(small.num_prompts,
                                                    n_train) == 0

  def run(method, arrays):
    out = protocol.run_batch(arrays, splits, keys, (method,), curve_points=101,
                             vectorize=1)["knn"]
    return np.asarray(out.area), np.asarray(out.chosen)

  shared = knn.replace(shared_lists=True)
  assert shared.neighbor_list_length(small.num_prompts, n_train) == length
  own = run(knn.replace(shared_lists=False), protocol.dataset_arrays(small))
  for list_length in (length, 16):
    listed = run(shared, protocol.dataset_arrays(
        small, neighbor_list_length=list_length))
    np.testing.assert_array_equal(listed[1], own[1])
    np.testing.assert_allclose(listed[0], own[0], rtol=1e-12)
  # As run_trials finds them: the validation prompts' lists, zeros elsewhere.
  only_val = np.asarray(protocol.dataset_arrays(
      small, neighbor_list_length=length, neighbor_rows=splits.val).neighbors)
  every = np.asarray(protocol.dataset_arrays(
      small, neighbor_list_length=length).neighbors)
  val = np.unique(splits.val)
  np.testing.assert_array_equal(only_val[val], every[val])
  assert not np.any(np.delete(only_val, val, axis=0))
  # Lists of every prompt, farthest first: complete, so read (the results
  # change), except by a method told not to share them.
  full = protocol.dataset_arrays(small, neighbor_list_length=small.num_prompts)
  wrong = full._replace(neighbors=full.neighbors[:, ::-1])
  assert not np.allclose(run(shared, wrong)[0], own[0])
  ignoring = run(knn.replace(shared_lists=False), wrong)
  np.testing.assert_array_equal(ignoring[1], own[1])
  np.testing.assert_allclose(ignoring[0], own[0], rtol=1e-12)
  # The short lists really were short: their trials took the fallback.
  arrays = protocol.dataset_arrays(small, neighbor_list_length=16)
  trial = protocol.gather_trial(arrays, protocol.Split(*(p[0] for p in splits)))
  assert trial.val_train_neighbors.shape == (n_val, 16)
  assert np.any(np.sum(np.asarray(trial.val_train_neighbors) >= 0, axis=1) < 40)
  # Each entry is the listed prompt's place among the training prompts.
  listed = np.asarray(trial.val_train_neighbors)
  dataset_lists = np.asarray(arrays.neighbors)[np.asarray(splits.val[0])]
  train = np.asarray(splits.train[0])
  np.testing.assert_array_equal(listed >= 0, np.isin(dataset_lists, train))
  np.testing.assert_array_equal(train[listed[listed >= 0]],
                                dataset_lists[listed >= 0])
  assert protocol.gather_trial(protocol.dataset_arrays(small), protocol.Split(
      *(p[0] for p in splits))).val_train_neighbors is None
