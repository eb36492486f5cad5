"""ZeroRouter: the prompt-blind router on the lower convex hull of (cost, loss).

It ignores the prompt: for a budget between two hull vertices it sends each
prompt to the cheaper one with probability (c_hi - B) / (c_hi - c_lo), else to
the dearer one, so its expected cost is B and its deferral curve is the hull
polyline itself. It is UniRoute with one cluster (Prop. 9 of the paper): the
hull vertices are exactly the LLMs the static rule picks for some lambda.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import checks, metrics, routing
from uniroute_jax.types import Array


class ParetoHull(NamedTuple):
  """Vertices of the lower convex hull of the pool's (cost, loss) points.

  Attributes:
    models: [m] int32 vertex LLMs from cheapest to dearest; entries past
      ``size`` repeat the dearest vertex (-1, with NaN cost and loss, when
      no LLM is available).
    cost: [m] their costs.
    loss: [m] their mean losses.
    size: [] int32 number of vertices.
  """

  models: Array
  cost: Array
  loss: Array
  size: Array


def zero_router_hull(mean_loss, cost, *, pool_mask=None) -> ParetoHull:
  """The lower convex hull of {(c_m, loss_m)} over the available LLMs.

  A vertex is an LLM that argmin_m loss_m + lambda c_m picks for some
  lambda >= 0 (ties to the cheaper); points on a hull edge are not vertices.

  Args:
    mean_loss: [m] each LLM's mean loss (on the validation prompts).
    cost: [m] each LLM's non-negative cost.
    pool_mask: optional [m] bool; with no LLM available ``size`` is 0,
      every vertex -1 and its cost and loss NaN.
  """
  mean_loss = checks.float_array("mean_loss", mean_loss, ndim=1, shape_doc="[m]")
  m = mean_loss.shape[0]
  cost = checks.cost("cost", cost, 1, m, per_prompt=False)
  pool_mask = checks.mask("pool_mask", pool_mask, (m,))
  return _hull(mean_loss, cost, pool_mask,
               dtype=checks.compute_dtype(mean_loss, cost))


@checks.kernel(static_argnames=("dtype",))
def _hull(mean_loss, cost, pool_mask, *, dtype):
  mean_loss, cost = mean_loss.astype(dtype), cost.astype(dtype)
  routing.require_path_inputs(mean_loss, cost, "zero_router_hull", "mean_loss")
  path = routing.switch_path(mean_loss[None], cost, pool_mask=pool_mask)
  # The path walks from the most accurate vertex down to the cheapest one.
  steps = jnp.concatenate([path.start, path.choice[:, 0]])
  moved = jnp.concatenate([path.start >= 0, jnp.isfinite(path.lambdas[:, 0])])
  size = jnp.sum(moved).astype(jnp.int32)
  # Reverse the visited prefix so vertices run cheapest first; pad with the
  # dearest vertex.
  index = jnp.arange(steps.shape[0])
  models = steps[jnp.clip(size - 1 - index, 0, None)]
  models = jnp.where(index < size, models, steps[0]).astype(jnp.int32)
  # No LLM available: no vertex, so every slot is -1 with NaN cost and loss
  # (an index of -1 would otherwise read the last LLM's).
  none = size == 0
  vertex = jnp.maximum(models, 0)
  return ParetoHull(jnp.where(none, -1, models),
                    jnp.where(none, jnp.nan, cost[vertex]),
                    jnp.where(none, jnp.nan, mean_loss[vertex]), size)


def _check_hull(hull) -> ParetoHull:
  if not isinstance(hull, ParetoHull):
    raise ValueError(f"hull must be a ParetoHull from zero_router_hull, got "
                     f"{type(hull).__name__}")
  if jnp.ndim(hull.models) != 1 or jnp.ndim(hull.size) != 0:
    raise ValueError(f"hull must be one hull (models [m], size a scalar), got "
                     f"models {jnp.shape(hull.models)}; for a batch of hulls, "
                     "jax.vmap the call")
  return hull


def zero_router_route(key, hull: ParetoHull, budget, *, num_prompts: int
                      ) -> Array:
  """Draws [num_prompts] LLM choices whose expected cost per prompt is ``budget``.

  Budgets below the cheapest vertex get the cheapest LLM, above the dearest
  the dearest; in between, each prompt goes to the lower vertex of the hull
  edge with probability (c_hi - B) / (c_hi - c_lo), else to the upper one.
  """
  checks.prng_key("key", key)
  hull = _check_hull(hull)
  n = checks.positive_int("num_prompts", num_prompts)
  budget = checks.scalar("budget", budget)
  return _route(key, hull, budget, num_prompts=n)


@checks.kernel(static_argnames=("num_prompts",))
def _route(key, hull, budget, *, num_prompts: int):
  budget = jnp.asarray(budget, hull.cost.dtype)
  checks.require(budget >= 0, "zero_router_route: budget must be non-negative")
  valid = jnp.arange(hull.models.shape[0]) < hull.size
  upper = jnp.argmax(valid & (hull.cost >= budget))
  upper = jnp.where(jnp.any(valid & (hull.cost >= budget)), upper, hull.size - 1)
  lower = jnp.maximum(upper - 1, 0)
  c_lo, c_hi = hull.cost[lower], hull.cost[upper]
  span = c_hi - c_lo
  p_lower = jnp.where(span > 0, (c_hi - budget) / jnp.where(span > 0, span, 1.0), 0.0)
  p_lower = jnp.clip(p_lower, 0.0, 1.0)
  to_lower = jax.random.bernoulli(key, p_lower, (num_prompts,))
  return jnp.where(to_lower, hull.models[lower], hull.models[upper]).astype(jnp.int32)


def zero_router_curve(hull: ParetoHull, true_loss, cost, *, pool_mask=None,
                      weights=None) -> metrics.DeferralCurve:
  """The exact deferral curve of ZeroRouter on labelled (test) prompts.

  The curve's points are the hull vertices' mean (cost, quality) on these
  prompts; mixing two neighbours at random traces the segment between them.

  Args:
    hull: from :func:`zero_router_hull` (fitted on validation prompts).
    true_loss: [n, m] loss on the evaluation prompts.
    cost: [m] or [n, m] costs on the evaluation prompts.
    pool_mask: optional [m] bool: the pool that sets max cost and the best
      single LLM's quality (the same pool the hull was fitted on).
    weights: optional [n] prompt weights.
  """
  hull = _check_hull(hull)
  truth = checks.float_array("true_loss", true_loss, ndim=2, shape_doc="[n, m]")
  n, m = truth.shape
  if hull.models.shape != (m,):
    raise ValueError(f"hull must be fitted on the same {m} LLMs as true_loss, "
                     f"got {hull.models.shape[0]}")
  cost = checks.cost("cost", cost, n, m)
  return _curve(hull, truth, cost, checks.mask("pool_mask", pool_mask, (m,)),
                checks.weights("weights", weights, n),
                dtype=checks.compute_dtype(truth, cost))


@checks.kernel(static_argnames=("dtype",))
def _curve(hull, truth, cost, pool_mask, w, *, dtype):
  n, m = truth.shape
  truth, cost = truth.astype(dtype), cost.astype(dtype)
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  pool = jnp.ones((m,), bool) if pool_mask is None else pool_mask.astype(bool)
  truth = jnp.where(w[:, None] > 0, truth, 0.0)
  points = metrics.single_llm_points(truth, cost, w)
  max_cost, best_quality = points.extremes(pool)
  valid = jnp.arange(m) < hull.size
  return metrics.curve_from_points(
      points.cost[hull.models], points.quality[hull.models], valid=valid,
      max_cost=max_cost, best_quality=best_quality)
