"""Excess risk, its decomposition and Prop. 2's bound against NumPy loops."""

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from conftest import RTOL
from test_metrics import break_even_lambdas, numpy_area
from uniroute_jax import checked, risk


# ---------------------------------------------------------------- oracles


def np_choose(gamma, route_cost, lam, pool):
  """argmin gamma + lam * cost over the pool; ties to the cheaper, then the
  lower index; -1 for an empty pool."""
  n, m = gamma.shape
  route_cost = np.broadcast_to(route_cost, (n, m))
  out = np.full(n, -1)
  for i in range(n):
    best = None
    for j in range(m):
      if not pool[j]:
        continue
      key = (gamma[i, j] + lam * route_cost[i, j], route_cost[i, j], j)
      if best is None or key < best:
        best = key
    if best is not None:
      out[i] = best[2]
  return out


def np_weights(mask, pool, weights):
  labelled = np.all(mask | ~pool[None, :], axis=1)
  return np.where(labelled, weights, 0.0)


def np_risk(choice, loss, cost, lam, w):
  n, m = loss.shape
  cost = np.broadcast_to(cost, (n, m))
  paid = [loss[i, c] + lam * cost[i, c] for i, c in enumerate(choice)]
  return float(np.sum(w * np.array(paid)) / np.sum(w))


def np_oracle_risk(loss, cost, lam, pool, w):
  n, m = loss.shape
  cost = np.broadcast_to(cost, (n, m))
  best = [min(loss[i, j] + lam * cost[i, j] for j in range(m) if pool[j])
          for i in range(n)]
  return float(np.sum(w * np.array(best)) / np.sum(w))


def np_psi_star(membership, loss, w, k):
  """Cluster means of the prompts that count (hard or soft membership)."""
  phi = np.eye(k)[membership] if membership.ndim == 1 else membership
  m = loss.shape[1]
  psi = np.zeros((k, m))
  overall = (w @ loss) / w.sum()
  for c in range(k):
    total = np.sum(phi[:, c] * w)
    psi[c] = (phi[:, c] * w) @ loss / total if total > 0 else overall
  return psi


def np_gamma(membership, psi):
  return psi[membership] if membership.ndim == 1 else membership @ psi


def problem(seed, n=30, m=4, k=3, per_prompt_cost=False, soft=False):
  rng = np.random.default_rng(seed)
  loss = (rng.random((n, m)) < 0.4).astype(float)
  mask = rng.random((n, m)) < 0.9
  cost = rng.uniform(0.1, 2.0, (n, m) if per_prompt_cost else m)
  membership = (rng.dirichlet(np.ones(k), n) if soft
                else rng.integers(0, k, n))
  psi = rng.uniform(0.1, 0.9, (k, m))
  pool = np.array([True, True, False, True][:m])
  weights = rng.uniform(0.5, 1.5, n)
  lambdas = np.array([0.0, 0.03, 0.1, 0.5, 3.0])
  return dict(loss=loss, mask=mask, cost=cost, membership=membership, psi=psi,
              pool=pool, weights=weights, lambdas=lambdas)


# ------------------------------------------------------------ excess risk


@pytest.mark.parametrize("per_prompt_cost", [False, True])
def test_excess_risk_matches_a_numpy_loop(dtype, mode, per_prompt_cost):
  p = problem(0, per_prompt_cost=per_prompt_cost)
  gamma = np_gamma(p["membership"], p["psi"])
  route_cost = (np.mean(p["cost"], axis=0) if per_prompt_cost else p["cost"])
  f = lambda g, l, c, lam, mask, pool, w, rc: risk.excess_risk(
      g, l, c, lam, mask=mask, pool_mask=pool, weights=w, routing_cost=rc)
  result = jax.jit(f)(*(np.asarray(a, dtype) if a.dtype.kind == "f" else a
                        for a in (gamma, p["loss"], p["cost"], p["lambdas"],
                                  p["mask"], p["pool"], p["weights"],
                                  route_cost)))
  w = np_weights(p["mask"], p["pool"], p["weights"])
  loss = np.where(p["mask"], p["loss"], 0.0)
  for t, lam in enumerate(p["lambdas"]):
    choice = np_choose(gamma, route_cost, lam, p["pool"])
    want = np_risk(choice, loss, p["cost"], lam, w)
    oracle = np_oracle_risk(loss, p["cost"], lam, p["pool"], w)
    np.testing.assert_allclose(result.risk[t], want, rtol=RTOL[dtype])
    np.testing.assert_allclose(result.oracle[t], oracle, rtol=RTOL[dtype])
    np.testing.assert_allclose(result.excess[t], want - oracle,
                               rtol=RTOL[dtype], atol=RTOL[dtype])
  assert result.risk.dtype == dtype


