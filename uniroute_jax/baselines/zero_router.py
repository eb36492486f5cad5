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

from uniroute_jax import _validation as check
from uniroute_jax import metrics
from uniroute_jax import routing
from uniroute_jax.types import Array


class ParetoHull(NamedTuple):
  """Vertices of the lower convex hull of the pool's (cost, loss) points.

  Attributes:
    models: [m] int32 vertex LLMs from cheapest to dearest; entries past
      ``size`` repeat the dearest vertex.
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
    cost: [m] each LLM's cost.
    pool_mask: optional [m] bool.
  """
  dtype = check.compute_dtype(mean_loss, cost)
  mean_loss = check.array("mean_loss", mean_loss, ndim=1, dtype=dtype,
                          shape_doc="[m]")
  cost = check.array("cost", cost, ndim=1, dtype=dtype, shape_doc="[m]")
  check.same_size("mean_loss", mean_loss.shape[0], "cost", cost.shape[0], "LLMs")
  path = routing.switch_path(mean_loss[None], cost, pool_mask=pool_mask)
  return _hull_from_path(path, mean_loss, cost)


@jax.jit
def _hull_from_path(path, mean_loss, cost):
  # The path walks from the most accurate vertex down to the cheapest one.
  steps = jnp.concatenate([path.start, path.choice[:, 0]])
  moved = jnp.concatenate([jnp.ones((1,), bool), jnp.isfinite(path.lambdas[:, 0])])
  size = jnp.sum(moved).astype(jnp.int32)
  # Reverse the visited prefix so vertices run cheapest first; pad with the
  # dearest vertex.
  index = jnp.arange(steps.shape[0])
  models = steps[jnp.clip(size - 1 - index, 0, None)]
  models = jnp.where(index < size, models, steps[0]).astype(jnp.int32)
  return ParetoHull(models, cost[models], mean_loss[models], size)


def zero_router_route(key, hull: ParetoHull, budget, *, num_prompts: int
                      ) -> Array:
  """Draws [num_prompts] LLM choices whose expected cost per prompt is ``budget``.

  Budgets below the cheapest vertex get the cheapest LLM, above the dearest
  the dearest; in between, each prompt goes to the lower vertex of the hull
  edge with probability (c_hi - B) / (c_hi - c_lo), else to the upper one.
  """
  n = check.positive_int("num_prompts", num_prompts)
  check.nonnegative("budget", jnp.asarray(budget))
  return _route(key, hull, jnp.asarray(budget, hull.cost.dtype), n)


def _route(key, hull, budget, n):
  valid = jnp.arange(hull.models.shape[0]) < hull.size
  upper = jnp.argmax(valid & (hull.cost >= budget))
  upper = jnp.where(jnp.any(valid & (hull.cost >= budget)), upper, hull.size - 1)
  lower = jnp.maximum(upper - 1, 0)
  c_lo, c_hi = hull.cost[lower], hull.cost[upper]
  span = c_hi - c_lo
  p_lower = jnp.where(span > 0, (c_hi - budget) / jnp.where(span > 0, span, 1.0), 0.0)
  p_lower = jnp.clip(p_lower, 0.0, 1.0)
  to_lower = jax.random.bernoulli(key, p_lower, (n,))
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
  dtype = check.compute_dtype(true_loss, cost)
  truth = check.array("true_loss", true_loss, ndim=2, dtype=dtype,
                      shape_doc="[n, m]")
  n, m = truth.shape
  if hull.models.shape != (m,):
    raise ValueError(f"hull must be fitted on the same {m} LLMs as true_loss, "
                     f"got {hull.models.shape[0]}")
  cost, pool = routing._check_cost_and_pool(cost, pool_mask, n, m, dtype)
  w = check.weights("weights", weights, n, dtype)
  truth = jnp.where(w[:, None] > 0, truth, 0.0)
  model_cost, model_quality = metrics._single_llm_points(truth, cost, w)
  max_cost, best_quality = metrics._pool_summaries(truth, cost, pool, w)
  valid = jnp.arange(m) < hull.size
  return metrics.curve_from_points(
      model_cost[hull.models], model_quality[hull.models], valid=valid,
      max_cost=max_cost, best_quality=best_quality)
