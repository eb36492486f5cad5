"""Excess risk: how far a router is from the per-prompt oracle, and why.

For a rule r and a trade-off lambda, the risk on labelled prompts is

  R_lambda(r) = E_x[ l(x, r(x)) + lambda c(x, r(x)) ],

and the per-prompt oracle, which knows every label and every cost, has the
least: R_lambda(oracle) = E_x[ min_h l(x, h) + lambda c(x, h) ]. Their
difference is the router's excess risk (:func:`excess_risk`).

A cluster router routes by gamma = Phi(x)^T Psi-hat, with Psi-hat measured
on a few representative prompts. Measuring the same clusters' errors on the
evaluation prompts themselves gives Psi-star, the best feature vectors those
clusters allow, and splits the excess in two (:func:`excess_decomposition`,
:func:`area_decomposition`):

  excess = [R(Psi-hat rule) - R(Psi-star rule)]   estimation: more labelled
                                                  prompts shrink it
         + [R(Psi-star rule) - R(oracle)]         approximation: what these
                                                  clusters miss with every
                                                  label known.

The per-prompt oracle sees each prompt's realised label, so the
approximation part also holds the labels' own noise, R(Bayes) - R(oracle),
which no router removes. Prop. 2 of the paper bounds the rest,
R(Psi-star rule) - R(Bayes), by the clusters' impurity
2 E_x[max_h |P(h wrong | x) - Psi*_k(x)(h)|] (:func:`impurity_bound`;
:func:`neighborhood_error` estimates P(h wrong | x) from 0/1 labels, and
:func:`impurity_bounds` computes the bound for many K at once), so a user
sees whether more clusters would help. Psi-star is measured on the prompts
it is scored on, so the approximation part also falls mechanically as K
nears the number of those prompts.

Conventions, those of the protocol: a prompt missing a label for any
available LLM is left out (weight 0), since its routed loss would be
unknown; the rule ranks LLMs by ``routing_cost`` (default the costs paid)
and pays ``cost``; every function is pure, jit / vmap safe, and checks
shapes at trace time, values only under :func:`~uniroute_jax.checked`.
Where no prompt counts, risks are NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import blocks, checks, clustering, features, metrics, routing
from uniroute_jax.types import PRECISION, Array


class ExcessRisk(NamedTuple):
  """A rule's risk and the per-prompt oracle's, per lambda ([L] or [])."""

  risk: Array
  oracle: Array
  excess: Array


class ExcessDecomposition(NamedTuple):
  """A cluster router's excess risk split into estimation and approximation.

  Attributes:
    risk: [L] (or []) risk of the rule with the given Psi (Psi-hat).
    cluster_risk: risk of the same rule with Psi-star, the clusters' errors
      on the evaluation prompts themselves.
    oracle: risk of the per-prompt oracle.
    estimation: ``risk - cluster_risk``.
    approximation: ``cluster_risk - oracle`` (never negative).
    psi_star: [k, m] Psi-star.
  """

  risk: Array
  cluster_risk: Array
  oracle: Array
  estimation: Array
  approximation: Array
  psi_star: Array

  @property
  def excess(self) -> Array:
    return self.risk - self.oracle


class AreaDecomposition(NamedTuple):
  """The same split in deferral-curve Areas (quality integrated over the
  relative cost in [0, 1], :mod:`uniroute_jax.metrics`), each []."""

  area: Array           # the rule with Psi-hat
  cluster_area: Array   # the rule with Psi-star
  oracle_area: Array    # the per-prompt oracle
  estimation: Array     # cluster_area - area
  approximation: Array  # oracle_area - cluster_area

  @property
  def gap(self) -> Array:
    return self.oracle_area - self.area


class ImpurityBound(NamedTuple):
  """Prop. 2's right-hand side and what it is made of.

  Attributes:
    bound: [] 2 E_x[max_h Delta(x, h)].
    delta: [n] max_h Delta(x, h) of each prompt (0 where it has no weight).
    psi_star: [k, m] each cluster's mean error probability.
  """

  bound: Array
  delta: Array
  psi_star: Array


class NeighborhoodError(NamedTuple):
  """A smoothed P(h wrong | x): the mean loss over a prompt's neighbours.

  Attributes:
    error: [n, m] the estimate (the LLM's mean over the prompt's cluster
      where no neighbour is labelled for it).
    counts: [n, m] (weighted) labelled neighbours behind each entry.
    Both are 0 for prompts of weight 0.
  """

  error: Array
  counts: Array


# ------------------------------------------------------------ the boundary


def _loss_and_cost(loss, cost, name="loss"):
  loss = checks.float_array(name, loss, ndim=2, shape_doc="[n, m]")
  n, m = loss.shape
  if m < 1:
    raise ValueError(f"{name} must have at least one LLM (column), got shape "
                     f"{loss.shape}")
  return loss, checks.cost("cost", cost, n, m), n, m


def _common(n, m, mask, pool_mask, weights, routing_cost):
  return (checks.mask("mask", mask, (n, m)),
          checks.mask("pool_mask", pool_mask, (m,)),
          checks.weights("weights", weights, n),
          None if routing_cost is None else checks.cost("routing_cost",
                                                        routing_cost, n, m))


def _cluster_rule(membership, psi, loss, cost):
  """The shapes of a cluster rule's arguments, checked: (membership, psi,
  loss, cost, n, m)."""
  psi = checks.float_array("psi", psi, ndim=2, shape_doc="[k, m]")
  membership = checks.membership(membership, psi.shape[0])
  loss, cost, n, m = _loss_and_cost(loss, cost)
  checks.same_size("membership", membership.shape[0], "loss", n, "prompts")
  checks.same_size("psi", psi.shape[1], "loss", m, "LLMs")
  return membership, psi, loss, cost, n, m


def excess_risk(predicted_loss, loss, cost, lambdas, *, mask=None,
                pool_mask=None, weights=None, routing_cost=None) -> ExcessRisk:
  """Risk of routing by ``predicted_loss`` and of the per-prompt oracle.

  Args:
    predicted_loss: [n, m] gamma the rule ranks LLMs by (finite where a
      prompt counts).
    loss: [n, m] true losses in [0, 1] (anything where ``mask`` is False).
    cost: [m] or [n, m] non-negative costs paid.
    lambdas: a scalar or [L] non-negative trade-offs (traced).
    mask: optional [n, m] bool, False where a label is missing.
    pool_mask: optional [m] bool, the available LLMs.
    weights: optional [n] non-negative prompt weights.
    routing_cost: optional [m] or [n, m] costs the rule ranks by (the
      oracle always ranks by the costs paid).

  Returns:
    An :class:`ExcessRisk` with [L] (or []) entries; ``excess`` is never
    negative (beyond the rounding of the scores), and exactly 0 for the
    oracle's own rule.

  Examples:
    >>> import numpy as np
    >>> loss = np.array([[0., 1.], [1., 0.]], np.float32)
    >>> gamma = np.array([[0.5, 0.4], [0.5, 0.4]], np.float32)
    >>> excess_risk(gamma, loss, np.array([1., 1.], np.float32), 0.0).excess
    Array(0.5, dtype=float32)
  """
  gamma = checks.float_array("predicted_loss", predicted_loss, ndim=2,
                             shape_doc="[n, m]")
  loss, cost, n, m = _loss_and_cost(loss, cost)
  if gamma.shape != loss.shape:
    raise ValueError(f"predicted_loss must have shape {loss.shape} like loss, "
                     f"got {gamma.shape}")
  lambdas = checks.lambdas(lambdas)
  return _excess_risk(gamma, loss, cost, lambdas,
                      *_common(n, m, mask, pool_mask, weights, routing_cost),
                      dtype=checks.compute_dtype(gamma, loss, cost))


def excess_decomposition(membership, psi, loss, cost, lambdas, *, mask=None,
                         pool_mask=None, weights=None, routing_cost=None
                         ) -> ExcessDecomposition:
  """A cluster router's excess risk, split into estimation and approximation.

  Psi-star is :func:`~uniroute_jax.features.cluster_errors` of the
  evaluation prompts themselves (the ones that count, with their weights),
  so the rule with Psi-star is the best these clusters allow: with hard
  clusters and per-LLM costs ranked as paid, it minimises every cluster's
  share of the risk, and ``estimation`` is never negative either. With
  soft memberships or per-prompt costs ranked by an estimate, estimation
  can be slightly negative.

  Args:
    membership: [n] int cluster of each evaluation prompt, or [n, k]
      cluster probabilities (a learned map).
    psi: [k, m] the feature vectors the router routes with (Psi-hat).
    loss, cost, lambdas, mask, pool_mask, weights, routing_cost: as
      :func:`excess_risk`.

  Returns:
    An :class:`ExcessDecomposition`.
  """
  membership, psi, loss, cost, n, m = _cluster_rule(membership, psi, loss,
                                                    cost)
  lambdas = checks.lambdas(lambdas)
  return _excess_decomposition(
      membership, psi, loss, cost, lambdas,
      *_common(n, m, mask, pool_mask, weights, routing_cost),
      dtype=checks.membership_dtype(membership, psi, loss, cost))


def area_decomposition(membership, psi, loss, cost, *, mask=None,
                       pool_mask=None, weights=None, routing_cost=None
                       ) -> AreaDecomposition:
  """:func:`excess_decomposition` integrated over the deferral curve's cost
  range: the Areas of the rule with Psi-hat, with Psi-star and of the
  oracle (:func:`~uniroute_jax.metrics.deferral_metrics`), and their gaps.

  Arguments as :func:`excess_decomposition`, without lambdas. An Area is
  measured on the upper envelope of its curve, so the gaps are not sums of
  per-lambda gaps, and ``estimation`` can be slightly negative.
  """
  membership, psi, loss, cost, n, m = _cluster_rule(membership, psi, loss,
                                                    cost)
  return _area_decomposition(
      membership, psi, loss, cost,
      *_common(n, m, mask, pool_mask, weights, routing_cost),
      dtype=checks.membership_dtype(membership, psi, loss, cost))


def impurity_bound(membership, error_probability, *, num_clusters: int,
                   pool_mask=None, weights=None) -> ImpurityBound:
  """Prop. 2's bound on the cluster rule's excess risk over the Bayes rule.

  With Psi*_k(h) the mean of ``error_probability`` over cluster k,
  Delta(x, h) = |P(h wrong | x) - Psi*_k(x)(h)| and the bound is
  2 E_x[max_h Delta(x, h)] (the paper's proof gives the constant 2). It
  holds for every lambda at once: the rule with Psi-star misjudges no LLM's
  expected loss by more than max_h Delta(x, h) on any prompt.

  Args:
    membership: [n] int cluster of each prompt (hard: a prompt belongs to
      one cluster; for a soft map its most probable cluster, which bounds
      the hard rule of that map rather than the soft router itself).
    error_probability: [n, m] P(h wrong | x) in [0, 1]: known on synthetic
      data or from repeated samples, else estimated
      (:func:`neighborhood_error`).
    num_clusters: k (static).
    pool_mask: optional [m] bool: the max runs over available LLMs only.
    weights: optional [n] non-negative prompt weights (0 leaves a prompt out).

  Returns:
    An :class:`ImpurityBound` (NaN bound for an empty pool or no weight).
  """
  eta = checks.float_array("error_probability", error_probability, ndim=2,
                           shape_doc="[n, m]")
  n, m = eta.shape
  membership = checks.integer_array("membership", membership, ndim=1,
                                    shape_doc="[n] (cluster indices)")
  checks.same_size("membership", membership.shape[0], "error_probability", n,
                   "prompts")
  k = checks.positive_int("num_clusters", num_clusters)
  return _impurity_bound(membership, eta,
                         checks.mask("pool_mask", pool_mask, (m,)),
                         checks.weights("weights", weights, n),
                         num_clusters=k, dtype=checks.compute_dtype(eta))


def neighborhood_error(embeddings, loss, *, membership=None,
                       num_neighbors: int = 10, mask=None, weights=None
                       ) -> NeighborhoodError:
  """P(h wrong | x) estimated by the mean loss of x's nearest prompts (x
  included), the smoother :func:`impurity_bound` needs when each prompt
  carries a single 0/1 label.

  A prompt's neighbours are every prompt at most as far as its
  ``num_neighbors``-th nearest, so prompts at equal distance (duplicates)
  all count and equal embeddings get equal estimates. With ``membership``
  the neighbours are searched within the prompt's own cluster; without it
  (the default) among all prompts, so the estimate does not depend on any
  clustering and can be compared across K.

  Which way it is biased: with few neighbours the labels' own noise
  dominates, and by Jensen's inequality E|p-hat - Psi| >= |E p-hat - Psi|,
  so Delta is overestimated (more so after the max over LLMs); with many
  neighbours p-hat is smoothed across the prompts' differences and Delta
  is underestimated. The default of 10 neighbours leans to the first: the
  bound it gives errs high.

  Args:
    embeddings: [n, d] prompt embeddings (Euclidean distances, as k-means).
    loss: [n, m] losses in [0, 1] (anything where ``mask`` is False).
    membership: optional [n] int cluster of each prompt.
    num_neighbors: neighbours per prompt (static), capped at n.
    mask: optional [n, m] bool, False where a label is missing.
    weights: optional [n] non-negative prompt weights; a prompt of weight 0
      is nobody's neighbour.

  Returns:
    A :class:`NeighborhoodError`. Memory grows as n^2 (all distances).
  """
  x = checks.float_array("embeddings", embeddings, ndim=2, shape_doc="[n, d]")
  loss = checks.float_array("loss", loss, ndim=2, shape_doc="[n, m]")
  n, m = loss.shape
  checks.same_size("embeddings", x.shape[0], "loss", n, "prompts")
  if membership is not None:
    membership = checks.integer_array("membership", membership, ndim=1,
                                      shape_doc="[n] (cluster indices)")
    checks.same_size("membership", membership.shape[0], "loss", n, "prompts")
  k = min(checks.positive_int("num_neighbors", num_neighbors), n)
  return _neighborhood_error(x, membership, loss, checks.mask("mask", mask, (n, m)),
                             checks.weights("weights", weights, n),
                             num_neighbors=k,
                             dtype=checks.compute_dtype(x, loss))


def impurity_bounds(key, embeddings, loss, clusters, *, max_clusters: int | None = None,
                    num_neighbors: int = 10, mask=None, weights=None,
                    max_iter: int = 100, together: int | None = None) -> Array:
  """[c] Prop. 2's bound (:func:`impurity_bound`) for each candidate number
  of clusters K.

  P(h wrong | x) is estimated once (:func:`neighborhood_error` among all
  prompts, so every K is measured against the same estimate); each K gets a
  k-means fit of ``embeddings`` (padded to ``max_clusters`` slots with
  ``active_clusters=K``, so every candidate runs through one compiled step)
  and its Psi-star on the same prompts. A bound that keeps falling as K
  grows says finer clusters would be purer, if there were labels enough to
  estimate their Psi (the estimation term of :func:`excess_decomposition`).
  Psi-star is measured on the prompts it is scored on, so the bound also
  falls a little with K for clusters that are no purer (to 0 at one prompt
  a cluster): compare Ks well below the number of prompts.

  Args:
    key: a ``jax.random.key`` (candidate i fits with ``fold_in(key, i)``).
    embeddings: [n, d] prompt embeddings.
    loss: [n, m] losses in [0, 1].
    clusters: [c] int candidate K (traced).
    max_clusters: the slots every fit pads to (static); default the
      largest candidate (``clusters`` must then be host data).
    num_neighbors, mask, weights: as :func:`neighborhood_error`.
    max_iter: Lloyd iterations per fit (static).
    together: candidates vmapped at once (static; default all of them);
      memory grows as ``together`` n^2.
  """
  checks.prng_key("key", key)
  clusters = checks.integer_array("clusters", clusters, ndim=1, shape_doc="[c]")
  if max_clusters is None:
    values = checks.host_values(clusters)
    if values is None:
      raise ValueError("max_clusters must be given when clusters is a JAX "
                       "array or traced, e.g. under checked() (it fixes the "
                       "fits' shapes)")
    max_clusters = int(values.max()) if values.size else 1
    if values.size and values.min() < 1:
      raise ValueError(f"clusters must be positive, got {values.tolist()}")
  top = checks.positive_int("max_clusters", max_clusters)
  x = checks.float_array("embeddings", embeddings, ndim=2, shape_doc="[n, d]")
  loss = checks.float_array("loss", loss, ndim=2, shape_doc="[n, m]")
  n, m = loss.shape
  checks.same_size("embeddings", x.shape[0], "loss", n, "prompts")
  if top > n:
    raise ValueError(f"clusters must be at most the number of prompts ({n}), "
                     f"got up to {top}")
  mask = checks.mask("mask", mask, (n, m))
  weights = checks.weights("weights", weights, n)
  k = min(checks.positive_int("num_neighbors", num_neighbors), n)
  batch = clusters.shape[0] if together is None else checks.positive_int(
      "together", together)
  return _impurity_bounds(key, x, loss, clusters, mask, weights,
                          max_clusters=top, num_neighbors=k,
                          max_iter=checks.positive_int("max_iter", max_iter),
                          together=max(1, batch),
                          dtype=checks.compute_dtype(x, loss))


# ---------------------------------------------------------------- kernels


def _prepare(loss, cost, mask, pool_mask, w, routing_cost, dtype):
  """Arrays in ``dtype`` with the protocol's missing-label rule applied:
  (loss zeroed where unlabelled, cost [n, m], routing cost, pool, weights)."""
  n, m = loss.shape
  loss, cost = loss.astype(dtype), cost.astype(dtype)
  mask = jnp.ones((n, m), bool) if mask is None else mask.astype(bool)
  pool = checks.availability(pool_mask, m)
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  checks.require(jnp.all(jnp.where(mask, (loss >= 0) & (loss <= 1), True)),
                 "excess risk: loss must lie in [0, 1] where labelled")
  checks.require(jnp.all(w >= 0), "excess risk: weights must be non-negative")
  checks.require_costs(cost, None, "excess risk")
  if routing_cost is not None:
    checks.require(jnp.all(jnp.isfinite(routing_cost) & (routing_cost >= 0)),
                   "excess risk: routing_cost must be finite and non-negative")
  labelled = jnp.all(mask | ~pool[None, :], axis=1)
  w = jnp.where(labelled, w, 0.0)
  cost = jnp.broadcast_to(cost, (n, m))
  route_cost = cost if routing_cost is None else jnp.broadcast_to(
      routing_cost.astype(dtype), (n, m))
  return jnp.where(mask, loss, 0.0), cost, route_cost, pool, w


def _mean(values, w):
  """Weighted mean over the last axis (prompts); NaN when no weight."""
  total = jnp.sum(w)
  w = w.reshape((1,) * (values.ndim - 1) + w.shape)
  return jnp.sum(values * w, axis=-1) / jnp.where(total > 0, total, jnp.nan)


def _rule_risk(gamma, loss, cost, route_cost, lambdas, pool, w):
  grid = jnp.atleast_1d(lambdas)
  choice = routing.choose_models(gamma, route_cost, grid, pool_mask=pool)  # [L, n]
  index = jnp.maximum(choice, 0)
  rows = jnp.arange(loss.shape[0])
  paid = loss[rows, index] + grid[:, None] * cost[rows, index]
  # A prompt that counts but that the rule cannot route (every score NaN,
  # outside the preconditions) leaves the risk undefined, as an empty pool.
  unroutable = jnp.any((choice < 0) & (w[None, :] > 0), axis=1)
  risk = _mean(jnp.where(choice >= 0, paid, 0.0), w)
  risk = jnp.where(jnp.any(pool) & ~unroutable, risk, jnp.nan)
  return risk[0] if lambdas.ndim == 0 else risk


def _oracle_risk(loss, cost, lambdas, pool, w):
  # The oracle is the rule that ranks by the true loss and the costs paid,
  # through the same selection: the oracle's own excess is exactly 0.
  return _rule_risk(loss, loss, cost, cost, lambdas, pool, w)


@checks.kernel(static_argnames=("dtype",))
def _excess_risk(gamma, loss, cost, lambdas, mask, pool_mask, w, routing_cost,
                 *, dtype):
  lambdas = lambdas.astype(dtype)
  checks.require(jnp.all(lambdas >= 0), "excess risk: lambdas must be "
                 "non-negative")
  loss, cost, route_cost, pool, w = _prepare(loss, cost, mask, pool_mask, w,
                                             routing_cost, dtype)
  gamma = gamma.astype(dtype)
  checks.require(jnp.all(jnp.where((w[:, None] > 0) & pool[None, :],
                                   jnp.isfinite(gamma), True)),
                 "excess_risk: predicted_loss must be finite on the prompts "
                 "that count")
  risk = _rule_risk(gamma, loss, cost, route_cost, lambdas, pool, w)
  oracle = _oracle_risk(loss, cost, lambdas, pool, w)
  return ExcessRisk(risk, oracle, risk - oracle)


def _psi_star(membership, loss, mask, w, num_clusters, dtype):
  """Psi-star: the clusters' errors on the prompts that count."""
  phi = features.membership_matrix(membership, num_clusters, dtype)
  counts, sums, overall = features.cluster_sums(phi, loss, mask, w)
  return jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1.0),
                   overall[None, :])