def test_excess_risk_eager_equals_jit(mode):
  p = problem(1)
  gamma = np_gamma(p["membership"], p["psi"])
  out = risk.excess_risk(gamma, p["loss"], p["cost"], p["lambdas"],
                         mask=p["mask"], pool_mask=p["pool"])
  w = np_weights(p["mask"], p["pool"], np.ones(30))
  loss = np.where(p["mask"], p["loss"], 0.0)
  want = [np_risk(np_choose(gamma, p["cost"], lam, p["pool"]), loss, p["cost"],
                  lam, w) for lam in p["lambdas"]]
  np.testing.assert_allclose(out.risk, want, rtol=1e-10)


def test_a_scalar_lambda_gives_scalars_and_the_oracle_has_no_excess():
  p = problem(2)
  loss = np.where(p["mask"], p["loss"], 0.0)
  out = risk.excess_risk(loss, p["loss"], p["cost"], 0.0, mask=p["mask"])
  assert out.risk.shape == ()
  assert float(out.excess) == 0.0
  # At lambda = 0 routing by the true loss is the oracle's rule.
  out = risk.excess_risk(loss, p["loss"], p["cost"], p["lambdas"],
                         mask=p["mask"])
  assert float(out.excess[0]) == 0.0
  assert np.all(np.asarray(out.excess) >= 0)


def test_prompts_missing_a_pool_label_are_left_out():
  p = problem(3)
  gamma = np_gamma(p["membership"], p["psi"])
  mask = p["mask"].copy()
  mask[:, 2] = False            # an LLM outside the pool: no prompt is lost
  full = risk.excess_risk(gamma, p["loss"], p["cost"], p["lambdas"],
                          mask=mask, pool_mask=p["pool"])
  keep = np.all(mask | ~p["pool"][None, :], axis=1)
  sub = risk.excess_risk(gamma[keep], p["loss"][keep], p["cost"],
                         p["lambdas"], pool_mask=p["pool"])
  chex.assert_trees_all_close(full, sub, rtol=1e-12)
  none = risk.excess_risk(gamma, p["loss"], p["cost"], p["lambdas"],
                          mask=np.zeros_like(mask))
  assert np.all(np.isnan(none.risk))


def test_invariances_prompt_order_weight_scale_and_lambda_cost_scale():
  p = problem(4)
  gamma = np_gamma(p["membership"], p["psi"])
  base = risk.excess_risk(gamma, p["loss"], p["cost"], p["lambdas"],
                          weights=p["weights"])
  order = np.random.default_rng(0).permutation(30)
  shuffled = risk.excess_risk(gamma[order], p["loss"][order], p["cost"],
                              p["lambdas"], weights=p["weights"][order] * 7.0)
  chex.assert_trees_all_close(base, shuffled, rtol=1e-12)
  # Costs in other units, lambda in the inverse units: the same risk.
  scaled = risk.excess_risk(gamma, p["loss"], p["cost"] * 4.0,
                            p["lambdas"] / 4.0, weights=p["weights"])
  chex.assert_trees_all_close(base, scaled, rtol=1e-12)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 5),
                  per_prompt_cost=st.booleans())
def test_property_excess_is_never_negative(seed, m, per_prompt_cost):
  rng = np.random.default_rng(seed)
  n = 12
  loss = rng.random((n, m))
  gamma = rng.random((n, m))
  cost = rng.uniform(0, 1, (n, m) if per_prompt_cost else m)
  route_cost = rng.uniform(0, 1, m)
  lambdas = np.concatenate([[0.0], rng.exponential(1.0, 6)])
  out = risk.excess_risk(gamma, loss, cost, lambdas, routing_cost=route_cost)
  assert np.all(np.asarray(out.excess) >= -1e-12)


