"""Every trial's excess risk over the oracle and its split, in the protocol."""

import json

import jax
import numpy as np
import pytest

from uniroute_jax import make_synthetic, protocol, report


@pytest.fixture(scope="module")
def evaluation():
  data = make_synthetic(jax.random.key(3), num_prompts=300, num_models=7, dim=12)
  methods = (protocol.ZeroRouter(), protocol.KNN(neighbors=(5,)),
             protocol.KMeansRouter(clusters=(3, 5)),
             protocol.BUILT_IN["learned_map_linear"].replace(clusters=(3,)),
             protocol.Oracle())
  ev = protocol.evaluate(jax.random.key(4), data, num_trials=2, methods=methods,
                         curve_points=101)
  return data, ev


def test_zero_routers_excess_matches_a_numpy_loop(evaluation):
  """ZeroRouter at lambda sends every prompt to argmin (validation mean loss
  + lambda * relative cost); the oracle takes each prompt's best."""
  data, ev = evaluation
  loss, cost = np.asarray(data.loss, np.float64), np.asarray(data.cost, np.float64)
  mask = np.asarray(data.mask)
  assert cost.ndim == 1 and not np.all(mask)
  lambdas = ev.excess_lambdas
  zero = ev.methods["zero"].trials
  for t in range(2):
    models = np.asarray(ev.splits.test_models[t])
    val, test = np.asarray(ev.splits.val[t]), np.asarray(ev.splits.test[t])
    relative = cost[models] / cost[models].max()
    val_mask = mask[val][:, models]
    val_mean = (np.where(val_mask, loss[val][:, models], 0).sum(0)
                / val_mask.sum(0))
    # Test prompts missing a test LLM's label are left out.
    scored = np.all(mask[test][:, models], axis=1)
    test_loss = loss[test][scored][:, models]
    for i, lam in enumerate(lambdas):
      score = val_mean + lam * relative
      choice = min(range(len(models)), key=lambda j: (score[j], relative[j], j))
      risk = np.mean(test_loss[:, choice]) + lam * relative[choice]
      oracle = np.mean(np.min(test_loss + lam * relative, axis=1))
      best_constant = np.min(test_loss.mean(0) + lam * relative)
      np.testing.assert_allclose(zero.excess[t, i], risk - oracle, atol=1e-6)
      np.testing.assert_allclose(zero.approximation[t, i],
                                 best_constant - oracle, atol=1e-6)


def test_the_split_adds_up_and_has_the_signs_theory_gives(evaluation):
  _, ev = evaluation
  oracle = ev.methods["oracle"].trials
  np.testing.assert_array_equal(oracle.excess, 0.0)
  assert np.all(np.isnan(oracle.estimation))
  knn = ev.methods["knn"].trials
  assert np.all(np.isfinite(knn.excess)) and np.all(np.isnan(knn.estimation))
  for name in ("zero", "kmeans", "learned_map_linear"):
    r = ev.methods[name].trials
    np.testing.assert_allclose(r.estimation + r.approximation, r.excess,
                               atol=1e-6)
    assert np.all(r.approximation >= -1e-6)
    np.testing.assert_allclose(r.area_estimation + r.area_approximation,
                               oracle.area - r.area, atol=1e-6)
    assert np.all(r.excess >= -1e-6)
  # Hard clusters and per-LLM costs: Psi-star is the best any Psi can do.
  for name in ("zero", "kmeans"):
    assert np.all(ev.methods[name].trials.estimation >= -1e-6)
  s = ev.methods["kmeans"]
  np.testing.assert_allclose(s.excess, s.trials.excess.mean(0))
  np.testing.assert_allclose(s.area_estimation, s.trials.area_estimation.mean())


