"""The routing rule: send each prompt to argmin_m gamma_m(x) + lambda * c_m (eq. 2).

gamma_m(x) = Phi(x)^T Psi(h_m) is the predicted loss of LLM m on prompt x
(eq. 9). Everything here is vectorised over prompts, LLMs and a grid of
lambdas, and takes a pool mask, so the pool can change without retracing.

Ties are broken towards the cheaper LLM (then the lower index): at a
break-even lambda the rule already takes the cheaper side, so the routing at
lambda equals the state that :func:`switch_path` records as starting there.

Values are never inspected (see :mod:`uniroute_jax.checks`). Where no LLM
can be chosen, the choice is -1: a prompt whose hard cluster index lies
outside [0, k) (its predicted losses are NaN), one whose predicted losses
are all NaN, or any prompt when the pool mask leaves no LLM.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import blocks, checks
from uniroute_jax.types import PRECISION, Array


class RoutingResult(NamedTuple):
  """Output of :func:`route`.

  Attributes:
    choice: int32 index of the chosen LLM, [n] for a scalar lambda or
      [L, n] for L lambdas; -1 where no LLM can be chosen.
    membership: the [n] clusters or [n, k] cluster probabilities routed.
    psi: the [k, m] feature vectors routed with.
  """

  choice: Array
  membership: Array
  psi: Array

  @property
  def predicted_loss(self) -> Array:
    """[n, m] gamma = Phi^T Psi, computed on access (the choice never needs
    the [n, m] matrix when clusters are hard)."""
    return predicted_loss(self.membership, self.psi)


class SwitchPath(NamedTuple):
  """How each prompt's choice changes as lambda grows from 0 to infinity.

  Attributes:
    start: [n] int32 choice at lambda = 0 (-1 where no LLM can be chosen).
    lambdas: [s, n] the lambda at which step t begins, ascending in t;
      +inf for steps that never happen (s = m - 1 is the most there can be).
    choice: [s, n] int32 choice from ``lambdas[t]`` on (the previous choice
      where the step never happens).
  """

  start: Array
  lambdas: Array
  choice: Array


def lexicographic_argmin(primary, secondary):
  """Index of the smallest (primary, secondary, index) triple on the last axis.

  One variadic reduction: each score is computed exactly once. Comparing a
  score with a separately computed minimum is not safe, because XLA may
  contract ``gamma + lam * cost`` into a fused multiply-add in one place and
  not in the other, so the two can differ in the last bit.
  Entries whose primary is +inf are never preferred to finite ones; when a
  whole row is +inf the result is the last index.
  """
  # An index has no derivative; without this, differentiating a caller
  # would ask for the variadic reduction's JVP, which JAX does not define.
  primary, secondary = jax.lax.stop_gradient((primary, secondary))
  axis = primary.ndim - 1
  size = primary.shape[axis]
  index = jax.lax.broadcasted_iota(jnp.int32, primary.shape, axis)

  def smaller(a, b):
    (pa, sa, ia), (pb, sb, ib) = a, b
    take_a = (pa < pb) | ((pa == pb) & ((sa < sb) | ((sa == sb) & (ia < ib))))
    return (jnp.where(take_a, pa, pb), jnp.where(take_a, sa, sb),
            jnp.where(take_a, ia, ib))

  init = (jnp.array(jnp.inf, primary.dtype), jnp.array(jnp.inf, secondary.dtype),
          jnp.array(size, jnp.int32))
  _, _, best = jax.lax.reduce((primary, secondary, index), init, smaller, (axis,))
  return jnp.minimum(best, size - 1)


def _check_pool(pool_mask, m: int):
  return checks.mask("pool_mask", pool_mask, (m,))


def _check_models(name: str, x) -> None:
  if x.shape[-1] < 1:
    raise ValueError(f"{name} must have at least one LLM (column), got shape "
                     f"{tuple(x.shape)}")


def choose_models(predicted_loss, cost, lambdas, *, pool_mask=None) -> Array:
  """argmin_m predicted_loss[i, m] + lambda * cost[(i,) m] over available LLMs.

  Args:
    predicted_loss: [n, m] gamma.
    cost: [m] or [n, m] non-negative costs.
    lambdas: a scalar or [L] non-negative trade-offs (traced); +inf picks
      the cheapest LLM (the most accurate of the cheapest).
    pool_mask: optional [m] bool, False for LLMs that are not available.

  Returns:
    int32 choices, [n] for a scalar lambda, [L, n] for a grid; -1 where no
    available LLM has a predicted loss that is not NaN.
  """
  gamma = checks.float_array("predicted_loss", predicted_loss, ndim=2,
                             shape_doc="[n, m]")
  _check_models("predicted_loss", gamma)
  n, m = gamma.shape
  cost = checks.cost("cost", cost, n, m)
  lambdas = checks.lambdas(lambdas)
  pool_mask = _check_pool(pool_mask, m)
  return _choose_jit(gamma, cost, lambdas, pool_mask,
                     dtype=checks.compute_dtype(gamma, cost))


def _score_and_tie(gamma, cost, lam):
  """The rule's score gamma + lam * cost and its tie-break (the cost).

  At lam = +inf the rule's limit is the cheapest LLM, the most accurate of
  those when several cost the least: the score is then the cost and the
  tie-break gamma (``inf * 0`` would otherwise make free LLMs NaN).
  """
  at_limit = jnp.isinf(lam)
  return (jnp.where(at_limit, cost, gamma + lam * cost),
          jnp.where(at_limit, gamma, cost))


def _choose_by_reduction(gamma, cost, lambdas, pool):
  """Choices [L, n] as one lexicographic reduction per lambda."""
  cost = jnp.broadcast_to(cost, gamma.shape)
  available = pool[None, :]

  def one(lam):
    score, tie = _score_and_tie(gamma, cost, lam)
    eligible = available & ~jnp.isnan(gamma)
    best = lexicographic_argmin(jnp.where(eligible, score, jnp.inf),
                                jnp.where(eligible, tie, jnp.inf))
    return jnp.where(jnp.any(eligible, axis=1), best, -1)

  return jax.vmap(one)(lambdas)


# Prompts per CPU tile times lambdas: the [L, tile] running minimum stays in
# cache while every LLM's column streams past it.
_CPU_TILE_ENTRIES = 1 << 16


def _choose_by_columns(gamma, cost, lambdas, pool):
  """:func:`_choose_by_reduction` for CPUs.

  XLA:CPU runs a variadic reduction as scalar code. Visiting the LLMs one
  after the other and keeping a running (score, cost, index) minimum turns
  the same selection into m vectorised compare-and-select passes. Each score
  is computed once, and ties resolve exactly as in the reduction.
  """
  n, m = gamma.shape
  num_lambdas = lambdas.shape[0]
  cost = jnp.broadcast_to(cost, gamma.shape)
  tile = max(1, min(n, max(64, _CPU_TILE_ENTRIES // num_lambdas)))
  lam = lambdas[:, None]

  def tile_choice(gamma_tile, cost_tile):
    g, c = gamma_tile.T, cost_tile.T
    rows = g.shape[1]

    def visit(j, state):
      best, best_tie, choice = state
      gj = g[j][None, :]
      score, tie = _score_and_tie(gj, c[j][None, :], lam)
      better = pool[j] & ~jnp.isnan(gj) & (
          (score < best) | ((score == best) & (tie < best_tie)))
      return (jnp.where(better, score, best),
              jnp.where(better, tie, best_tie),
              jnp.where(better, j, choice))

    start = (jnp.full((num_lambdas, rows), jnp.inf, g.dtype),
             jnp.full((num_lambdas, rows), jnp.inf, c.dtype),
             jnp.full((num_lambdas, rows), -1, jnp.int32))
    _, _, choice = jax.lax.fori_loop(0, m, visit, start)
    return choice.T

  return blocks.map_rows(tile_choice, (gamma, cost), tile).T


def _choose(gamma, cost, lambdas, pool):
  """The selection kernel, traceable: choices [L, n] (or [n] for a scalar)."""
  grid = jnp.atleast_1d(lambdas)
  if grid.shape[0] == 0:
    return jnp.zeros((0, gamma.shape[0]), jnp.int32)
  choice = jax.lax.platform_dependent(
      gamma, cost, grid, pool, cpu=_choose_by_columns,
      default=_choose_by_reduction)
  return choice[0] if lambdas.ndim == 0 else choice


@checks.kernel(static_argnames=("dtype",))
def _choose_jit(gamma, cost, lambdas, pool_mask, *, dtype):
  gamma, cost, lambdas = (a.astype(dtype) for a in (gamma, cost, lambdas))
  checks.require_costs(cost, lambdas, "choose_models")
  return _choose(gamma, cost, lambdas,
                 checks.availability(pool_mask, gamma.shape[1]))


def predicted_loss(membership, psi) -> Array:
  """gamma = Phi^T Psi: [n, m] predicted loss of every LLM on every prompt.

  Args:
    membership: [n] int cluster of each prompt, or [n, k] cluster
      probabilities.
    psi: [k, m] per-cluster loss of each LLM (see ``features.cluster_errors``).

  Returns:
    [n, m]; a row is NaN where a hard cluster index lies outside [0, k).
  """
  psi = checks.float_array("psi", psi, ndim=2, shape_doc="[k, m]")
  membership = checks.membership(membership, psi.shape[0])
  return _predicted_loss_jit(membership, psi,
                            dtype=checks.membership_dtype(membership, psi))


def _gamma(membership, psi):
  """Phi^T Psi: hard indices outside [0, k) give NaN rows, soft memberships
  a matmul at full precision."""
  if membership.ndim == 1:
    known = known_cluster(membership, psi.shape[0])
    rows = psi[jnp.where(known, membership, 0)]
    return jnp.where(known[:, None], rows, jnp.nan)
  return jnp.matmul(membership, psi, precision=PRECISION)


def known_cluster(membership, k: int):
  """[n] bool: the hard cluster id lies in [0, k). Under jit an id outside
  it is not an error: such a prompt is routed to -1 with NaN predicted
  losses, and the risk estimates leave it out."""
  return (membership >= 0) & (membership < k)


@checks.kernel(static_argnames=("dtype",))
def _predicted_loss_jit(membership, psi, *, dtype):
  psi = psi.astype(dtype)
  checks.require_membership(membership, psi.shape[0], "predicted_loss")
  membership = membership if membership.ndim == 1 else membership.astype(dtype)
  return _gamma(membership, psi)


def route(membership, psi, cost, lambdas, *, pool_mask=None) -> RoutingResult:
  """Routes prompts given their clusters and the pool's feature vectors (eq. 9).

  r(x) = argmin_m Phi(x)^T Psi(h_m) + lambda * c_m over the available LLMs.

  Args:
    membership: [n] int cluster of each prompt (UniRoute K-means), or
      [n, k] cluster probabilities (a learned cluster map).
    psi: [k, m] per-cluster loss of each LLM in the pool.
    cost: [m] cost of each LLM, or [n, m] per-prompt costs.
    lambdas: a scalar or [L] grid of non-negative trade-offs (traced: new
      values do not retrace); +inf picks the cheapest LLM (the most
      accurate of the cheapest).
    pool_mask: optional [m] bool; an LLM whose entry is False is never chosen.

  Returns:
    A :class:`RoutingResult`; ``choice`` is [n] or [L, n] (-1 for a prompt
    whose cluster index lies outside [0, k), or when no LLM is available),
    and ``predicted_loss`` the [n, m] gamma.

  Examples:
    >>> import jax.numpy as jnp
    >>> psi = jnp.array([[0.1, 0.4], [0.5, 0.6]])   # 2 clusters, 2 LLMs
    >>> cost = jnp.array([10.0, 1.0])
    >>> route(jnp.array([0, 1]), psi, cost, jnp.array([0.0, 0.1])).choice
    Array([[0, 0],
           [1, 1]], dtype=int32)
  """
  psi = checks.float_array("psi", psi, ndim=2, shape_doc="[k, m]")
  _check_models("psi", psi)
  k, m = psi.shape
  if k < 1:
    raise ValueError(f"psi must have at least one cluster (row), got shape "
                     f"{tuple(psi.shape)}")
  membership = checks.membership(membership, k)
  n = membership.shape[0]
  cost = checks.cost("cost", cost, n, m)
  lambdas = checks.lambdas(lambdas)
  pool_mask = _check_pool(pool_mask, m)
  return _route(membership, psi, cost, lambdas, pool_mask,
                dtype=checks.membership_dtype(membership, psi, cost))


@checks.kernel(static_argnames=("dtype",))
def _route(membership, psi, cost, lambdas, pool_mask, *, dtype):
  psi, cost, lambdas = (a.astype(dtype) for a in (psi, cost, lambdas))
  k, m = psi.shape
  checks.require_membership(membership, k, "route")
  checks.require(jnp.all(jnp.isfinite(psi)), "route: psi must be finite")
  checks.require_costs(cost, lambdas, "route")
  pool = checks.availability(pool_mask, m)
  checks.require(jnp.any(pool), "route: pool_mask must leave an LLM available")
  if membership.ndim == 1 and cost.ndim == 1:
    # Hard clusters and one cost per LLM: every prompt of a cluster gets the
    # same choice, so decide once per cluster and gather.
    per_cluster = _choose(psi, cost, lambdas, pool)
    known = known_cluster(membership, k)
    choice = jnp.where(known, per_cluster[..., jnp.where(known, membership, 0)],
                       -1)
    return RoutingResult(choice, membership, psi)
  membership = membership if membership.ndim == 1 else membership.astype(dtype)
  return RoutingResult(_choose(_gamma(membership, psi), cost, lambdas, pool),
                       membership, psi)


def switch_path(predicted_loss, cost, *, pool_mask=None) -> SwitchPath:
  """Every change of each prompt's choice as lambda sweeps [0, inf).

  For a prompt whose current choice j is optimal at lambda, the next switch
  is to a cheaper LLM i at the break-even lambda
  (gamma_i - gamma_j) / (c_j - c_i), the smallest over cheaper LLMs; the
  choice then walks down the lower convex hull of {(c_m, gamma_m)}, so there
  are at most m - 1 switches. This gives the exact deferral curve without a
  lambda grid.

  Args:
    predicted_loss: [n, m] gamma (finite).
    cost: [m] or [n, m] non-negative costs.
    pool_mask: optional [m] bool.

  Returns:
    A :class:`SwitchPath` with m - 1 steps (+inf lambdas pad missing ones).
  """
  gamma_ = checks.float_array("predicted_loss", predicted_loss, ndim=2,
                              shape_doc="[n, m]")
  _check_models("predicted_loss", gamma_)
  n, m = gamma_.shape
  cost = checks.cost("cost", cost, n, m)
  pool_mask = _check_pool(pool_mask, m)
  return _switch_path_jit(gamma_, cost, pool_mask,
                          dtype=checks.compute_dtype(gamma_, cost))


def require_path_inputs(predicted_loss, cost, where: str,
                        loss_name: str = "predicted_loss",
                        cost_name: str = "cost") -> None:
  """:func:`checks.require` what a switch path needs (finite predicted
  losses, finite non-negative costs), naming ``where``: a function built on
  :func:`switch_path` checks first, so that a failure names the function
  the user called."""
  checks.require(jnp.all(jnp.isfinite(predicted_loss)),
                 f"{where}: {loss_name} must be finite")
  checks.require_costs(cost, None, where, cost_name)


@checks.kernel(static_argnames=("dtype",))
def _switch_path_jit(gamma_, cost, pool_mask, *, dtype):
  gamma_, cost = gamma_.astype(dtype), cost.astype(dtype)
  require_path_inputs(gamma_, cost, "switch_path")
  pool = checks.availability(pool_mask, gamma_.shape[1])
  n, m = gamma_.shape
  cost = jnp.broadcast_to(cost, gamma_.shape)
  available = pool[None, :]
  pool_cost = jnp.where(available, cost, jnp.inf)
  start = lexicographic_argmin(jnp.where(available, gamma_, jnp.inf), pool_cost)
  start = jnp.where(jnp.any(pool), start, -1).astype(jnp.int32)
  rows = jnp.arange(n)

  def step(carry, _):
    current, lam = carry
    g_cur = gamma_[rows, current][:, None]
    c_cur = cost[rows, current][:, None]
    cheaper = available & (cost < c_cur) & (current >= 0)[:, None]
    gap = jnp.where(cheaper, c_cur - cost, 1.0)
    # Rounding can put a break-even a hair below the current lambda.
    breakeven = jnp.where(cheaper, jnp.maximum((gamma_ - g_cur) / gap,
                                               lam[:, None]), jnp.inf)
    # Several cheaper LLMs can break even at once: the cheapest wins.
    candidate = lexicographic_argmin(breakeven, cost)
    next_lam = jnp.take_along_axis(breakeven, candidate[:, None], axis=1)[:, 0]
    moves = jnp.isfinite(next_lam)
    nxt = jnp.where(moves, candidate, current).astype(jnp.int32)
    return (nxt, jnp.where(moves, next_lam, lam)), (next_lam, nxt)

  steps = max(m - 1, 0)
  (_, _), (lambdas, choice) = jax.lax.scan(
      step, (start, jnp.zeros((n,), gamma_.dtype)), None, length=steps)
  return SwitchPath(start, lambdas.reshape(steps, n), choice.reshape(steps, n))


class OperatingPoint(NamedTuple):
  """A lambda that meets a budget, and what routing at it predicts.

  Attributes:
    lam: [] the lambda (a representative of the interval of lambdas that
      all route alike: 0, or the midpoint between two switch points).
    mean_cost: [] mean cost per prompt when routing at ``lam``.
    quality: [] predicted mean quality, 1 - mean gamma of the choices.
    feasible: [] bool, False when no lambda meets the budget; the point is
      then the one closest to it (the cheapest routing for a cost budget,
      the most accurate for a quality target). A budget met to within 64
      float epsilons (relative to the larger of the budget and the dearest
      cost, or 1 for quality) counts as met. With no LLM available,
      ``feasible`` is False and the other fields are NaN.
  """

  lam: Array
  mean_cost: Array
  quality: Array
  feasible: Array


def operating_point(predicted_loss, cost, *, max_cost=None, min_quality=None,
                    pool_mask=None) -> OperatingPoint:
  """The lambda that routes ``predicted_loss``'s prompts within a budget.

  As lambda grows, each prompt's choice walks to cheaper LLMs
  (:func:`switch_path`): the mean cost per prompt falls and the predicted
  mean quality 1 - gamma falls with it, changing only at the prompts'
  switch points. Every switch point is visited (sorted, with cumulative
  sums), so the answer is exact, not the best of a lambda grid:

  - ``max_cost``: the most accurate routing whose mean cost per prompt is
    at most ``max_cost`` (the smallest such lambda);
  - ``min_quality``: the cheapest routing whose predicted quality is at
    least ``min_quality`` (the largest such lambda).

  Args:
    predicted_loss: [n, m] gamma of the prompts to route (finite).
    cost: [m] non-negative cost of each LLM.
    max_cost, min_quality: exactly one, a scalar (traced: a new budget
      does not recompile).
    pool_mask: optional [m] bool of the LLMs available.

  Returns:
    An :class:`OperatingPoint`.

  Examples:
    >>> import jax.numpy as jnp
    >>> gamma = jnp.array([[0.1, 0.3], [0.2, 0.6]])   # 2 prompts, 2 LLMs
    >>> point = operating_point(gamma, jnp.array([1.0, 0.0]), max_cost=0.5)
    >>> float(point.mean_cost), round(float(point.quality), 3)
    (0.5, 0.75)
  """
  if (max_cost is None) == (min_quality is None):
    raise ValueError("give exactly one of max_cost and min_quality")
  gamma_ = checks.float_array("predicted_loss", predicted_loss, ndim=2,
                              shape_doc="[n, m]")
  _check_models("predicted_loss", gamma_)
  n, m = gamma_.shape
  cost = checks.float_array("cost", cost, ndim=1, shape_doc="[m]")
  if cost.shape != (m,):
    raise ValueError(f"cost must have shape [{m}] (one cost per LLM), got "
                     f"{tuple(cost.shape)}")
  pool_mask = _check_pool(pool_mask, m)
  budget = checks.scalar("max_cost" if max_cost is not None else "min_quality",
                         max_cost if max_cost is not None else min_quality)
  return _operating_point_jit(gamma_, cost, pool_mask, budget,
                              by_cost=max_cost is not None,
                              dtype=checks.compute_dtype(gamma_, cost))


# Relative slack, in units of the dtype's epsilon, when testing a budget
# (as ``deferral_metrics`` tests the best quality).
_BUDGET_RTOL = 64


@checks.kernel(static_argnames=("by_cost", "dtype"))
def _operating_point_jit(gamma_, cost, pool_mask, budget, *, by_cost, dtype):
  gamma_, cost = gamma_.astype(dtype), cost.astype(dtype)
  budget = jnp.asarray(budget, dtype)
  n, m = gamma_.shape
  require_path_inputs(gamma_, cost, "operating_point")
  path = _switch_path_jit(gamma_, cost, pool_mask, dtype=dtype)
  rows = jnp.arange(n)
  start = jnp.maximum(path.start, 0)
  previous = jnp.concatenate([start[None], path.choice[:-1]], axis=0)
  # Each switch event (a prompt leaving one LLM for a cheaper one) moves the
  # pool's totals by its differences; events sorted by lambda, cumulated.
  lam = path.lambdas.reshape(-1)
  d_cost = (cost[path.choice] - cost[previous]).reshape(-1)
  d_loss = (gamma_[rows, path.choice] - gamma_[rows, previous]).reshape(-1)
  happens = jnp.isfinite(lam)
  order = jnp.argsort(jnp.where(happens, lam, jnp.inf))
  lam, d_cost, d_loss = lam[order], d_cost[order], d_loss[order]
  d_cost, d_loss = (jnp.where(jnp.isfinite(lam), d, 0.0) for d in (d_cost, d_loss))
  total_cost = jnp.sum(cost[start]) + jnp.concatenate(
      [jnp.zeros((1,), dtype), jnp.cumsum(d_cost)])
  total_loss = jnp.sum(gamma_[rows, start]) + jnp.concatenate(
      [jnp.zeros((1,), dtype), jnp.cumsum(d_loss)])
  # State s (0: before any event; s: after the first s events) holds for
  # lambda in [begin_s, end_s); states inside a group of equal lambdas hold
  # for no lambda at all.
  begin = jnp.concatenate([jnp.zeros((1,), dtype), lam])
  end = jnp.concatenate([lam, jnp.full((1,), jnp.inf, dtype)])
  # Switch points equal in exact arithmetic can round a few ulps apart
  # (0.7 - 0.3 and 0.6 - 0.2 in float32): a state between them holds for no
  # lambda the rule's own rounded comparisons can single out, so routing at
  # any lambda there would not reproduce it. Such points count as one.
  apart = _BUDGET_RTOL * jnp.finfo(dtype).eps * jnp.abs(
      jnp.where(jnp.isfinite(end), end, begin))
  valid = (end - begin > apart) & jnp.isfinite(begin)
  mean_cost, quality = total_cost / n, 1.0 - total_loss / n
  # A budget met exactly (e.g. the quality of routing every prompt to one
  # LLM, or a cost of 0 with a free LLM) must count as met although the
  # cumulative sums round, relative to the size of what they add up.
  pool = checks.availability(pool_mask, m)
  scale = (jnp.max(jnp.where(pool[None, :], cost, 0.0)) if by_cost
           else jnp.ones((), dtype))
  slack = _BUDGET_RTOL * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(budget),
                                                            scale)
  if by_cost:
    meets = valid & (mean_cost <= budget + slack)
    # Cost falls with the state: the first state that meets the budget is
    # the most accurate; failing that, the cheapest (the last valid one).
    fallback = jnp.argmax(jnp.where(valid, jnp.arange(begin.size), -1))
    state = jnp.where(jnp.any(meets), jnp.argmax(meets), fallback)
  else:
    meets = valid & (quality >= budget - slack)
    last = jnp.argmax(jnp.where(meets, jnp.arange(begin.size), -1))
    state = jnp.where(jnp.any(meets), last, 0)
  lo, hi = begin[state], end[state]
  # A lambda strictly inside the interval, so that rounding in the rule's
  # comparisons at a break-even point cannot change the routing.
  inside = jnp.where(state == 0, 0.0,
                     jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi),
                               2.0 * lo + 1.0))
  # No LLM available: nothing meets any budget, and no routing has a cost.
  none = ~jnp.any(pool)
  nan = jnp.array(jnp.nan, dtype)
  return OperatingPoint(jnp.where(none, nan, inside),
                        jnp.where(none, nan, mean_cost[state]),
                        jnp.where(none, nan, quality[state]),
                        jnp.any(meets) & ~none)