# ---------------------------------------------------------- decomposition


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("per_prompt_cost", [False, True])
def test_decomposition_matches_a_numpy_loop(dtype, soft, per_prompt_cost):
  p = problem(5, soft=soft, per_prompt_cost=per_prompt_cost)
  route_cost = np.mean(p["cost"], axis=0) if per_prompt_cost else None
  cast = lambda a: None if a is None else (
      np.asarray(a, dtype) if a.dtype.kind == "f" else a)
  out = jax.jit(lambda *a: risk.excess_decomposition(
      a[0], a[1], a[2], a[3], a[4], mask=a[5], pool_mask=a[6], weights=a[7],
      routing_cost=a[8]))(*(cast(p[k]) for k in (
          "membership", "psi", "loss", "cost", "lambdas", "mask", "pool",
          "weights")), cast(route_cost))
  w = np_weights(p["mask"], p["pool"], p["weights"])
  loss = np.where(p["mask"], p["loss"], 0.0)
  psi_star = np_psi_star(p["membership"], loss, w, 3)
  np.testing.assert_allclose(out.psi_star, psi_star, rtol=RTOL[dtype])
  rc = p["cost"] if route_cost is None else route_cost
  for t, lam in enumerate(p["lambdas"]):
    hat = np_risk(np_choose(np_gamma(p["membership"], p["psi"]), rc, lam,
                            p["pool"]), loss, p["cost"], lam, w)
    star = np_risk(np_choose(np_gamma(p["membership"], psi_star), rc, lam,
                             p["pool"]), loss, p["cost"], lam, w)
    oracle = np_oracle_risk(loss, p["cost"], lam, p["pool"], w)
    tol = dict(rtol=RTOL[dtype], atol=RTOL[dtype])
    np.testing.assert_allclose(out.risk[t], hat, **tol)
    np.testing.assert_allclose(out.cluster_risk[t], star, **tol)
    np.testing.assert_allclose(out.oracle[t], oracle, **tol)
    np.testing.assert_allclose(out.estimation[t], hat - star, **tol)
    np.testing.assert_allclose(out.approximation[t], star - oracle, **tol)
    np.testing.assert_allclose(out.excess[t], hat - oracle, **tol)


def test_one_hot_memberships_decompose_as_hard_clusters():
  p = problem(6)
  kwargs = dict(mask=p["mask"], pool_mask=p["pool"], weights=p["weights"])
  hard = risk.excess_decomposition(p["membership"], p["psi"], p["loss"],
                                   p["cost"], p["lambdas"], **kwargs)
  soft = risk.excess_decomposition(np.eye(3)[p["membership"]], p["psi"],
                                   p["loss"], p["cost"], p["lambdas"], **kwargs)
  chex.assert_trees_all_close(hard, soft, rtol=1e-12)


def test_psi_star_routes_with_no_estimation_error():
  p = problem(7)
  first = risk.excess_decomposition(p["membership"], p["psi"], p["loss"],
                                    p["cost"], p["lambdas"], mask=p["mask"])
  again = risk.excess_decomposition(p["membership"], first.psi_star, p["loss"],
                                    p["cost"], p["lambdas"], mask=p["mask"])
  np.testing.assert_allclose(again.estimation, 0.0, atol=1e-12)
  np.testing.assert_allclose(again.approximation, first.approximation,
                             rtol=1e-12)


def test_one_cluster_per_prompt_has_no_approximation_error():
  """n clusters of one prompt each: Psi-star is every prompt's own loss, and
  the rule with it is the oracle (per-LLM costs)."""
  p = problem(8, n=12)
  n = 12
  out = risk.excess_decomposition(np.arange(n), np.full((n, 4), 0.5),
                                  p["loss"], p["cost"], p["lambdas"])
  np.testing.assert_allclose(out.approximation, 0.0, atol=1e-12)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 4),
                  m=st.integers(1, 4))