def _decomposition_inputs(membership, psi, loss, cost, mask, pool_mask, w,
                          routing_cost, dtype):
  psi = psi.astype(dtype)
  checks.require_membership(membership, psi.shape[0], "excess decomposition")
  loss, cost, route_cost, pool, w = _prepare(loss, cost, mask, pool_mask, w,
                                             routing_cost, dtype)
  if membership.ndim == 1:
    # A prompt of an unknown cluster (an id outside [0, k) under jit) is
    # left out of every estimate, as routing leaves it unrouted.
    known = routing.known_cluster(membership, psi.shape[0])
    w = jnp.where(known, w, 0.0)
  else:
    known = jnp.ones(membership.shape[:1], bool)
    membership = membership.astype(dtype)
  labelled = jnp.broadcast_to(w[:, None] > 0, loss.shape)
  psi_star = _psi_star(membership, loss, labelled, w, psi.shape[0], dtype)

  def gamma_of(table):
    # Rows left out hold 0, not NaN: curves take finite inputs only.
    return jnp.where(known[:, None], routing.predicted_loss(membership, table),
                     0.0)

  return (gamma_of(psi), gamma_of(psi_star), psi_star, loss, cost, route_cost,
          pool, w)


@checks.kernel(static_argnames=("dtype",))
def _excess_decomposition(membership, psi, loss, cost, lambdas, mask, pool_mask,
                          w, routing_cost, *, dtype):
  lambdas = lambdas.astype(dtype)
  checks.require(jnp.all(lambdas >= 0), "excess risk: lambdas must be "
                 "non-negative")
  gamma, gamma_star, psi_star, loss, cost, route_cost, pool, w = (
      _decomposition_inputs(membership, psi, loss, cost, mask, pool_mask, w,
                            routing_cost, dtype))
  risk = _rule_risk(gamma, loss, cost, route_cost, lambdas, pool, w)
  cluster_risk = _rule_risk(gamma_star, loss, cost, route_cost, lambdas, pool, w)
  oracle = _oracle_risk(loss, cost, lambdas, pool, w)
  return ExcessDecomposition(risk, cluster_risk, oracle, risk - cluster_risk,
                             cluster_risk - oracle, psi_star)


