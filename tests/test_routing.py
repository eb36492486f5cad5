"""The routing rule against brute-force loops over prompts and lambdas."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import no_retrace
from uniroute_jax import checked, choose_models, predicted_loss, route, switch_path
from uniroute_jax import routing


def brute_choice(gamma, cost, lam, pool):
  """Python loop: argmin score, ties to the cheaper LLM, then lower index."""
  n, m = gamma.shape
  cost = np.broadcast_to(cost, gamma.shape)
  out = np.empty(n, int)
  for i in range(n):
    best = None
    for j in range(m):
      if not pool[j]:
        continue
      # lambda = inf: the limit of the rule, the cheapest LLM, then the
      # most accurate of those.
      key = ((cost[i, j], gamma[i, j], j) if np.isinf(lam) else
             (gamma[i, j] + lam * cost[i, j], cost[i, j], j))
      if best is None or key < best:
        best = key
    out[i] = best[2]
  return out


def problem(n=40, k=5, m=6, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  psi = rng.random((k, m)).astype(dtype)
  cost = rng.uniform(0.1, 2.0, size=m).astype(dtype)
  cluster = rng.integers(0, k, size=n)
  return psi, cost, cluster, rng


LAMBDAS = np.array([0.0, 0.01, 0.1, 0.3, 1.0, 10.0])


def test_hard_route_matches_brute_force(dtype, mode):
  psi, cost, cluster, _ = problem(dtype=dtype)
  out = route(cluster, psi, cost, LAMBDAS.astype(dtype))
  assert out.choice.shape == (len(LAMBDAS), len(cluster))
  assert out.choice.dtype == jnp.int32
  gamma = psi[cluster]
  np.testing.assert_array_equal(np.asarray(out.predicted_loss), gamma)
  for l, lam in enumerate(LAMBDAS):
    np.testing.assert_array_equal(np.asarray(out.choice[l]),
                                  brute_choice(gamma, cost, lam, np.ones(6, bool)))


def test_soft_route_and_per_prompt_costs_match_brute_force(dtype, mode):
  psi, _, cluster, rng = problem(dtype=dtype)
  phi = rng.dirichlet(np.ones(5), size=len(cluster)).astype(dtype)
  cost = rng.uniform(0.1, 2.0, size=(len(cluster), 6)).astype(dtype)
  out = route(phi, psi, cost, LAMBDAS.astype(dtype))
  gamma = phi.astype(np.float64) @ psi
  np.testing.assert_allclose(np.asarray(out.predicted_loss), gamma,
                             rtol=1e-5 if dtype == np.float32 else 1e-12)
  for l, lam in enumerate(LAMBDAS):
    np.testing.assert_array_equal(
        np.asarray(out.choice[l]),
        brute_choice(np.asarray(out.predicted_loss), cost, lam, np.ones(6, bool)))


def float64_regret(gamma, cost, lambdas, choice):
  """How much worse (in float64) each chosen score is than the best one."""
  score = (gamma.astype(np.float64)[None] +
           lambdas.astype(np.float64)[:, None, None] * cost.astype(np.float64))
  got = np.take_along_axis(score, np.asarray(choice)[..., None], -1)[..., 0]
  return got - score.min(-1)


@pytest.mark.parametrize("soft", [False, True])
def test_many_llms_against_numpy(dtype, soft):
  """100 LLMs with costs over three decades: every choice is the best one.

  Regression: comparing a score with a separately computed minimum broke on
  CPUs where XLA contracts only one of them into a fused multiply-add.
  """
  rng = np.random.default_rng(7)
  k, m, n = 100, 100, 3000
  psi = rng.random((k, m)).astype(dtype)
  cost = np.exp(rng.uniform(np.log(0.01), np.log(10.0), m)).astype(dtype)
  lambdas = np.concatenate([[0.0], np.geomspace(1e-3, 10.0, 31)]).astype(dtype)
  cluster = rng.integers(0, k, size=n)
  membership = np.eye(k, dtype=dtype)[cluster] if soft else cluster
  choice = route(membership, psi, cost, lambdas).choice
  regret = float64_regret(psi[cluster], cost, lambdas, choice)
  if dtype == np.float64:
    np.testing.assert_array_equal(regret, 0.0)
  else:
    assert regret.max() < 1e-5
  path = switch_path(psi[cluster[:300]], cost)
  steps = np.asarray(path.lambdas, np.float64)
  # Probe each prompt halfway between consecutive switches of its own path.
  states = np.vstack([np.asarray(path.start)[None], np.asarray(path.choice)])
  lower = np.vstack([np.zeros((1, 300)), steps])
  upper = np.vstack([steps, np.full((1, 300), np.inf)])
  ok = np.isfinite(lower)
  lower = np.where(ok, lower, 0.0)
  probe = np.where(np.isfinite(upper), (lower + upper) / 2, lower + 1.0)
  gamma = psi[cluster[:300]].astype(np.float64)
  score = gamma[None] + probe[..., None] * cost.astype(np.float64)
  got = np.take_along_axis(score, states[..., None], -1)[..., 0]
  assert (got - score.min(-1))[ok].max() <= (1e-5 if dtype == np.float32 else 1e-12)


def test_pool_mask_is_honoured():
  psi, cost, cluster, rng = problem(m=8)
  for trial in range(10):
    pool = rng.random(8) < 0.5
    pool[rng.integers(8)] = True
    choice = np.asarray(route(cluster, psi, cost, LAMBDAS, pool_mask=pool).choice)
    assert pool[choice].all()
    for l, lam in enumerate(LAMBDAS):
      np.testing.assert_array_equal(choice[l],
                                    brute_choice(psi[cluster], cost, lam, pool))


def test_ties_go_to_the_cheaper_llm():
  gamma = np.array([[0.5, 0.5, 0.5]])
  cost = np.array([3.0, 1.0, 2.0])
  assert int(choose_models(gamma, cost, 0.0)[0]) == 1
  # Exact break-even between LLM 0 (loss .1, cost 2) and LLM 1 (.3, 1).
  assert int(choose_models(np.array([[0.1, 0.3]]), np.array([2.0, 1.0]), 0.25)[0]) == 1


def test_lambda_grid_equals_loop_and_vmap(mode):
  psi, cost, cluster, _ = problem()
  grid = route(cluster, psi, cost, LAMBDAS).choice
  looped = np.stack([np.asarray(route(cluster, psi, cost, lam).choice)
                     for lam in LAMBDAS])
  np.testing.assert_array_equal(np.asarray(grid), looped)
  vmapped = jax.vmap(lambda lam: route(cluster, psi, cost, lam).choice)(
      jnp.asarray(LAMBDAS))
  np.testing.assert_array_equal(np.asarray(vmapped), looped)


@pytest.mark.parametrize("n", [0, 1])
def test_vmap_over_pools_with_small_batches(n):
  psi, cost, cluster, rng = problem()
  pools = rng.random((n, 6)) < 0.7
  pools[:, 0] = True
  f = jax.vmap(lambda pool: route(cluster, psi, cost, 0.1, pool_mask=pool).choice)
  out = np.asarray(f(jnp.asarray(pools)))
  assert out.shape == (n, len(cluster))
  for b in range(n):
    np.testing.assert_array_equal(out[b], brute_choice(psi[cluster], cost, 0.1, pools[b]))


def test_no_retrace_when_lambda_cost_or_pool_change():
  psi, cost, cluster, _ = problem()
  route(cluster, psi, cost, LAMBDAS, pool_mask=np.ones(6, bool))
  route(cluster, psi, cost, LAMBDAS)
  with no_retrace():
    route(cluster, psi * 0.5, cost * 3.0, LAMBDAS * 2.0)
    route(cluster, psi, cost, LAMBDAS[::-1], pool_mask=np.arange(6) != 2)


def test_predicted_loss_hard_and_soft():
  psi, _, cluster, _ = problem()
  np.testing.assert_array_equal(np.asarray(predicted_loss(cluster, psi)), psi[cluster])
  np.testing.assert_allclose(np.asarray(predicted_loss(np.eye(5)[cluster], psi)),
                             psi[cluster], rtol=1e-12)


def all_break_evens(gamma, cost, pool):
  cost = np.broadcast_to(cost, gamma.shape)
  values = {0.0}
  for i in range(gamma.shape[0]):
    for a, b in itertools.combinations(np.flatnonzero(pool), 2):
      if cost[i, a] != cost[i, b]:
        lam = (gamma[i, a] - gamma[i, b]) / (cost[i, b] - cost[i, a])
        if lam > 0:
          values.add(float(lam))
  return np.array(sorted(values))


def test_switch_path_matches_a_dense_sweep(dtype):
  rng = np.random.default_rng(2)
  gamma = rng.random((15, 7)).astype(dtype)
  cost = rng.uniform(0.1, 2.0, size=(15, 7)).astype(dtype)
  pool = np.array([1, 1, 0, 1, 1, 1, 1], bool)
  path = switch_path(gamma, cost, pool_mask=pool)
  lambdas = np.asarray(path.lambdas, np.float64)
  # Between consecutive break-evens the choice is constant: probe midpoints.
  breaks = all_break_evens(gamma.astype(np.float64), cost, pool)
  probes = np.concatenate([[0.0], (breaks[1:] + breaks[:-1]) / 2, [breaks[-1] + 1]])
  for lam in probes:
    steps = (lambdas <= lam).sum(0)
    state = np.where(steps == 0, np.asarray(path.start),
                     np.asarray(path.choice)[np.maximum(steps - 1, 0),
                                             np.arange(15)])
    np.testing.assert_array_equal(
        state, brute_choice(gamma.astype(np.float64), cost, lam, pool))
  # Lambdas ascend along each path; padding steps are +inf.
  assert np.all(lambdas[1:] >= lambdas[:-1])


def test_switch_path_walks_cheaper_each_step():
  rng = np.random.default_rng(3)
  gamma, cost = rng.random((20, 6)), rng.uniform(0.1, 1, size=6)
  path = switch_path(gamma, cost)
  states = np.vstack([np.asarray(path.start)[None], np.asarray(path.choice)])
  moved = np.isfinite(np.asarray(path.lambdas))
  c = cost[states]
  assert np.all(c[1:][moved] < c[:-1][moved])
  np.testing.assert_array_equal(states[-1], np.full(20, np.argmin(cost)))


@pytest.mark.parametrize("bad, match", [
    (dict(cost=np.ones(4)), r"cost must have shape \[3\] or \[4, 3\]"),
    (dict(pool_mask=np.ones(2, bool)), r"pool_mask must have shape \(3,\)"),
    (dict(pool_mask=np.ones(3)), "pool_mask must be boolean"),
    (dict(membership=np.ones((4, 3))), "membership must have 2 columns"),
    (dict(membership=np.ones(4)), "membership must hold integer cluster indices"),
    (dict(lambdas=np.zeros((2, 2))), "lambdas must be a numeric 0-d or 1-d"),
    (dict(psi=np.zeros((2, 0)), cost=np.zeros(0)), "psi must have at least one LLM"),
    (dict(psi=np.zeros((0, 3))), "psi must have at least one cluster"),
    (dict(lambdas="x"), "lambdas must be a numeric"),
])
def test_bad_input(bad, match):
  args = dict(membership=np.array([0, 1, 1, 0]), psi=np.full((2, 3), 0.5),
              cost=np.ones(3), lambdas=0.5)
  args.update(bad)
  pool = args.pop("pool_mask", None)
  with pytest.raises(ValueError, match=match):
    route(args["membership"], args["psi"], args["cost"], args["lambdas"],
          pool_mask=pool)


@pytest.mark.parametrize("bad, match", [
    (dict(cost=-np.ones(3)), "cost must be finite and non-negative"),
    (dict(lambdas=-1.0), "lambdas must be non-negative"),
    (dict(pool_mask=np.zeros(3, bool)), "pool_mask must leave an LLM available"),
    (dict(membership=np.array([0, 1, 2, 0])), r"membership must hold cluster indices in \[0, 2\)"),
    (dict(membership=-np.ones((4, 2))), "membership must be non-negative"),
    (dict(psi=np.full((2, 3), np.nan)), "psi must be finite"),
])
def test_bad_values_are_caught_under_checkify(bad, match):
  args = dict(membership=np.array([0, 1, 1, 0]), psi=np.full((2, 3), 0.5),
              cost=np.ones(3), lambdas=0.5)
  args.update(bad)
  pool = args.pop("pool_mask", None)
  with pytest.raises(ValueError, match=match):
    checked(route)(args["membership"], args["psi"], args["cost"],
                   args["lambdas"], pool_mask=pool)


def test_no_choice_is_minus_one():
  """A cluster index outside [0, k), inside the user's jit or not, and an
  empty pool give the documented -1 (never an arbitrary index)."""
  psi = jnp.array([[0.1, 0.4], [0.5, 0.6]])
  cost = jnp.array([10.0, 1.0])
  members = jnp.array([0, 1, 2, -1])
  for fn in (route, jax.jit(route)):
    out = fn(members, psi, cost, jnp.array([0.0, 0.1]))
    np.testing.assert_array_equal(np.asarray(out.choice),
                                  [[0, 0, -1, -1], [1, 1, -1, -1]])
    assert np.isnan(np.asarray(out.predicted_loss)[2:]).all()
  soft = jnp.eye(2)[jnp.array([0, 1])]
  hard = jnp.array([0, 1])
  for membership in (soft, hard):
    none = route(membership, psi, cost, 0.0, pool_mask=jnp.zeros(2, bool))
    np.testing.assert_array_equal(np.asarray(none.choice), [-1, -1])
  gamma = jnp.array([[jnp.nan, jnp.nan], [0.2, jnp.nan]])
  np.testing.assert_array_equal(
      np.asarray(choose_models(gamma, cost, 0.0)), [-1, 0])
  path = switch_path(jnp.ones((3, 2)), cost, pool_mask=jnp.zeros(2, bool))
  np.testing.assert_array_equal(np.asarray(path.start), [-1, -1, -1])
  assert not np.isfinite(np.asarray(path.lambdas)).any()


@pytest.mark.parametrize("per_prompt_cost", [False, True])
def test_both_selection_kernels_agree_with_brute_force(per_prompt_cost):
  """The CPU kernel runs on this machine; the reduction serves GPU and TPU.

  Scores on a coarse grid make exact ties common, so tie-breaking is tested.
  """
  rng = np.random.default_rng(8)
  n, m = 70, 9
  gamma = rng.integers(0, 4, size=(n, m)) / 4.0
  cost = rng.integers(1, 4, size=(n, m) if per_prompt_cost else m) / 2.0
  pool = rng.random(m) < 0.8
  pool[0] = True
  # Free LLMs too, and lambda = inf (where inf * 0 must not make them NaN).
  cost[..., 1:3] = 0.0
  lambdas = np.array([0.0, 0.25, 0.5, 1.0, 3.0, np.inf])
  args = [jnp.asarray(a) for a in (gamma, cost, lambdas, pool)]
  for kernel in (routing._choose_by_columns, routing._choose_by_reduction):
    choice = np.asarray(jax.jit(kernel)(*args))
    for l, lam in enumerate(lambdas):
      np.testing.assert_array_equal(choice[l], brute_choice(gamma, cost, lam, pool))
    # Unavailable LLMs and NaN scores are never chosen; nothing left: -1.
    nan_gamma = gamma.copy()
    nan_gamma[:5] = np.nan
    nan_gamma[5:10, 0] = np.nan
    choice = np.asarray(jax.jit(kernel)(jnp.asarray(nan_gamma), *args[1:]))
    assert (choice[:, :5] == -1).all() and (choice[:, 5:10] != 0).all()
    choice = np.asarray(jax.jit(kernel)(*args[:3], jnp.zeros(m, bool)))
    assert (choice == -1).all()


def test_an_infinite_lambda_ends_where_the_switch_path_ends(dtype):
  rng = np.random.default_rng(4)
  gamma = rng.integers(0, 4, (50, 5)).astype(dtype) / 4
  cost = np.array([3.0, 0.0, 1.0, 0.0, 2.0], dtype)
  path = switch_path(gamma, cost)
  # Where each prompt's path ends: its last step, or its start.
  steps = np.isfinite(np.asarray(path.lambdas)).sum(axis=0)
  end = np.where(steps > 0, np.asarray(path.choice)[np.maximum(steps - 1, 0),
                                                    np.arange(50)],
                 np.asarray(path.start))
  for fn in (choose_models, jax.jit(choose_models)):
    np.testing.assert_array_equal(np.asarray(fn(gamma, cost, np.inf)), end)
  cluster = np.arange(50)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(route)(cluster, gamma, cost, jnp.inf).choice), end)


def test_an_empty_lambda_grid_routes_nothing():
  psi, cost, cluster, _ = problem()
  out = route(cluster, psi, cost, np.zeros(0))
  assert out.choice.shape == (0, len(cluster))
  assert choose_models(psi[cluster], cost, np.zeros(0)).shape == (0, len(cluster))


# ------------------------------------------------------ budgets (operating_point)


def brute_operating_points(gamma, cost, pool):
  """(lambda, mean cost, quality) of routing at every lambda where the
  choice can change, and between them: the rule is constant in between."""
  m = gamma.shape[1]
  breaks = {0.0}
  for i, j, l in itertools.product(range(gamma.shape[0]), range(m), range(m)):
    if pool[j] and pool[l] and cost[j] > cost[l]:
      lam = (gamma[i, l] - gamma[i, j]) / (cost[j] - cost[l])
      if lam >= 0:
        breaks.add(float(lam))
  breaks = sorted(breaks)
  probes = breaks + [(a + b) / 2 for a, b in zip(breaks, breaks[1:])]
  probes.append(2 * breaks[-1] + 1)
  rows = np.arange(gamma.shape[0])
  out = []
  for lam in probes:
    choice = brute_choice(gamma, cost, lam, pool)
    out.append((lam, cost[choice].mean(), 1 - gamma[rows, choice].mean()))
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operating_point_matches_a_brute_force_lambda_sweep(seed, dtype):
  rng = np.random.default_rng(seed)
  n, m = 12, 4
  # Coarse values make exact ties (several prompts switching at one lambda).
  gamma = (rng.integers(0, 5, (n, m)) / 4).astype(dtype)
  cost = rng.choice([0.0, 0.5, 1.0, 2.0], m, replace=False).astype(dtype)
  pool = np.ones(m, bool) if seed != 2 else np.array([True, False, True, True])
  points = brute_operating_points(gamma, cost, pool)
  # Budgets just above each reachable mean cost (and just below each
  # quality): exactly at a level, the answer would hang on the last bit of
  # a float sum.
  costs = sorted({float(c) for _, c, _ in points})
  qualities = sorted({float(q) for _, _, q in points})
  margin = 1e-4
  fn = jax.jit(lambda g, c, b, p: routing.operating_point(g, c, max_cost=b,
                                                          pool_mask=p))
  for budget in [costs[0] - 0.1] + [c + margin for c in costs] + [
      (a + b) / 2 for a, b in zip(costs, costs[1:])]:
    want = [q for _, c, q in points if c <= budget]
    for point in (routing.operating_point(gamma, cost, max_cost=budget,
                                          pool_mask=pool),
                  fn(gamma, cost, budget, pool)):
      if not want:
        assert not point.feasible
        assert float(point.mean_cost) == pytest.approx(min(costs), abs=1e-5)
        continue
      assert point.feasible
      assert float(point.quality) == pytest.approx(max(want), abs=1e-5)
      assert float(point.mean_cost) <= budget + 1e-5
      # The reported lambda routes as reported.
      choice = brute_choice(gamma, cost, float(point.lam), pool)
      assert cost[choice].mean() == pytest.approx(float(point.mean_cost),
                                                  abs=1e-5)
  for target in [q - margin for q in qualities] + [qualities[-1] + 0.1]:
    want = [c for _, c, q in points if q >= target]
    point = routing.operating_point(gamma, cost, min_quality=target,
                                    pool_mask=pool)
    if not want:
      assert not point.feasible
      assert float(point.quality) == pytest.approx(max(qualities), abs=1e-5)
      continue
    assert point.feasible
    assert float(point.mean_cost) == pytest.approx(min(want), abs=1e-5)
    choice = brute_choice(gamma, cost, float(point.lam), pool)
    assert 1 - gamma[np.arange(n), choice].mean() == pytest.approx(
        float(point.quality), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_operating_point_meets_a_budget_met_exactly(seed, dtype):
  """A budget equal to a reachable level (a float sum of the choices) is met,
  although the cumulative sums that find it round differently."""
  rng = np.random.default_rng(seed)
  n, m = 40, 4
  gamma = rng.random((n, m)).astype(dtype)
  cost = np.array([3.0, 0.0, 1.3, 0.7], dtype)
  pool = np.ones(m, bool)
  rows = np.arange(n)
  for lam, _, _ in brute_operating_points(gamma, cost, pool)[::5]:
    choice = brute_choice(gamma, cost, lam, pool)
    level_cost = np.mean(cost[choice], dtype=dtype)
    level_quality = 1 - np.mean(gamma[rows, choice], dtype=dtype)
    by_cost = routing.operating_point(gamma, cost, max_cost=level_cost)
    assert bool(by_cost.feasible)
    assert float(by_cost.quality) >= level_quality - 1e-5
    by_quality = routing.operating_point(gamma, cost, min_quality=level_quality)
    assert bool(by_quality.feasible)
    assert float(by_quality.mean_cost) <= level_cost + 1e-5
  # A budget of 0 with a free LLM: every prompt to it (the cumulative sums
  # leave a residue of rounding, not of cost).
  free = routing.operating_point(gamma, cost, max_cost=0.0)
  assert bool(free.feasible)
  choice = brute_choice(gamma, cost, float(free.lam), pool)
  assert (choice == 1).all()
  # Routing every prompt to the free LLM reaches 0.55 exactly.
  point = routing.operating_point(np.array([[.1, .3], [.2, .6]], dtype),
                                  np.array([1.0, 0.0], dtype), min_quality=0.55)
  assert bool(point.feasible) and float(point.mean_cost) == 0.0


def test_operating_point_lambda_routes_as_reported_at_rounded_switch_points(
    dtype):
  """Switch points equal in exact arithmetic but rounded apart (0.7 - 0.3
  and 0.6 - 0.2 in float32) leave no lambda between them: the point's lambda
  must route as the point says, and so meet the target it reports as met."""
  gamma = np.array([[.2, .4, .9, .7], [.7, .7, .3, .7], [.6, .9, .2, .3],
                    [.1, .1, .6, .3], [.2, .4, .7, .6]], dtype)
  cost = np.array([1., 3., 3., 3.], dtype)
  rows = np.arange(gamma.shape[0])
  pool = np.ones(4, bool)
  point = routing.operating_point(gamma, cost, min_quality=0.65)
  choice = brute_choice(gamma, cost, float(point.lam), pool)
  assert bool(point.feasible)
  assert 1 - gamma[rows, choice].mean() >= 0.65
  rng = np.random.default_rng(0)
  for _ in range(150):
    gamma = (rng.integers(0, 10, (6, 4)) / 10).astype(dtype)
    cost = rng.choice([0., 1., 2., 3., 5.], 4, replace=False).astype(dtype)
    rows = np.arange(6)
    for budget in ({"min_quality": rng.integers(3, 10) / 10},
                   {"max_cost": rng.random() * 5}):
      point = routing.operating_point(gamma, cost, **budget)
      choice = brute_choice(gamma, cost, float(point.lam), pool)
      assert cost[choice].mean() == pytest.approx(float(point.mean_cost),
                                                  abs=1e-5), budget
      assert 1 - gamma[rows, choice].mean() == pytest.approx(
          float(point.quality), abs=1e-5), budget


def test_operating_point_with_no_llm_available_is_infeasible_and_nan():
  gamma, cost = jnp.array([[0.2, 0.5]]), jnp.array([1.0, 1.0])
  none = jnp.array([False, False])
  for kw in (dict(max_cost=1.0), dict(min_quality=0.0)):
    for point in (routing.operating_point(gamma, cost, pool_mask=none, **kw),
                  jax.jit(lambda p, kw=kw: routing.operating_point(
                      gamma, cost, pool_mask=p, **kw))(none)):
      assert not bool(point.feasible)
      assert np.isnan([float(point.lam), float(point.mean_cost),
                       float(point.quality)]).all()


def test_operating_point_budgets_are_traced_and_vmap():
  rng = np.random.default_rng(3)
  gamma, cost = rng.random((30, 5)), rng.uniform(0, 2, 5)
  fn = jax.jit(lambda b: routing.operating_point(gamma, cost, max_cost=b))
  fn(0.1)
  with no_retrace():
    for budget in (0.5, 0.9, 1.3):
      fn(budget)
  budgets = jnp.array([0.5, 0.9, 1.3])
  batched = jax.vmap(fn)(budgets)
  for b, lam in zip(budgets, batched.lam):
    assert float(lam) == float(fn(b).lam)
  with pytest.raises(ValueError, match="exactly one of max_cost and min_quality"):
    routing.operating_point(gamma, cost)
  with pytest.raises(ValueError, match="cost must have shape"):
    routing.operating_point(gamma, cost[:3], max_cost=1.0)