def test_property_hard_clusters_decompose_into_two_nonnegative_parts(seed, k, m):
  rng = np.random.default_rng(seed)
  n = 15
  loss = rng.random((n, m))
  membership = rng.integers(0, k, n)
  psi = rng.random((k, m))
  cost = rng.uniform(0, 1, m)
  lambdas = np.concatenate([[0.0], rng.exponential(1.0, 6)])
  out = risk.excess_decomposition(membership, psi, loss, cost, lambdas,
                                  weights=rng.uniform(0, 1, n))
  assert np.all(np.asarray(out.estimation) >= -1e-12)
  assert np.all(np.asarray(out.approximation) >= -1e-12)


def np_area(gamma, loss, cost, route_cost, pool, w):
  """Area by a brute-force lambda sweep (every break-even, its midpoints)."""
  n, m = loss.shape
  route_cost = np.broadcast_to(route_cost, (n, m))
  cost = np.broadcast_to(cost, (n, m))
  breaks = break_even_lambdas(gamma, route_cost, pool)
  probes = np.concatenate([[0.0], breaks, (breaks[1:] + breaks[:-1]) / 2,
                           [breaks[-1] * 2 + 1]])
  share = w / w.sum()
  max_cost = np.max((share @ cost)[pool])
  points = []
  for lam in probes:
    c = np_choose(gamma, route_cost, lam, pool)
    rows = np.arange(n)
    points.append((float(share @ cost[rows, c]) / max_cost,
                   1.0 - float(share @ loss[rows, c])))
  return numpy_area(points, 1.0)


def test_area_decomposition_matches_a_brute_force_sweep(dtype):
  p = problem(9, n=20, per_prompt_cost=True)
  route_cost = np.mean(p["cost"], axis=0)
  cast = lambda a: np.asarray(a, dtype) if a.dtype.kind == "f" else a
  out = risk.area_decomposition(
      *(cast(p[k]) for k in ("membership", "psi", "loss", "cost")),
      mask=p["mask"], pool_mask=p["pool"], weights=cast(p["weights"]),
      routing_cost=cast(route_cost))
  w = np_weights(p["mask"], p["pool"], p["weights"])
  loss = np.where(p["mask"], p["loss"], 0.0)
  psi_star = np_psi_star(p["membership"], loss, w, 3)
  hat = np_area(np_gamma(p["membership"], p["psi"]), loss, p["cost"],
                route_cost, p["pool"], w)
  star = np_area(np_gamma(p["membership"], psi_star), loss, p["cost"],
                 route_cost, p["pool"], w)
  oracle = np_area(loss, loss, p["cost"], p["cost"], p["pool"], w)
  tol = dict(atol=3e-5)
  np.testing.assert_allclose(out.area, hat, **tol)
  np.testing.assert_allclose(out.cluster_area, star, **tol)
  np.testing.assert_allclose(out.oracle_area, oracle, **tol)
  np.testing.assert_allclose(out.estimation, star - hat, **tol)
  np.testing.assert_allclose(out.approximation, oracle - star, **tol)
  np.testing.assert_allclose(out.gap, oracle - hat, **tol)


def test_no_prompt_that_counts_gives_nan_areas():
  p = problem(10)
  out = risk.area_decomposition(p["membership"], p["psi"], p["loss"],
                                p["cost"], mask=np.zeros((30, 4), bool))
  assert all(np.isnan(float(v)) for v in out)


# ------------------------------------------------------------- Prop. 2


def np_bound(membership, eta, pool, w, k):
  psi = np_psi_star(membership, eta, w, k)
  worst = np.array([max(abs(eta[i, h] - psi[membership[i], h])
                        for h in range(eta.shape[1]) if pool[h])
                    for i in range(len(membership))])
  return 2.0 * float(np.sum(w * worst) / np.sum(w)), worst


def test_impurity_bound_matches_a_numpy_loop(dtype, mode):
  rng = np.random.default_rng(11)
  n, m, k = 40, 5, 4
  eta = rng.random((n, m))
  membership = rng.integers(0, k, n)
  pool = np.array([True, False, True, True, True])
  w = rng.uniform(0, 1, n)
  w[:3] = 0
  out = risk.impurity_bound(membership, eta.astype(dtype), num_clusters=k,
                            pool_mask=pool, weights=w.astype(dtype))
  bound, worst = np_bound(membership, eta, pool, w, k)
  np.testing.assert_allclose(out.bound, bound, rtol=RTOL[dtype])
  np.testing.assert_allclose(out.delta, np.where(w > 0, worst, 0.0),
                             rtol=RTOL[dtype], atol=RTOL[dtype])


