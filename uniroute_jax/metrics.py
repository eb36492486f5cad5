"""Deferral curves and their summaries: Area, Area(50%), QNC, peak quality.

Conventions (the paper leaves the normalisation open; these are ours):
- A deferral curve is the set of (mean cost per prompt, mean quality) points
  a router reaches as lambda sweeps [0, inf), quality = 1 - loss. The sweep
  is exact: it visits every switch point (see ``routing.switch_path``), and
  prompts that switch at the same lambda switch together.
- Relative cost = cost / the largest mean cost per prompt of any LLM in the
  pool, so relative cost 1 is "always the dearest LLM". When every LLM of
  the pool is free (largest cost 0), every point has relative cost 0: the
  curve is its best point, Area = peak quality, and QNC is 0 when the best
  single LLM's quality is reached, +inf otherwise.
- The curve is made monotone and then interpolated linearly: a point counts
  only if its quality beats every cheaper point (the upper envelope); left of
  the cheapest point the curve is flat at that point's quality, right of the
  dearest envelope point it is flat at its quality.
- Area = integral of quality over relative cost in [0, 1]; Area(50%) = the
  same integral over [0, 0.5], not rescaled.
- QNC = the smallest relative cost at which the curve reaches the quality of
  the most accurate single LLM of the pool (with the flat extension on the
  left, so 0 when the cheapest point already reaches it); +inf when never.
- Peak quality = the highest quality on the curve.
- A curve without any valid point (an empty pool) has NaN metrics.

Every function here is pure and jit / vmap safe; values are not checked
(see :mod:`uniroute_jax.checks`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import checks, ordering, routing
from uniroute_jax.types import Array


class DeferralCurve(NamedTuple):
  """Points of a deferral curve, padded to a static length.

  Attributes:
    lambdas: [p] the lambda from which each point's routing holds.
    cost: [p] mean cost per prompt (in the cost's own unit).
    quality: [p] mean quality, 1 - mean loss.
    valid: [p] bool; False marks padding and the transient states between
      prompts that switch at the same lambda (such a point holds no state
      the router reaches; its cost and quality are those before the group).
    max_cost: [] mean cost per prompt of the dearest LLM in the pool.
    best_quality: [] quality of the most accurate single LLM in the pool.
  """

  lambdas: Array
  cost: Array
  quality: Array
  valid: Array
  max_cost: Array
  best_quality: Array

  @property
  def relative_cost(self) -> Array:
    """[p] cost / max_cost (0 everywhere when the whole pool is free)."""
    return _relative(self.cost, self.max_cost)


class DeferralMetrics(NamedTuple):
  """Summaries of a deferral curve (see the module docstring)."""

  area: Array
  area50: Array
  qnc: Array
  peak_quality: Array


class Envelope(NamedTuple):
  """The monotone upper envelope of a curve, as a polyline.

  Attributes:
    relative_cost: [p] non-decreasing; repeated points pad the polyline.
    quality: [p] non-decreasing.
  """

  relative_cost: Array
  quality: Array


class SingleLLMPoints(NamedTuple):
  """Each LLM answering every prompt alone.

  Attributes:
    cost: [m] mean cost per prompt.
    quality: [m] mean quality, 1 - mean loss.
  """

  cost: Array
  quality: Array

  @property
  def relative_cost(self) -> Array:
    """[m] cost / the largest cost of these LLMs (0 everywhere when they
    are all free)."""
    return _relative(self.cost, jnp.max(self.cost))

  def extremes(self, pool):
    """(largest mean cost, best quality) over the available LLMs ``pool``."""
    return (jnp.max(jnp.where(pool, self.cost, -jnp.inf)),
            jnp.max(jnp.where(pool, self.quality, -jnp.inf)))


def _relative(cost, max_cost):
  positive = max_cost > 0
  return jnp.where(positive, cost / jnp.where(positive, max_cost, 1.0), 0.0)


def single_llm_points(true_loss, cost, weights) -> SingleLLMPoints:
  """Mean (cost, quality) of each LLM alone on the prompts, weighted.

  Traceable helper of the curves: ``true_loss`` [n, m], ``cost`` [m] or
  [n, m], ``weights`` [n] (not all zero).
  """
  share = weights[:, None] / jnp.sum(weights)
  per_model_cost = jnp.sum(share * jnp.broadcast_to(cost, true_loss.shape), axis=0)
  # A weighted mean of losses in [0, 1] lies in [0, 1]; rounding of the
  # sums may not, and a quality of -1e-7 would print as -0.000.
  per_model_quality = jnp.clip(1.0 - jnp.sum(share * true_loss, axis=0), 0.0, 1.0)
  return SingleLLMPoints(per_model_cost, per_model_quality)


def deferral_curve(predicted_loss, true_loss, cost, *, pool_mask=None,
                   weights=None, routing_cost=None) -> DeferralCurve:
  """The exact deferral curve of the rule argmin_m gamma_m(x) + lambda c_m.

  Args:
    predicted_loss: [n, m] finite gamma the router ranks LLMs by (for the
      per-prompt oracle, the true loss itself).
    true_loss: [n, m] the loss actually incurred, in [0, 1] (rows of zero
      weight may hold anything).
    cost: [m] or [n, m] non-negative costs actually paid.
    pool_mask: optional [m] bool; only available LLMs are routed to and
      count for ``max_cost`` and ``best_quality``.
    weights: optional [n] non-negative prompt weights, not all zero (0
      leaves a prompt out, e.g. one without labels for the whole pool).
    routing_cost: optional [m] or [n, m] costs the rule ranks LLMs by;
      default ``cost``. A prompt's own cost (which depends on the answer's
      length) is unknown before routing, so a real router ranks by an
      estimate such as each LLM's mean cost, while the curve accounts the
      cost paid.

  Returns:
    A :class:`DeferralCurve` with 1 + n (m - 1) points (the point at
    lambda = 0, then one per possible switch); no point is valid when the
    pool is empty.
  """
  gamma = checks.float_array("predicted_loss", predicted_loss, ndim=2,
                             shape_doc="[n, m]")
  truth = checks.float_array("true_loss", true_loss, ndim=2, shape_doc="[n, m]")
  if truth.shape != gamma.shape:
    raise ValueError(f"true_loss must have shape {gamma.shape} like "
                     f"predicted_loss, got {truth.shape}")
  n, m = gamma.shape
  if m < 1:
    raise ValueError("predicted_loss must have at least one LLM (column), "
                     f"got shape {gamma.shape}")
  cost = checks.cost("cost", cost, n, m)
  if routing_cost is not None:
    routing_cost = checks.cost("routing_cost", routing_cost, n, m)
  return _deferral_curve(
      gamma, truth, cost, checks.mask("pool_mask", pool_mask, (m,)),
      checks.weights("weights", weights, n), routing_cost,
      dtype=checks.compute_dtype(gamma, truth, cost))


@checks.kernel(static_argnames=("dtype",))
def _deferral_curve(gamma, truth, cost, pool_mask, w, routing_cost, *, dtype):
  n, m = gamma.shape
  gamma, truth, cost = (a.astype(dtype) for a in (gamma, truth, cost))
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  pool = jnp.ones((m,), bool) if pool_mask is None else pool_mask.astype(bool)
  checks.require(jnp.all(w >= 0) & jnp.any(w > 0), "deferral_curve: weights "
                 "must be non-negative with a positive entry")
  checks.require(jnp.all(jnp.where(w[:, None] > 0, (truth >= 0) & (truth <= 1),
                                   True)),
                 "deferral_curve: true_loss must lie in [0, 1]")
  truth = jnp.where(w[:, None] > 0, truth, 0.0)
  cost = jnp.broadcast_to(cost, gamma.shape)
  routing_cost = cost if routing_cost is None else routing_cost.astype(dtype)
  routing.require_path_inputs(gamma, cost, "deferral_curve")
  routing.require_path_inputs(gamma, routing_cost, "deferral_curve",
                              cost_name="routing_cost")
  path = routing.switch_path(gamma, routing_cost, pool_mask=pool)
  rows = jnp.arange(n)
  total = jnp.sum(w)
  # An empty pool leaves start at -1: no LLM answers, no point is valid.
  start = jnp.maximum(path.start, 0)

  def at(values, choice):
    return values[rows, choice]

  take = jax.vmap(at, in_axes=(None, 0))
  start_cost = jnp.sum(w * at(cost, start)) / total
  start_loss = jnp.sum(w * at(truth, start)) / total
  previous = jnp.concatenate([start[None], path.choice[:-1]], axis=0)
  moved = jnp.isfinite(path.lambdas)
  d_cost = jnp.where(moved, w[None, :] * (take(cost, path.choice) - take(cost, previous)), 0.0)
  d_loss = jnp.where(moved, w[None, :] * (take(truth, path.choice) - take(truth, previous)), 0.0)
  steps = jnp.stack([d_cost.reshape(-1), d_loss.reshape(-1)], axis=1)
  lambdas, running, last_of_group = jax.lax.platform_dependent(
      path.lambdas.reshape(-1), steps, cpu=_switches_booked_at_group_ends,
      default=_switches_in_sorted_order)
  running = running / total
  cost_curve, loss_curve = start_cost + running[:, 0], start_loss + running[:, 1]
  valid = jnp.isfinite(lambdas) & last_of_group
  max_cost, best_quality = single_llm_points(truth, cost, w).extremes(pool)
  zero = jnp.zeros((1,), gamma.dtype)
  return DeferralCurve(
      lambdas=jnp.concatenate([zero, lambdas]),
      cost=jnp.maximum(jnp.concatenate([start_cost[None], cost_curve]), 0.0),
      # Running sums of the switches' changes round: the true means lie in
      # [0, 1] (see single_llm_points).
      quality=jnp.clip(1.0 - jnp.concatenate([start_loss[None], loss_curve]),
                       0.0, 1.0),
      valid=jnp.concatenate([jnp.ones((1,), bool), valid]) & jnp.any(pool),
      max_cost=max_cost, best_quality=best_quality)


# Prompts that switch at the same lambda switch together, so a curve point
# is valid only at the last switch of its lambda; the sums there are the
# same whichever way the switches are ordered. Both functions below return
# (the lambdas ascending [E], running sums of ``steps`` [E, 2] in that
# order, [E] bool: last of its lambda).


def _switches_in_sorted_order(lambdas, steps):
  order = jnp.argsort(lambdas)
  lambdas = lambdas[order]
  return (lambdas, jnp.cumsum(steps[order], axis=0),
          jnp.append(lambdas[1:] != lambdas[:-1], True))


def _switches_booked_at_group_ends(lambdas, steps):
  # On a CPU a float argsort is several times slower than sorting integer
  # keys (see ``ordering``). Each switch is booked at the last position of
  # its lambda among the sorted ones; the positions before it in its group
  # then hold the state before the group. A scatter-add is deterministic
  # on a CPU only, hence this is the CPU's way.
  keys = ordering.order_keys(lambdas)
  ascending = jnp.sort(keys)
  _, last = ordering.group_bounds(keys, ascending)
  booked = jnp.zeros(steps.shape, steps.dtype).at[last].add(steps)
  return (ordering.from_order_keys(ascending, lambdas.dtype),
          jnp.cumsum(booked, axis=0),
          jnp.append(ascending[1:] != ascending[:-1], True))


def labelled_area(predicted_loss, loss, mask, cost) -> Array:
  """[] Area of routing a pool by ``predicted_loss`` on partly labelled prompts.

  Only prompts labelled for every LLM are scored (an unlabelled choice has
  no known loss); LLMs are ranked by their mean cost over the prompts, the
  cost a router knows before an answer, while the curve accounts the cost
  paid. Used to choose hyper-parameters and checkpoints on validation
  prompts.

  Args:
    predicted_loss: [n, m] gamma.
    loss: [n, m] true losses (anything where ``mask`` is False).
    mask: [n, m] bool, True where labelled; some prompt must be labelled
      for every LLM.
    cost: [m] or [n, m] costs paid.
  """
  gamma = checks.float_array("predicted_loss", predicted_loss, ndim=2,
                             shape_doc="[n, m]")
  n, m = gamma.shape
  loss = checks.float_array("loss", loss, ndim=2, shape_doc="[n, m]")
  if loss.shape != gamma.shape:
    raise ValueError(f"loss must have shape {gamma.shape} like predicted_loss, "
                     f"got {loss.shape}")
  mask = checks.mask("mask", mask, (n, m))
  cost = checks.cost("cost", cost, n, m)
  return _labelled_area(gamma, loss, mask, cost,
                        dtype=checks.compute_dtype(gamma, loss, cost))


@checks.kernel(static_argnames=("dtype",))
def _labelled_area(gamma, loss, mask, cost, *, dtype):
  mask = jnp.ones(gamma.shape, bool) if mask is None else mask.astype(bool)
  route_cost = jnp.mean(cost, axis=0) if cost.ndim == 2 else cost
  curve = deferral_curve(gamma, jnp.where(mask, loss, 0.0), cost,
                         weights=jnp.all(mask, axis=1).astype(dtype),
                         routing_cost=route_cost)
  return _deferral_metrics(curve, None).area


def curve_from_points(cost, quality, *, max_cost, best_quality, valid=None
                      ) -> DeferralCurve:
  """A :class:`DeferralCurve` from explicit (cost, quality) points [p]."""
  cost = checks.float_array("cost", cost, ndim=1, shape_doc="[p]")
  quality = checks.float_array("quality", quality, ndim=1, shape_doc="[p]")
  checks.same_size("cost", cost.shape[0], "quality", quality.shape[0], "points")
  max_cost = checks.scalar("max_cost", max_cost)
  best_quality = checks.scalar("best_quality", best_quality)
  valid = checks.mask("valid", valid, cost.shape)
  return _curve_from_points(cost, quality, max_cost, best_quality, valid,
                            dtype=checks.compute_dtype(cost, quality))


@checks.kernel(static_argnames=("dtype",))
def _curve_from_points(cost, quality, max_cost, best_quality, valid, *, dtype):
  valid = jnp.ones(cost.shape, bool) if valid is None else valid.astype(bool)
  return DeferralCurve(jnp.full(cost.shape, jnp.nan, dtype), cost.astype(dtype),
                       quality.astype(dtype), valid,
                       jnp.asarray(max_cost, dtype),
                       jnp.asarray(best_quality, dtype))


def _check_curve(curve) -> DeferralCurve:
  if not isinstance(curve, DeferralCurve):
    raise ValueError(f"curve must be a DeferralCurve (from deferral_curve or "
                     f"curve_from_points), got {type(curve).__name__}")
  if jnp.ndim(curve.cost) != 1 or jnp.shape(curve.quality) != jnp.shape(
      curve.cost) or jnp.ndim(curve.max_cost) != 0:
    raise ValueError(
        f"curve must be one curve (cost and quality [p], max_cost a scalar), "
        f"got cost {jnp.shape(curve.cost)} and max_cost "
        f"{jnp.shape(curve.max_cost)}; for a batch of curves, jax.vmap the "
        "call")
  return curve


def upper_envelope(curve: DeferralCurve) -> Envelope:
  """The monotone upper envelope of ``curve`` in relative cost.

  Points are sorted by cost (ties: higher quality first); a point is on the
  envelope when its quality beats every cheaper point. Points that are not
  are replaced by the last envelope point before them, so the polyline keeps
  the curve's static length.
  """
  return _upper_envelope(_check_curve(curve))


@checks.kernel
def _upper_envelope(curve):
  rel = jnp.where(curve.valid, _relative(curve.cost, curve.max_cost), jnp.inf)
  quality = jnp.where(curve.valid, curve.quality, -jnp.inf)
  keys = ordering.order_keys(rel)
  ascending = jnp.sort(keys)
  first, _ = ordering.group_bounds(keys, ascending)
  # Points sorted by cost; of points of equal cost only the best can be on
  # the envelope: it stands at the first position of their group.
  quality = jnp.full(quality.shape, -jnp.inf, quality.dtype).at[first].max(quality)
  rel = ordering.from_order_keys(ascending, rel.dtype)
  best_before = jnp.concatenate(
      [jnp.full((1,), -jnp.inf, quality.dtype),
       jax.lax.cummax(quality)[:-1]])
  on_envelope = (quality > best_before) & jnp.isfinite(rel)
  index = jnp.arange(rel.shape[0])
  last = jax.lax.cummax(jnp.where(on_envelope, index, -1))
  # The first point is on the envelope whenever the curve has a valid point.
  last = jnp.maximum(last, 0)
  return Envelope(rel[last], quality[last])


def _area(env: Envelope, upper):
  """Integral over [0, upper] of the flat-extended envelope polyline."""
  x, y = env.relative_cost, env.quality
  x0, x1, y0, y1 = x[:-1], x[1:], y[:-1], y[1:]
  a, b = jnp.minimum(x0, upper), jnp.minimum(x1, upper)
  width = x1 - x0
  slope = jnp.where(width > 0, (y1 - y0) / jnp.where(width > 0, width, 1.0), 0.0)
  ya, yb = y0 + slope * (a - x0), y0 + slope * (b - x0)
  inner = jnp.sum((b - a) * (ya + yb) / 2.0)
  left = y[0] * jnp.minimum(x[0], upper)
  right = y[-1] * jnp.maximum(upper - x[-1], 0.0)
  return left + inner + right


def _reach(env: Envelope, target, slack):
  """Smallest relative cost at which the envelope reaches ``target``.

  A point within ``slack`` below the target counts as reaching it.
  """
  x, y = env.relative_cost, env.quality
  reached = y >= target - slack
  first = jnp.argmax(reached)
  prev = jnp.maximum(first - 1, 0)
  dy = y[first] - y[prev]
  frac = jnp.where(dy > 0, (target - y[prev]) / jnp.where(dy > 0, dy, 1.0), 1.0)
  crossing = x[prev] + jnp.clip(frac, 0.0, 1.0) * (x[first] - x[prev])
  value = jnp.where(first == 0, 0.0, crossing)
  return jnp.where(jnp.any(reached), value, jnp.inf)


def interpolate(env: Envelope, relative_cost) -> Array:
  """Quality of the flat-extended envelope at the given relative costs."""
  x, y = env.relative_cost, env.quality
  # jnp.interp wants strictly increasing x; padding repeats are harmless
  # because repeated points carry equal y.
  return jnp.interp(relative_cost, x, y)


def deferral_metrics(curve: DeferralCurve, *, rtol=None) -> DeferralMetrics:
  """Area, Area(50%), QNC and peak quality of a deferral curve.

  Args:
    curve: a :class:`DeferralCurve`.
    rtol: relative slack when testing whether the curve reaches the best
      single LLM's quality; both are means accumulated in floating point, so
      an exact tie can land a few ulps short. Default: 64 ulps of the dtype.

  Returns:
    :class:`DeferralMetrics`, NaN when the curve has no valid point.

  Examples:
    The per-prompt oracle on two prompts; the cheap LLM fails the first:

    >>> import numpy as np
    >>> loss = np.array([[1, 0], [0, 0]], np.float32)
    >>> curve = deferral_curve(loss, loss, np.array([1, 2], np.float32))
    >>> m = deferral_metrics(curve)
    >>> [round(float(v), 4) for v in (m.area, m.area50, m.qnc, m.peak_quality)]
    [0.6875, 0.25, 0.75, 1.0]
  """
  curve = _check_curve(curve)
  if rtol is not None:
    rtol = checks.scalar("rtol", rtol)
  return _deferral_metrics(curve, rtol)


@checks.kernel
def _deferral_metrics(curve, rtol):
  if curve.cost.shape[-1] == 0:
    # No point at all (a static shape): nothing is defined.
    nan = jnp.full(curve.cost.shape[:-1], jnp.nan, curve.quality.dtype)
    return DeferralMetrics(nan, nan, nan, nan)
  env = _upper_envelope(curve)
  dtype = env.quality.dtype
  if rtol is None:
    rtol = 64 * jnp.finfo(dtype).eps
  slack = rtol * jnp.abs(curve.best_quality)
  metrics = DeferralMetrics(
      area=_area(env, jnp.asarray(1.0, dtype)),
      area50=_area(env, jnp.asarray(0.5, dtype)),
      qnc=_reach(env, curve.best_quality, slack),
      peak_quality=jnp.max(env.quality))
  # A point of no prompt (n = 0, or every weight 0) has a NaN quality: the
  # curve then has no point, and QNC is as undefined as the Area.
  defined = jnp.any(curve.valid & jnp.isfinite(curve.quality))
  return DeferralMetrics(*(jnp.where(defined, v, jnp.nan) for v in metrics))