@checks.kernel(static_argnames=("dtype",))
def _area_decomposition(membership, psi, loss, cost, mask, pool_mask, w,
                        routing_cost, *, dtype):
  gamma, gamma_star, _, loss, cost, route_cost, pool, w = _decomposition_inputs(
      membership, psi, loss, cost, mask, pool_mask, w, routing_cost, dtype)
  # A curve needs a prompt that counts; with none, every Area is NaN.
  any_weight = jnp.any(w > 0)
  w = jnp.where(any_weight, w, 1.0)

  def area(g, ranked_by):
    curve = metrics.deferral_curve(g, loss, cost, pool_mask=pool, weights=w,
                                   routing_cost=ranked_by)
    return jnp.where(any_weight, metrics.deferral_metrics(curve).area,
                     jnp.nan)

  hat, star = area(gamma, route_cost), area(gamma_star, route_cost)
  oracle = area(loss, cost)
  return AreaDecomposition(hat, star, oracle, star - hat, oracle - star)


@checks.kernel(static_argnames=("num_clusters", "dtype"))
def _impurity_bound(membership, eta, pool_mask, w, *, num_clusters, dtype):
  n, m = eta.shape
  eta = eta.astype(dtype)
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  pool = checks.availability(pool_mask, m)
  checks.require_membership(membership, num_clusters, "impurity_bound")
  checks.require(jnp.all((eta >= 0) & (eta <= 1)),
                 "impurity_bound: error_probability must lie in [0, 1]")
  checks.require(jnp.all(w >= 0), "impurity_bound: weights must be "
                 "non-negative")
  return _bound_of(membership, eta, pool, w, num_clusters, dtype)