def test_impurity_bound_leaves_out_an_unknown_cluster_id_under_jit():
  # Inside jit an id outside [0, k) is not an error: that prompt is left
  # out (its Delta is 0, it adds no mass to any cluster's Psi-star, and the
  # mean runs over the other prompts).
  rng = np.random.default_rng(12)
  n, m, k = 30, 4, 3
  eta = rng.random((n, m))
  membership = rng.integers(0, k, n)
  membership[[4, 17]] = [k, -1]
  known = (membership >= 0) & (membership < k)
  out = jax.jit(lambda c, e: risk.impurity_bound(c, e, num_clusters=k))(
      membership, eta)
  _, worst = np_bound(membership[known], eta[known], np.ones(m, bool),
                      np.ones(known.sum()), k)
  expected = np.zeros(n)
  expected[known] = worst
  np.testing.assert_allclose(out.delta, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out.bound, 2.0 * expected[known].mean(), rtol=1e-6)
  assert np.all(np.isfinite(np.asarray(out.psi_star)))


def test_decompositions_leave_out_an_unknown_cluster_id_under_jit():
  """As routing leaves such a prompt unrouted, the risk and Area
  decompositions leave it out: they equal those of the other prompts."""
  rng = np.random.default_rng(13)
  n, m, k = 40, 4, 3
  loss = (rng.random((n, m)) < 0.5).astype(float)
  psi, cost = rng.random((k, m)), np.array([2.0, 1.0, 0.5, 0.1])
  membership = rng.integers(0, k, n)
  membership[[3, 11, 30]] = [k, -1, k + 7]
  known = (membership >= 0) & (membership < k)
  lambdas = np.array([0.0, 0.3, 2.0])
  excess = jax.jit(lambda c: risk.excess_decomposition(c, psi, loss, cost,
                                                       lambdas))(membership)
  area = jax.jit(lambda c: risk.area_decomposition(c, psi, loss, cost))(
      membership)
  kept = (membership[known], psi, loss[known], cost)
  chex.assert_trees_all_close(excess, risk.excess_decomposition(*kept, lambdas),
                              rtol=1e-12)
  chex.assert_trees_all_close(area, risk.area_decomposition(*kept), rtol=1e-12)
  assert np.isfinite(np.asarray(area.area))


def test_impurity_bounds_are_checked_under_checkify():
  x = np.random.default_rng(0).normal(size=(12, 2))
  loss = np.random.default_rng(1).random((12, 2))
  plain = risk.impurity_bounds(jax.random.key(0), x, loss, np.array([1, 3]),
                               num_neighbors=3)
  checked_bounds = checked(risk.impurity_bounds)(
      jax.random.key(0), x, loss, np.array([1, 3]), max_clusters=3,
      num_neighbors=3)
  np.testing.assert_allclose(checked_bounds, plain, rtol=1e-10)


def test_an_empty_pool_has_no_bound():
  out = risk.impurity_bound(np.array([0, 1]), np.full((2, 2), 0.3),
                            num_clusters=2, pool_mask=np.zeros(2, bool))
  assert np.isnan(float(out.bound))


def test_pure_clusters_have_a_zero_bound():
  eta = np.repeat(np.random.default_rng(0).random((3, 4)), 5, axis=0)
  out = risk.impurity_bound(np.repeat(np.arange(3), 5), eta, num_clusters=3)
  # Zero up to the rounding of five equal numbers' mean.
  np.testing.assert_allclose(out.bound, 0.0, atol=1e-15)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 5),
                  m=st.integers(1, 5))
def test_property_prop2_bounds_the_cluster_rules_bayes_excess(seed, k, m):
  """Where P(h wrong | x) is known, the Psi-star rule's excess over the
  Bayes rule never exceeds the bound, at any lambda (Prop. 2)."""
  rng = np.random.default_rng(seed)
  n = 20
  eta = rng.beta(0.7, 0.7, (n, m))
  membership = rng.integers(0, k, n)
  w = rng.uniform(0.1, 1.0, n)
  cost = rng.uniform(0, 1, m)
  lambdas = np.concatenate([[0.0], rng.exponential(1.0, 8)])
  bound = risk.impurity_bound(membership, eta, num_clusters=k, weights=w)
  gamma = np.asarray(bound.psi_star)[membership]
  excess = risk.excess_risk(gamma, eta, cost, lambdas, weights=w).excess
  assert np.all(np.asarray(excess) <= float(bound.bound) + 1e-12)


