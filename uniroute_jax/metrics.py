"""Deferral curves and their summaries: Area, Area(50%), QNC, peak quality.

Conventions (the paper leaves the normalisation open; these are ours):
- A deferral curve is the set of (mean cost per prompt, mean quality) points
  a router reaches as lambda sweeps [0, inf), quality = 1 - loss. The sweep
  is exact: it visits every switch point (see ``routing.switch_path``), and
  prompts that switch at the same lambda switch together.
- Relative cost = cost / the largest mean cost per prompt of any LLM in the
  pool, so relative cost 1 is "always the dearest LLM".
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
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import _validation as check
from uniroute_jax import routing
from uniroute_jax.types import Array


class DeferralCurve(NamedTuple):
  """Points of a deferral curve, padded to a static length.

  Attributes:
    lambdas: [p] the lambda from which each point's routing holds.
    cost: [p] mean cost per prompt (in the cost's own unit).
    quality: [p] mean quality, 1 - mean loss.
    valid: [p] bool; False marks padding (and transient states between
      prompts that switch at the same lambda).
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
    return self.cost / self.max_cost


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


def _single_llm_points(true_loss, cost, w):
  """([m] mean cost, [m] quality) of each LLM answering every prompt alone."""
  share = w[:, None] / jnp.sum(w)
  per_model_cost = jnp.sum(share * jnp.broadcast_to(cost, true_loss.shape), axis=0)
  per_model_quality = 1.0 - jnp.sum(share * true_loss, axis=0)
  return per_model_cost, per_model_quality


def _pool_summaries(true_loss, cost, pool, w):
  """(max mean cost, best quality) over the available LLMs."""
  per_model_cost, per_model_quality = _single_llm_points(true_loss, cost, w)
  max_cost = jnp.max(jnp.where(pool, per_model_cost, -jnp.inf))
  best_quality = jnp.max(jnp.where(pool, per_model_quality, -jnp.inf))
  return max_cost, best_quality


def deferral_curve(predicted_loss, true_loss, cost, *, pool_mask=None,
                   weights=None, routing_cost=None) -> DeferralCurve:
  """The exact deferral curve of the rule argmin_m gamma_m(x) + lambda c_m.

  Args:
    predicted_loss: [n, m] gamma the router ranks LLMs by (for the
      per-prompt oracle, the true loss itself).
    true_loss: [n, m] the loss actually incurred, in [0, 1].
    cost: [m] or [n, m] non-negative costs actually paid.
    pool_mask: optional [m] bool; only available LLMs are routed to and
      count for ``max_cost`` and ``best_quality``.
    weights: optional [n] non-negative prompt weights (0 leaves a prompt
      out, e.g. one without labels for the whole pool).
    routing_cost: optional [m] or [n, m] costs the rule ranks LLMs by;
      default ``cost``. A prompt's own cost (which depends on the answer's
      length) is unknown before routing, so a real router ranks by an
      estimate such as each LLM's mean cost, while the curve accounts the
      cost paid.

  Returns:
    A :class:`DeferralCurve` with 1 + n (m - 1) points (the point at
    lambda = 0, then one per possible switch).
  """
  dtype = check.compute_dtype(predicted_loss, true_loss, cost)
  gamma = check.array("predicted_loss", predicted_loss, ndim=2, dtype=dtype,
                      shape_doc="[n, m]")
  truth = check.array("true_loss", true_loss, ndim=2, dtype=dtype,
                      shape_doc="[n, m]")
  if truth.shape != gamma.shape:
    raise ValueError(f"true_loss must have shape {gamma.shape} like "
                     f"predicted_loss, got {truth.shape}")
  n, m = gamma.shape
  check.finite("predicted_loss", gamma)
  w = check.weights("weights", weights, n, dtype)
  check.in_range("true_loss", truth, 0.0, 1.0,
                 where=None if weights is None else (w > 0)[:, None])
  cost, pool = routing._check_cost_and_pool(cost, pool_mask, n, m, dtype)
  if routing_cost is None:
    routing_cost = cost
  else:
    routing_cost = check.array("routing_cost", routing_cost, ndim=(1, 2),
                               dtype=dtype, shape_doc="[m] or [n, m]")
    if routing_cost.shape not in ((m,), (n, m)):
      raise ValueError(f"routing_cost must have shape [{m}] or [{n}, {m}], "
                       f"got {routing_cost.shape}")
    check.nonnegative("routing_cost", routing_cost)
  if check.is_concrete(cost) and check.is_concrete(pool):
    max_cost, _ = _pool_summaries(jnp.zeros_like(truth), cost, pool, w)
    if not float(max_cost) > 0:
      raise ValueError("cost must be positive for at least one available LLM")
  return _deferral_curve(gamma, truth, cost, pool, w, routing_cost)


@jax.jit
def _deferral_curve(gamma, truth, cost, pool, w, routing_cost=None):
  n, m = gamma.shape
  truth = jnp.where(w[:, None] > 0, truth, 0.0)
  cost = jnp.broadcast_to(cost, gamma.shape)
  if routing_cost is None:
    routing_cost = cost
  path = routing._switch_path(gamma, routing_cost, pool)
  rows = jnp.arange(n)
  total = jnp.sum(w)

  def at(values, choice):
    return values[rows, choice]

  take = jax.vmap(at, in_axes=(None, 0))
  start_cost = jnp.sum(w * at(cost, path.start)) / total
  start_loss = jnp.sum(w * at(truth, path.start)) / total
  previous = jnp.concatenate([path.start[None], path.choice[:-1]], axis=0)
  moved = jnp.isfinite(path.lambdas)
  d_cost = jnp.where(moved, w[None, :] * (take(cost, path.choice) - take(cost, previous)), 0.0)
  d_loss = jnp.where(moved, w[None, :] * (take(truth, path.choice) - take(truth, previous)), 0.0)
  lambdas = path.lambdas.reshape(-1)
  order = jnp.argsort(lambdas)
  lambdas = lambdas[order]
  cost_curve = start_cost + jnp.cumsum(d_cost.reshape(-1)[order]) / total
  loss_curve = start_loss + jnp.cumsum(d_loss.reshape(-1)[order]) / total
  # Prompts that switch at the same lambda switch together: keep only the
  # state after the last of them.
  last_of_group = jnp.append(lambdas[1:] != lambdas[:-1], True)
  valid = jnp.isfinite(lambdas) & last_of_group
  max_cost, best_quality = _pool_summaries(truth, cost, pool, w)
  zero = jnp.zeros((1,), gamma.dtype)
  return DeferralCurve(
      lambdas=jnp.concatenate([zero, lambdas]),
      cost=jnp.concatenate([start_cost[None], cost_curve]),
      quality=1.0 - jnp.concatenate([start_loss[None], loss_curve]),
      valid=jnp.concatenate([jnp.ones((1,), bool), valid]),
      max_cost=max_cost, best_quality=best_quality)


def _labelled_area(gamma, loss, mask, cost):
  """Area of routing a pool by ``gamma`` on prompts with partial labels.

  Only prompts labelled for every LLM are scored (an unlabelled choice has
  no known loss); LLMs are ranked by their mean cost over the prompts, the
  cost a router knows before an answer, while the curve accounts the cost
  paid. ``cost`` is [m] or [n, m].
  """
  route_cost = jnp.mean(cost, axis=0) if cost.ndim == 2 else cost
  curve = _deferral_curve(
      gamma, jnp.where(mask, loss, 0.0), cost, jnp.ones(gamma.shape[1], bool),
      jnp.all(mask, axis=1).astype(gamma.dtype), route_cost)
  return _deferral_metrics(curve, None).area


def curve_from_points(cost, quality, *, max_cost, best_quality, valid=None
                      ) -> DeferralCurve:
  """A :class:`DeferralCurve` from explicit (cost, quality) points [p]."""
  dtype = check.compute_dtype(cost, quality)
  cost = check.array("cost", cost, ndim=1, dtype=dtype, shape_doc="[p]")
  quality = check.array("quality", quality, ndim=1, dtype=dtype, shape_doc="[p]")
  check.same_size("cost", cost.shape[0], "quality", quality.shape[0], "points")
  valid = check.bool_mask("valid", valid, cost.shape)
  return DeferralCurve(jnp.full(cost.shape, jnp.nan, dtype), cost, quality,
                       valid, jnp.asarray(max_cost, dtype),
                       jnp.asarray(best_quality, dtype))


def upper_envelope(curve: DeferralCurve) -> Envelope:
  """The monotone upper envelope of ``curve`` in relative cost.

  Points are sorted by cost (ties: higher quality first); a point is on the
  envelope when its quality beats every cheaper point. Points that are not
  are replaced by the last envelope point before them, so the polyline keeps
  the curve's static length.
  """
  return _upper_envelope(curve)


@jax.jit
def _upper_envelope(curve):
  rel = jnp.where(curve.valid, curve.cost / curve.max_cost, jnp.inf)
  quality = jnp.where(curve.valid, curve.quality, -jnp.inf)
  order = jnp.lexsort((-quality, rel))
  rel, quality = rel[order], quality[order]
  best_before = jnp.concatenate(
      [jnp.full((1,), -jnp.inf, quality.dtype),
       jax.lax.cummax(quality)[:-1]])
  on_envelope = (quality > best_before) & jnp.isfinite(rel)
  index = jnp.arange(rel.shape[0])
  last = jax.lax.cummax(jnp.where(on_envelope, index, -1))
  # The first point is always on the envelope (curves have >= 1 valid point).
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

  Examples:
    The per-prompt oracle on two prompts; the cheap LLM fails the first:

    >>> import numpy as np
    >>> loss = np.array([[1, 0], [0, 0]], np.float32)
    >>> curve = deferral_curve(loss, loss, np.array([1, 2], np.float32))
    >>> m = deferral_metrics(curve)
    >>> [round(float(v), 4) for v in (m.area, m.area50, m.qnc, m.peak_quality)]
    [0.6875, 0.25, 0.75, 1.0]
  """
  return _deferral_metrics(curve, rtol)


@jax.jit
def _deferral_metrics(curve, rtol):
  env = _upper_envelope(curve)
  dtype = env.quality.dtype
  if rtol is None:
    rtol = 64 * jnp.finfo(dtype).eps
  slack = rtol * jnp.abs(curve.best_quality)
  return DeferralMetrics(
      area=_area(env, jnp.asarray(1.0, dtype)),
      area50=_area(env, jnp.asarray(0.5, dtype)),
      qnc=_reach(env, curve.best_quality, slack),
      peak_quality=jnp.max(env.quality))