def _bound_of(membership, eta, pool, w, num_clusters, dtype):
  everywhere = jnp.ones(eta.shape, bool)
  if membership.ndim == 1:
    # Prompts of an unknown cluster are left out (their centre is NaN).
    w = jnp.where(routing.known_cluster(membership, num_clusters), w, 0.0)
  psi_star = _psi_star(membership, eta, everywhere, w, num_clusters, dtype)
  centre = routing.predicted_loss(membership, psi_star)
  delta = jnp.where(pool[None, :], jnp.abs(eta - centre), 0.0)
  worst = jnp.where(w > 0, jnp.max(delta, axis=1), 0.0)
  bound = jnp.where(jnp.any(pool), 2.0 * _mean(worst, w), jnp.nan)
  return ImpurityBound(bound, worst, psi_star)


@checks.kernel(static_argnames=("num_neighbors", "dtype"))
def _neighborhood_error(x, membership, loss, mask, w, *, num_neighbors, dtype):
  n, m = loss.shape
  loss = loss.astype(dtype)
  mask = jnp.ones((n, m), bool) if mask is None else mask.astype(bool)
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  checks.require(jnp.all(jnp.where(mask, (loss >= 0) & (loss <= 1), True)),
                 "neighborhood_error: loss must lie in [0, 1] where labelled")
  checks.require(jnp.all(w >= 0), "neighborhood_error: weights must be "
                 "non-negative")
  return _smooth(x.astype(dtype), membership, loss, mask, w, num_neighbors)