def np_neighborhood(x, membership, loss, mask, w, k):
  """Every prompt at most as far as the k-th nearest of its group (itself
  included, at distance 0), a loop."""
  n, m = loss.shape
  error, counts = np.zeros((n, m)), np.zeros((n, m))
  group = np.zeros(n, int) if membership is None else membership
  for i in range(n):
    if w[i] <= 0:
      continue
    same = [j for j in range(n) if group[j] == group[i] and (w[j] > 0 or j == i)]
    dist = {j: 0.0 if j == i else float(np.sum((x[i] - x[j]) ** 2)) for j in same}
    reach = sorted(dist.values())[min(k, len(same)) - 1]
    near = [j for j in same if dist[j] <= reach + 1e-9 and w[j] > 0]
    for h in range(m):
      lab = [j for j in near if mask[j, h]]
      counts[i, h] = sum(w[j] for j in lab)
      if lab:
        error[i, h] = sum(w[j] * loss[j, h] for j in lab) / counts[i, h]
      else:
        pool = [j for j in same if mask[j, h] and w[j] > 0]
        everyone = [j for j in range(n) if mask[j, h] and w[j] > 0]
        source = pool or everyone
        error[i, h] = (sum(w[j] * loss[j, h] for j in source)
                       / sum(w[j] for j in source)) if source else 1.0
  return error, counts


@pytest.mark.parametrize("grouped", [False, True])
def test_neighborhood_error_matches_a_numpy_loop(dtype, grouped):
  rng = np.random.default_rng(12)
  n, m, k = 30, 3, 4
  x = rng.normal(size=(n, 5))
  x[5] = x[6] = x[7]                      # duplicates: ties at the reach
  membership = rng.integers(0, 3, n)
  loss = (rng.random((n, m)) < 0.5).astype(float)
  mask = rng.random((n, m)) < 0.7
  mask[membership == 0, 1] = False     # the cluster's mean is missing too
  w = rng.uniform(0.5, 1.5, n)
  w[[2, 9]] = 0.0
  out = risk.neighborhood_error(x.astype(dtype), loss.astype(dtype),
                                membership=membership if grouped else None,
                                num_neighbors=k, mask=mask,
                                weights=w.astype(dtype))
  error, counts = np_neighborhood(x, membership if grouped else None, loss,
                                  mask, w, k)
  np.testing.assert_allclose(out.error, error, rtol=RTOL[dtype],
                             atol=RTOL[dtype])
  np.testing.assert_allclose(out.counts, counts, rtol=RTOL[dtype])


def test_neighborhood_error_is_translation_invariant_in_float32():
  """Far from the origin, float32 distances expanded as squares lose their
  digits unless the data are centred first."""
  rng = np.random.default_rng(14)
  x = rng.normal(size=(200, 8))
  loss = (rng.random((200, 2)) < 0.5).astype(np.float32)
  for offset in (0.0, 100.0, 1000.0):
    shifted = (x + offset).astype(np.float32)
    # The oracle on the very float32 inputs, in float64.
    error, _ = np_neighborhood(shifted.astype(np.float64), None, loss,
                               np.ones(loss.shape, bool), np.ones(200), 10)
    out = risk.neighborhood_error(shifted, loss, num_neighbors=10)
    np.testing.assert_allclose(out.error, error, rtol=1e-6, atol=1e-6,
                               err_msg=f"offset {offset}")


def test_equal_embeddings_get_equal_estimates_in_any_row_order():
  x = np.zeros((8, 2))
  loss = (np.arange(8) % 2).astype(float)[:, None]
  for order in (np.arange(8), np.arange(8)[::-1]):
    out = risk.neighborhood_error(x[order], loss[order], num_neighbors=3)
    np.testing.assert_allclose(out.error, 0.5)