def test_json_carries_the_excess_per_trial_and_the_mean(evaluation):
  _, ev = evaluation
  doc = json.loads(json.dumps(report.to_dict(ev), allow_nan=False))
  assert len(doc["excess_lambdas"]) == len(protocol.EXCESS_LAMBDAS)
  for name in ("zero", "knn", "kmeans", "learned_map_linear", "oracle"):
    excess = doc["methods"][name]["excess_risk"]
    assert len(excess["mean"]) == len(doc["excess_lambdas"])
    assert np.asarray(excess["trials"]).shape == (2, len(doc["excess_lambdas"]))
  for name in ("zero", "kmeans", "learned_map_linear"):
    split = doc["methods"][name]["excess_decomposition"]
    assert len(split["trial_area_estimation"]) == 2
    np.testing.assert_allclose(
        np.add(split["estimation"], split["approximation"]),
        doc["methods"][name]["excess_risk"]["mean"], atol=1e-6)
  for name in ("knn", "oracle"):
    assert "excess_decomposition" not in doc["methods"][name]


def test_json_keeps_the_excess_of_a_method_undefined_in_one_trial(evaluation):
  """A trial without a value is null (and so is the mean over it); the
  other trials' values stay."""
  _, ev = evaluation
  nan_first = lambda a: np.concatenate([np.full_like(a[:1], np.nan), a[1:]])
  results = {name: s.trials for name, s in ev.methods.items()}
  t = results["kmeans"]
  t = results["kmeans"] = t._replace(**{f: nan_first(np.asarray(getattr(t, f)))
                                        for f in ("excess", "estimation",
                                                  "approximation",
                                                  "area_estimation",
                                                  "area_approximation")})
  summaries, best = protocol.summarise(
      results, [s.method for s in ev.methods.values()], alpha=ev.alpha)
  ev = ev._replace(methods=summaries, best=best)
  entry = json.loads(json.dumps(report.to_dict(ev), allow_nan=False)
                     )["methods"]["kmeans"]
  excess, split = entry["excess_risk"], entry["excess_decomposition"]
  assert excess["trials"][0] == [None] * len(protocol.EXCESS_LAMBDAS)
  np.testing.assert_allclose(excess["trials"][1], t.excess[1])
  assert excess["mean"] == [None] * len(protocol.EXCESS_LAMBDAS)
  assert split["trial_area_estimation"][0] is None
  assert split["trial_area_estimation"][1] == pytest.approx(
      float(t.area_estimation[1]))
  assert split["area_estimation"] is None


def test_lambdas_are_values_not_shapes_of_the_program():
  data = make_synthetic(jax.random.key(5), num_prompts=300, num_models=5, dim=8)
  one = protocol.evaluate(jax.random.key(0), data, num_trials=2,
                          methods=("zero", "oracle"), curve_points=51,
                          excess_lambdas=[0.0, 0.5, 2.0])
  np.testing.assert_array_equal(one.excess_lambdas, [0.0, 0.5, 2.0])
  assert one.methods["zero"].trials.excess.shape == (2, 3)
  # The trade-off is in relative-cost units: lambda 0 is quality alone.
  np.testing.assert_allclose(one.methods["zero"].trials.excess[:, 0],
                             one.methods["zero"].trials.approximation[:, 0]
                             + one.methods["zero"].trials.estimation[:, 0])


@pytest.mark.parametrize("value, match", [
    ([-1.0], "finite and non-negative"), ([np.nan], "finite and non-negative"),
    ([[0.1]], "a 1-d array"), (["a"], "a 1-d array of numbers")])
def test_bad_excess_lambdas_are_named(value, match):
  data = make_synthetic(jax.random.key(5), num_prompts=100, num_models=4, dim=4)
  with pytest.raises(ValueError, match="excess_lambdas must be " + match):
    protocol.evaluate(jax.random.key(0), data, num_trials=1, methods=("zero",),
                      excess_lambdas=value)


@pytest.mark.parametrize("chosen, expected", [
    ([214, 401], 401),              # the mean, 307, is no candidate
    ([10, 5], 10),
    ([3, 7, 5], 5),
    ([13, 13, 4, 24], 13),
    ([6], 6),
])
def test_median_choice_is_a_value_some_trial_chose(chosen, expected):
  got = report.median_choice(np.array(chosen, np.int32))
  assert got == expected and got in chosen
  # Against the definition: at least half the trials chose it or less, and
  # at least half it or more.
  c = np.array(chosen)
  assert np.sum(c <= got) >= len(c) / 2 and np.sum(c >= got) >= len(c) / 2