def _smooth(x, membership, loss, mask, w, num_neighbors):
  n, m = loss.shape
  # Centred, as k-means centres: ||a||^2 + ||b||^2 - 2 a.b loses the
  # distances' digits to rounding when the data sit far from the origin.
  x = x - jnp.mean(x, axis=0, keepdims=True)
  squared = jnp.sum(x * x, axis=1)
  diagonal = jnp.eye(n, dtype=bool)
  # Rounding may leave a duplicate's distance a hair from 0 (either way);
  # clipped, duplicates and the prompt itself are all exactly 0 apart.
  distance = jnp.clip(squared[:, None] + squared[None, :]
                      - 2.0 * jnp.matmul(x, x.T, precision=PRECISION), 0.0, None)
  distance = jnp.where(diagonal, 0.0, distance)
  group = (jnp.ones((n, n), bool) if membership is None
           else membership[:, None] == membership[None, :])
  eligible = (group & (w[None, :] > 0)) | diagonal
  top, _ = jax.lax.top_k(jnp.where(eligible, -distance, -jnp.inf), num_neighbors)
  # Everyone at most as far as the k-th nearest: ties all count.
  reach = -top[:, -1]
  near = (eligible & (distance <= reach[:, None]) & (w[None, :] > 0)).astype(
      loss.dtype)
  labelled_w = mask * w[:, None]
  loss_w = jnp.where(mask, loss, 0.0) * w[:, None]
  counts = jnp.matmul(near, labelled_w, precision=PRECISION)
  sums = jnp.matmul(near, loss_w, precision=PRECISION)
  # Where no neighbour is labelled for an LLM, its group's mean stands in.
  same = group.astype(loss.dtype)
  group_counts = jnp.matmul(same, labelled_w, precision=PRECISION)
  group_sums = jnp.matmul(same, loss_w, precision=PRECISION)
  fallback = jnp.where(
      group_counts > 0,
      group_sums / jnp.where(group_counts > 0, group_counts, 1.0),
      features.mean_loss(loss, mask, w)[None, :])
  error = jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1.0),
                    fallback)
  counted = w[:, None] > 0
  return NeighborhoodError(jnp.where(counted, error, 0.0),
                           jnp.where(counted, counts, 0.0))