def test_impurity_bounds_equal_one_fit_at_a_time():
  rng = np.random.default_rng(13)
  n, m = 40, 3
  x = np.concatenate([rng.normal(size=(20, 2)), rng.normal(size=(20, 2)) + 6])
  loss = np.concatenate([(rng.random((20, m)) < 0.2), (rng.random((20, m)) < 0.8)]
                        ).astype(float)
  key = jax.random.key(0)
  clusters = np.array([1, 2, 4])
  bounds = risk.impurity_bounds(key, x, loss, clusters, num_neighbors=5)
  from uniroute_jax import kmeans
  smooth = risk.neighborhood_error(x, loss, num_neighbors=5)
  for i, k in enumerate(clusters):
    fit = kmeans(jax.random.fold_in(key, i), x, num_clusters=4,
                 active_clusters=int(k), max_iter=100)
    want = risk.impurity_bound(fit.assignment, smooth.error, num_clusters=4)
    np.testing.assert_allclose(bounds[i], want.bound, rtol=1e-10)
  # Two blobs of different error: splitting them tightens the bound.
  assert float(bounds[1]) < float(bounds[0])
  chex.assert_trees_all_close(
      risk.impurity_bounds(key, x, loss, clusters, num_neighbors=5, together=1),
      bounds, rtol=1e-10)


# -------------------------------------------------------------- contract


@pytest.mark.parametrize("call, match", [
    (lambda: risk.excess_risk(np.zeros((3, 2)), np.zeros((3, 3)), np.ones(3), 0.0),
     "predicted_loss must have shape"),
    (lambda: risk.excess_risk(np.zeros((3, 2)), np.zeros((3, 2)), np.ones(3), 0.0),
     "cost must have shape"),
    (lambda: risk.excess_decomposition(np.zeros(4, np.int32), np.zeros((2, 2)),
                                       np.zeros((3, 2)), np.ones(2), 0.0),
     "membership and loss must agree"),
    (lambda: risk.impurity_bound(np.zeros(3, np.int32), np.zeros((3, 2)),
                                 num_clusters=0), "num_clusters"),
    (lambda: risk.impurity_bounds(jax.random.key(0), np.zeros((3, 2)),
                                  np.zeros((3, 2)), jax.numpy.array([1, 2])),
     "max_clusters must be given"),
    (lambda: risk.neighborhood_error(np.zeros((3, 2)), np.zeros((4, 2))),
     "embeddings and loss"),
    (lambda: risk.impurity_bounds(jax.random.key(0), np.zeros((3, 2)),
                                  np.zeros((3, 2)), np.array([1, 4])),
     "clusters must be at most the number of prompts"),
])
def test_bad_shapes_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("fn, args, kwargs, match", [
    (risk.excess_risk, (np.zeros((2, 2)), np.full((2, 2), 2.0), np.ones(2),
                        np.float64(0.0)), {}, "loss must lie in"),
    (risk.excess_risk, (np.zeros((2, 2)), np.zeros((2, 2)), np.ones(2),
                        np.float64(-1.0)), {}, "lambdas must be"),
    (risk.excess_risk, (np.array([[np.nan, 0.0], [0.0, 0.0]]), np.zeros((2, 2)),
                        np.ones(2), np.float64(0.0)), {},
     "predicted_loss must be finite"),
    (risk.impurity_bound, (np.array([0, 5]), np.zeros((2, 2))),
     {"num_clusters": 2}, "cluster indices"),
    (risk.impurity_bound, (np.array([0, 1]), np.full((2, 2), -0.5)),
     {"num_clusters": 2}, "error_probability must lie"),
    (risk.excess_risk, (np.zeros((2, 2)), np.zeros((2, 2)), np.ones(2),
                        np.float64(0.5)),
     {"routing_cost": np.array([np.nan, 1.0])}, "routing_cost must be finite"),
    (risk.impurity_bounds, (jax.random.key(0), np.eye(4), np.zeros((4, 2)),
                            np.array([1, 3])),
     {"max_clusters": 2, "together": 1}, "clusters must lie in"),
])
def test_bad_values_are_caught_under_checkify(fn, args, kwargs, match):
  with pytest.raises(ValueError, match=match):
    checked(fn)(*args, **kwargs)
