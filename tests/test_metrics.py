"""Deferral curves and metrics against hand-computed cases and brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import no_retrace
from uniroute_jax import (checked, choose_models, curve_from_points,
                          deferral_curve, deferral_metrics, upper_envelope)
from uniroute_jax import metrics


def two_llm_problem():
  """Cheap LLM: cost 1, wrong on prompts 0-4. Dear LLM: cost 2, wrong on 0."""
  loss = np.zeros((10, 2))
  loss[:5, 0] = 1.0
  loss[:1, 1] = 1.0
  return loss, np.array([1.0, 2.0])


def test_prompt_blind_router_hand_computed(dtype, mode):
  loss, cost = two_llm_problem()
  gamma = np.broadcast_to(loss.mean(0), loss.shape)
  curve = deferral_curve(gamma.astype(dtype), loss.astype(dtype), cost.astype(dtype))
  m = deferral_metrics(curve)
  # Points (0.5, 0.5) and (1, 0.9) in (relative cost, quality):
  # Area = 0.5 * 0.5 + 0.5 * (0.5 + 0.9) / 2 = 0.6; Area(50%) = 0.25.
  np.testing.assert_allclose(float(m.area), 0.6, rtol=1e-6)
  np.testing.assert_allclose(float(m.area50), 0.25, rtol=1e-6)
  np.testing.assert_allclose(float(m.qnc), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(m.peak_quality), 0.9, rtol=1e-6)
  assert m.area.dtype == dtype


def test_oracle_hand_computed(mode):
  loss, cost = two_llm_problem()
  curve = deferral_curve(loss, loss, cost)
  valid = np.asarray(curve.valid)
  # lambda = 0: prompts 1-4 need the dear LLM (cost 1.4, quality 0.9);
  # large lambda: everything to the cheap one (cost 1, quality 0.5).
  np.testing.assert_allclose(np.sort(np.asarray(curve.cost)[valid]), [1.0, 1.4])
  m = deferral_metrics(curve)
  # Envelope (0.5, .5) -> (0.7, .9): area = .25 + .2 * .7 + .3 * .9 = .66.
  np.testing.assert_allclose(float(m.area), 0.66, rtol=1e-12)
  np.testing.assert_allclose(float(m.area50), 0.25, rtol=1e-12)
  np.testing.assert_allclose(float(m.qnc), 0.7, rtol=1e-12)


def test_qnc_is_infinite_when_never_reached():
  # The router prefers the cheap LLM everywhere, so its curve is one point
  # of quality .5 while the best single LLM has .9.
  loss, cost = two_llm_problem()
  gamma = np.tile([0.0, 1.0], (10, 1))
  m = deferral_metrics(deferral_curve(gamma, loss, cost))
  assert np.isinf(float(m.qnc))
  np.testing.assert_allclose(float(m.area), 0.5, rtol=1e-12)
  np.testing.assert_allclose(float(m.peak_quality), 0.5, rtol=1e-12)


def test_qnc_zero_when_cheapest_point_reaches_the_best():
  loss = np.array([[0.0, 1.0], [0.0, 0.0]])
  m = deferral_metrics(deferral_curve(loss, loss, np.array([1.0, 2.0])))
  assert float(m.qnc) == 0.0
  np.testing.assert_allclose(float(m.area), 1.0)


def test_envelope_drops_dominated_points():
  curve = curve_from_points(np.array([1.0, 2.0, 3.0, 4.0]),
                            np.array([0.5, 0.4, 0.8, 0.7]),
                            max_cost=4.0, best_quality=0.8)
  env = upper_envelope(curve)
  pts = sorted(set(zip(np.asarray(env.relative_cost), np.asarray(env.quality))))
  np.testing.assert_allclose(pts, [(0.25, 0.5), (0.75, 0.8)])
  m = deferral_metrics(curve)
  # .25 * .5 + .5 * (.5 + .8) / 2 + .25 * .8
  np.testing.assert_allclose(float(m.area), 0.125 + 0.325 + 0.2)
  np.testing.assert_allclose(float(m.area50), 0.125 + 0.25 * (0.5 + 0.65) / 2)


def numpy_area(points, upper):
  """Independent oracle: Pareto staircase, np.interp on a fine grid."""
  points = sorted(points, key=lambda p: (p[0], -p[1]))
  xs, ys, best = [], [], -np.inf
  for x, y in points:
    if y > best:
      xs.append(x)
      ys.append(y)
      best = y
  grid = np.linspace(0.0, upper, 200_001)
  return np.trapezoid(np.interp(grid, xs, ys), grid)


def break_even_lambdas(gamma, cost, pool):
  """0 and every positive lambda at which two available LLMs tie on a
  prompt, ascending."""
  n, m = gamma.shape
  cost = np.broadcast_to(cost, gamma.shape)
  breaks = {0.0}
  for i in range(n):
    for a, b in itertools.combinations(np.flatnonzero(pool), 2):
      if cost[i, a] != cost[i, b]:
        lam = (gamma[i, a] - gamma[i, b]) / (cost[i, b] - cost[i, a])
        if lam > 0:
          breaks.add(lam)
  return np.array(sorted(breaks))


def brute_force_curve(gamma, truth, cost, pool, weights):
  """Route at 0, every midpoint between break-evens, and beyond the last."""
  n, m = gamma.shape
  cost = np.broadcast_to(cost, gamma.shape)
  breaks = break_even_lambdas(gamma, cost, pool)
  probes = np.concatenate([[0.0], (breaks[1:] + breaks[:-1]) / 2,
                           [breaks[-1] * 2 + 1]])
  choice = np.asarray(choose_models(gamma, cost, probes, pool_mask=pool))
  rows = np.arange(n)
  w = weights / weights.sum()
  return [(float((w * cost[rows, c]).sum()), float(1 - (w * truth[rows, c]).sum()))
          for c in choice]


@pytest.mark.parametrize("per_prompt_cost", [False, True])
def test_curve_matches_brute_force_sweep(dtype, per_prompt_cost):
  rng = np.random.default_rng(0)
  n, m = 25, 6
  gamma = rng.random((n, m))
  truth = (rng.random((n, m)) < 0.4).astype(float)
  cost = rng.uniform(0.1, 1.0, size=(n, m) if per_prompt_cost else m)
  pool = np.array([1, 0, 1, 1, 1, 1], bool)
  weights = rng.integers(0, 3, size=n).astype(float)
  curve = deferral_curve(gamma.astype(dtype), truth.astype(dtype), cost.astype(dtype),
                         pool_mask=pool, weights=weights.astype(dtype))
  valid = np.asarray(curve.valid)
  ours = np.stack([np.asarray(curve.cost)[valid], np.asarray(curve.quality)[valid]], 1)
  brute = np.array(brute_force_curve(gamma, truth, cost, pool, weights))
  tol = 1e-5 if dtype == np.float32 else 1e-12
  # Same set of points (the sweep may visit a routing more than once).
  for p in brute:
    assert np.min(np.abs(ours - p).max(1)) < tol
  for p in ours:
    assert np.min(np.abs(brute - p).max(1)) < tol
  m_ = deferral_metrics(curve)
  max_cost = float(np.max((np.broadcast_to(cost, (n, m)) * weights[:, None]).sum(0)[pool]
                          / weights.sum()))
  rel = [(c / max_cost, q) for c, q in brute]
  np.testing.assert_allclose(float(m_.area), numpy_area(rel, 1.0), atol=2e-5)
  np.testing.assert_allclose(float(m_.area50), numpy_area(rel, 0.5), atol=2e-5)


def test_metrics_invariances():
  rng = np.random.default_rng(1)
  gamma, truth = rng.random((30, 5)), (rng.random((30, 5)) < 0.5).astype(float)
  cost = rng.uniform(0.1, 1, size=5)
  base = deferral_metrics(deferral_curve(gamma, truth, cost))
  perm = rng.permutation(30)
  permuted = deferral_metrics(deferral_curve(gamma[perm], truth[perm], cost))
  scaled = deferral_metrics(deferral_curve(gamma, truth, 7.0 * cost))
  llm_perm = rng.permutation(5)
  relabelled = deferral_metrics(deferral_curve(gamma[:, llm_perm], truth[:, llm_perm],
                                               cost[llm_perm]))
  for other in (permuted, scaled, relabelled):
    for a, b in zip(base, other):
      np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def test_zero_weight_prompts_are_left_out():
  rng = np.random.default_rng(2)
  gamma, truth = rng.random((20, 4)), (rng.random((20, 4)) < 0.5).astype(float)
  cost = rng.uniform(0.1, 1, size=4)
  w = np.ones(20)
  w[15:] = 0
  truth_nan = truth.copy()
  truth_nan[15:] = np.nan  # unknown labels of left-out prompts must not leak
  a = deferral_metrics(deferral_curve(gamma, truth_nan, cost, weights=w))
  b = deferral_metrics(deferral_curve(gamma[:15], truth[:15], cost))
  for x, y in zip(a, b):
    np.testing.assert_allclose(float(x), float(y), rtol=1e-12)


def test_jit_vmap_over_trials_equals_loop():
  rng = np.random.default_rng(3)
  gammas = rng.random((4, 12, 3))
  truths = (rng.random((4, 12, 3)) < 0.5).astype(float)
  cost = jnp.array([0.2, 0.5, 1.0])
  pool = jnp.ones(3, bool)
  w = jnp.ones(12)
  batched = jax.jit(jax.vmap(lambda g, t: deferral_metrics(
      deferral_curve(g, t, cost, pool_mask=pool, weights=w))))(gammas, truths)
  for b in range(4):
    single = deferral_metrics(deferral_curve(gammas[b], truths[b], cost))
    for x, y in zip(batched, single):
      np.testing.assert_allclose(float(x[b]), float(y), rtol=1e-12)


def test_no_retrace_when_values_change():
  rng = np.random.default_rng(4)
  gamma, truth = rng.random((10, 3)), (rng.random((10, 3)) < 0.5).astype(float)
  deferral_curve(gamma, truth, np.array([0.1, 0.2, 0.3]),
                 pool_mask=np.array([1, 1, 1], bool), weights=np.ones(10))
  with no_retrace():
    deferral_curve(1 - gamma, 1 - truth, np.array([0.5, 0.2, 0.9]),
                   pool_mask=np.array([1, 0, 1], bool), weights=np.arange(10.0))


@pytest.mark.parametrize("bad, match", [
    (dict(true_loss=np.zeros((4, 2))), "true_loss must have shape"),
    (dict(cost=np.ones(4)), r"cost must have shape \[3\] or \[4, 3\]"),
    (dict(predicted_loss=np.zeros((4, 0)), true_loss=np.zeros((4, 0)),
          cost=np.zeros(0)), "at least one LLM"),
    (dict(weights=np.ones((4, 1))), "weights must be a numeric 1-d array"),
    (dict(pool_mask=np.ones(2, bool)), r"pool_mask must have shape \(3,\)"),
])
def test_bad_input(bad, match):
  args = dict(predicted_loss=np.full((4, 3), 0.5), true_loss=np.zeros((4, 3)),
              cost=np.ones(3))
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    deferral_curve(args.pop("predicted_loss"), args.pop("true_loss"),
                   args.pop("cost"), **args)


@pytest.mark.parametrize("bad, match", [
    (dict(true_loss=np.full((4, 3), 2.0)), r"true_loss must lie in \[0, 1\]"),
    (dict(cost=-np.ones(3)), "cost must be finite and non-negative"),
    (dict(predicted_loss=np.full((4, 3), np.nan)), "predicted_loss must be finite"),
    (dict(weights=np.zeros(4)), "weights must be non-negative with a positive"),
])
def test_bad_values_are_caught_under_checkify(bad, match):
  args = dict(predicted_loss=np.full((4, 3), 0.5), true_loss=np.zeros((4, 3)),
              cost=np.ones(3))
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    checked(deferral_curve)(args.pop("predicted_loss"), args.pop("true_loss"),
                            args.pop("cost"), **args)


def test_checked_wraps_a_transformed_function_not_one_inside_it():
  loss, cost = jnp.array([[0.0, 2.0]]), jnp.array([1.0, 2.0])
  with pytest.raises(ValueError, match=r"checked\(deferral_curve\) raises on "
                     r"the host.*checked\(jax.jit\(f\)\)"):
    jax.jit(lambda l: checked(deferral_curve)(l, l, cost))(loss)
  for transformed in (jax.jit(lambda l: deferral_curve(l, l, cost)),
                      lambda l: jax.vmap(lambda r: deferral_curve(
                          r, r, cost))(l[None])):
    with pytest.raises(ValueError, match="true_loss must lie in"):
      checked(transformed)(loss)


def test_a_free_pool_has_relative_cost_zero():
  """Every LLM free: relative cost 0 everywhere, Area = peak quality, QNC 0
  when the best single LLM is reached; a free LLM beside paid ones is a
  point at relative cost 0."""
  loss, _ = two_llm_problem()
  free = deferral_metrics(deferral_curve(loss, loss, np.zeros(2)))
  np.testing.assert_allclose(float(free.area), 0.9, rtol=1e-12)
  np.testing.assert_allclose(float(free.qnc), 0.0)
  np.testing.assert_allclose(float(free.peak_quality), 0.9, rtol=1e-12)
  one_free = deferral_curve(loss, loss, np.array([0.0, 2.0]))
  m = deferral_metrics(one_free)
  # Envelope (0, .5) -> (.4, .9): area = .4 * (.5 + .9) / 2 + .6 * .9 = .82.
  np.testing.assert_allclose(float(m.area), 0.82, rtol=1e-12)
  assert np.all(np.isfinite(np.asarray(one_free.relative_cost)))


def test_a_curve_of_no_prompt_or_no_point_has_nan_metrics_qnc_included():
  cost = jnp.array([1.0, 2.0])
  curves = [deferral_curve(jnp.zeros((0, 2)), jnp.zeros((0, 2)), cost),
            deferral_curve(jnp.zeros((3, 2)), jnp.zeros((3, 2)), cost,
                           weights=jnp.zeros(3)),
            curve_from_points(np.zeros(0), np.zeros(0), max_cost=1.0,
                              best_quality=0.5)]
  for curve in curves:
    for fn in (deferral_metrics, jax.jit(deferral_metrics)):
      assert np.isnan(np.asarray(jax.tree.leaves(fn(curve)))).all()


def test_an_empty_pool_has_no_valid_point_and_nan_metrics():
  loss, cost = two_llm_problem()
  curve = deferral_curve(loss, loss, cost, pool_mask=np.zeros(2, bool))
  assert not np.any(np.asarray(curve.valid))
  assert np.all(np.isnan(np.asarray(deferral_metrics(curve))))


def test_routing_cost_ranks_while_cost_is_accounted():
  rng = np.random.default_rng(5)
  gamma, truth = rng.random((30, 4)), (rng.random((30, 4)) < 0.5).astype(float)
  paid = rng.uniform(0.1, 1.0, size=(30, 4))
  ranked = paid.mean(0)
  curve = deferral_curve(gamma, truth, paid, routing_cost=ranked)
  # Brute force: route by the mean cost, account the per-prompt cost.
  probes = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 400)])
  choice = np.asarray(choose_models(gamma, ranked, probes))
  rows = np.arange(30)
  points = np.array([(paid[rows, c].mean(), 1 - truth[rows, c].mean()) for c in choice])
  valid = np.asarray(curve.valid)
  ours = np.stack([np.asarray(curve.cost)[valid], np.asarray(curve.quality)[valid]], 1)
  for p in points:
    assert np.min(np.abs(ours - p).max(1)) < 1e-12
  with pytest.raises(ValueError, match="routing_cost must have shape"):
    deferral_curve(gamma, truth, paid, routing_cost=np.ones(3))


def test_single_llm_points_relative_cost_hand_computed():
  loss = np.array([[0.0, 1.0], [1.0, 1.0]])
  weights = np.ones(2)
  points = metrics.single_llm_points(loss, np.array([2.0, 4.0]), weights)
  np.testing.assert_allclose(points.relative_cost, [0.5, 1.0])
  np.testing.assert_allclose(points.quality, [0.5, 0.0])
  free = metrics.single_llm_points(loss, np.zeros(2), weights)
  np.testing.assert_array_equal(free.relative_cost, [0.0, 0.0])


def test_gradients_through_the_routing_rule_are_those_of_the_fixed_choices():
  """Routing is piecewise constant in cost and gamma, so a curve's mean cost
  is linear in the costs between switch points: its gradient is how often
  each LLM is chosen (a finite difference checks it), and nothing fails on
  the index reductions inside."""
  rng = np.random.default_rng(0)
  gamma = jnp.asarray(rng.random((20, 3)))
  loss = jnp.asarray((rng.random((20, 3)) < 0.5).astype(np.float64))
  cost = jnp.array([1.0, 0.5, 0.2])

  def total_cost(c):
    return jnp.sum(deferral_curve(gamma, loss, c).cost)

  grad = np.asarray(jax.jit(jax.grad(total_cost))(cost))
  step = 1e-6
  for j in range(3):
    e = np.zeros(3)
    e[j] = step
    fd = (float(total_cost(cost + e)) - float(total_cost(cost - e))) / (2 * step)
    assert grad[j] == pytest.approx(fd, rel=1e-6, abs=1e-9)
  assert np.isfinite(np.asarray(jax.grad(
      lambda g: jnp.sum(deferral_curve(g, loss, cost).quality))(gamma))).all()


def test_a_batch_of_curves_is_refused_with_the_way_to_map_it():
  loss = jnp.asarray(np.random.default_rng(0).random((3, 10, 2)) < 0.5,
                     jnp.float32)
  cost = jnp.array([1.0, 2.0])
  curves = jax.vmap(lambda l: deferral_curve(l, l, cost))(loss)
  for fn in (deferral_metrics, upper_envelope):
    with pytest.raises(ValueError, match=r"curve must be one curve .*jax.vmap"):
      fn(curves)
  areas = jax.vmap(deferral_metrics)(curves).area
  for b in range(3):
    assert float(areas[b]) == float(deferral_metrics(
        deferral_curve(loss[b], loss[b], cost)).area)


def test_qualities_of_losses_summing_past_one_stay_in_the_unit_interval():
  """Weighted means of losses of 1 round to 1 + 1e-7 in float32 (these
  weights do): quality is then 0, not -1e-7, and the area exactly 0."""
  r = np.random.default_rng(4)
  n, m = 997, 5
  gamma = r.random((n, m)).astype(np.float32)
  truth = np.ones((n, m), np.float32)
  cost = r.random(m).astype(np.float32)
  w = r.random(n).astype(np.float32)
  # The unclipped mean, summed as XLA sums it (NumPy's pairwise sum differs).
  share = jnp.asarray(w) / jnp.sum(jnp.asarray(w))
  assert np.any(np.asarray(1.0 - jnp.sum(share[:, None] * truth, axis=0)) < 0), (
      "these inputs no longer round past 1")
  for fn in (metrics.deferral_curve, jax.jit(metrics.deferral_curve)):
    curve = fn(gamma, truth, cost, weights=w)
    quality = np.asarray(curve.quality)
    assert np.all((quality >= 0) & (quality <= 1))
    assert np.all(np.asarray(curve.cost) >= 0)
    assert float(curve.best_quality) == 0.0
    assert float(metrics.deferral_metrics(curve).area) == 0.0