@checks.kernel(static_argnames=("max_clusters", "num_neighbors", "max_iter",
                                "together", "dtype"))
def _impurity_bounds(key, x, loss, clusters, mask, w, *, max_clusters,
                     num_neighbors, max_iter, together, dtype):
  n, m = loss.shape
  x, loss = x.astype(dtype), loss.astype(dtype)
  mask = jnp.ones((n, m), bool) if mask is None else mask.astype(bool)
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  checks.require(jnp.all((clusters >= 1) & (clusters <= max_clusters)),
                 f"impurity_bounds: clusters must lie in [1, {max_clusters}]")

  # One estimate of P(h wrong | x) for every K.
  smoothed = _smooth(x, None, loss, mask, w, num_neighbors).error

  def one(item):
    k, i = item
    fit = clustering.kmeans(jax.random.fold_in(key, i), x,
                            num_clusters=max_clusters, active_clusters=k,
                            weights=w, max_iter=max_iter)
    return _bound_of(fit.assignment, smoothed, jnp.ones((m,), bool), w,
                     max_clusters, dtype).bound

  index = jnp.arange(clusters.shape[0])
  # checkify cannot check k-means' while loop under vmap: visit the
  # candidates in turn when checking (or when asked to).
  batch = 1 if checks.checking() else together
  return blocks.map_batched(one, (clusters, index), batch)
