"""LLM feature vectors Psi: per-cluster mean loss on the validation prompts (eq. 13).

An LLM h is represented by Psi(h) in [0, 1]^K, its mean loss over the
validation prompts in each of K clusters. Onboarding a new LLM is running it
on those prompts once and averaging: nothing is trained.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import checks
from uniroute_jax.types import PRECISION, Array

EMPIRICAL_BAYES = "empirical_bayes"
"""The ``prior_strength`` that asks for each LLM's strength by empirical Bayes."""

# Prior strengths empirical Bayes chooses among, in pseudo-prompts: 12%
# apart, from next to nothing to more prompts than a cluster ever holds
# (where the data show no difference between clusters at all).
STRENGTH_GRID = np.geomspace(1e-2, 1e5, 141)


class ClusterErrors(NamedTuple):
  """Per-cluster error profile of each LLM.

  Attributes:
    psi: [k, m] estimated loss of LLM j on a prompt of cluster c.
    counts: [k, m] (weighted) number of labelled prompts behind each entry.
    overall: [m] each LLM's mean loss over all its labelled prompts.
  """

  psi: Array
  counts: Array
  overall: Array


def cluster_errors(membership, loss, *, num_clusters: int | None = None,
                   mask=None, weights=None, prior_strength=None
                   ) -> ClusterErrors:
  """Per-cluster mean loss Psi [k, m] of each LLM (eq. 13 of the paper).

  With counts n_cj = sum_i w_i [i in c] mask_ij and loss sums
  s_cj = sum_i w_i [i in c] mask_ij loss_ij, the estimate is

    psi_cj = (s_cj + a * overall_j) / (n_cj + a),   a = prior_strength,

  a shrinkage towards the LLM's overall mean loss ``overall_j`` worth ``a``
  pseudo-prompts. The default ``a = 0`` is the paper's plain cluster mean.
  A cluster with no labelled prompt for an LLM has no mean at all; it gets
  ``overall_j``, the limit of the shrinkage estimate as ``a -> 0``, which is
  the only value that neither favours nor penalises that LLM there. Use
  ``a > 0`` (say 1 to 5) when clusters are small: a cluster with 2 prompts
  otherwise reports an error of exactly 0, 0.5 or 1. The estimate is the
  posterior mean of a Beta prior of mean ``overall_j`` and strength ``a``
  (:func:`cluster_posterior`); ``prior_strength="empirical_bayes"`` chooses
  each LLM's ``a`` from its own clusters' counts. With ``weights``, n_cj
  and ``a`` are in the weights' units, so scaling every weight by c acts as
  ``a / c``; :func:`cluster_posterior` instead counts effective prompts,
  which scaling leaves alone, so the two agree for unit weights only.

  Args:
    membership: [n] int cluster index of each prompt (hard assignment), or
      [n, k] non-negative soft memberships (rows summing to 1).
    loss: [n, m] loss of each LLM on each prompt, in [0, 1].
    num_clusters: k (static); required with a hard assignment.
    mask: optional [n, m] bool, False where a label is missing.
    weights: optional [n] non-negative prompt weights.
    prior_strength: a >= 0 above (traced; default 0), or
      ``"empirical_bayes"``.

  Returns:
    A :class:`ClusterErrors`. An LLM with no labelled prompt at all is
    assumed always wrong: ``overall`` and its ``psi`` are 1
    (:func:`mean_loss`). A hard cluster index outside [0, k) puts its
    prompt in no cluster: it adds to no cell's counts or sums, but it is
    one of the LLM's labelled prompts, so it still counts in ``overall``
    (the fallback and the shrinkage target). Values are not checked (see
    :mod:`uniroute_jax.checks`).

  Examples:
    >>> import numpy as np
    >>> loss = np.array([[0, 1], [1, 1], [0, 0]], np.float32)  # 3 prompts, 2 LLMs
    >>> cluster_errors(np.array([0, 0, 1]), loss, num_clusters=2).psi
    Array([[0.5, 1. ],
           [0. , 0. ]], dtype=float32)
  """
  if is_empirical_bayes(prior_strength):
    return cluster_posterior(membership, loss, num_clusters=num_clusters,
                             mask=mask, weights=weights).errors
  membership, loss, mask, weights, prior_strength, k, dtype = (
      _check_errors_args(membership, loss, num_clusters, mask, weights,
                         prior_strength))
  return _cluster_errors(membership, loss, mask, weights, prior_strength,
                         num_clusters=k, dtype=dtype)


def prior_rule(value, name: str = "psi_prior"):
  """A rule for the Psi of LLMs added later, as a router stores it (static
  metadata, so host values only): None (plain means), a finite non-negative
  number, or :data:`EMPIRICAL_BAYES`. ``ValueError`` naming ``name``
  otherwise."""
  if value is None or (isinstance(value, str) and value == EMPIRICAL_BAYES):
    return value
  if isinstance(value, jax.Array):
    raise ValueError(f"{name} must be a host number (it is the router's "
                     f"static metadata), got a JAX array")
  if isinstance(value, (str, bool, np.bool_)) or np.ndim(value) != 0 or (
      np.asarray(value).dtype.kind not in "iuf"):
    raise ValueError(f"{name} must be None, a non-negative number or "
                     f"{EMPIRICAL_BAYES!r}, got {checks.shown(value)}")
  number = float(value)
  if not 0.0 <= number < float("inf"):
    raise ValueError(f"{name} must be a finite non-negative number, got "
                     f"{number}")
  return number


def is_empirical_bayes(prior_strength) -> bool:
  """Whether ``prior_strength`` asks for :data:`EMPIRICAL_BAYES`; a string
  that is not it raises ``ValueError``."""
  if isinstance(prior_strength, str):
    if prior_strength != EMPIRICAL_BAYES:
      raise ValueError(f"prior_strength must be a non-negative number or "
                       f"{EMPIRICAL_BAYES!r}, got {prior_strength!r}")
    return True
  return False


def _check_errors_args(membership, loss, num_clusters, mask, weights,
                       prior_strength):
  loss = checks.float_array("loss", loss, ndim=2, shape_doc="[n, m]")
  n, m = loss.shape
  mask = checks.mask("mask", mask, (n, m))
  weights = checks.weights("weights", weights, n)
  if prior_strength is not None:
    prior_strength = checks.scalar("prior_strength", prior_strength)
  membership = checks.array(
      "membership", membership, ndim=(1, 2),
      shape_doc="[n] (clusters) or [n, k] (probabilities)")
  checks.same_size("membership", membership.shape[0], "loss", n, "prompts")
  if membership.ndim == 2:
    membership = checks.float_array("membership", membership, ndim=2,
                                    shape_doc="[n, k]")
    k = membership.shape[1]
    if num_clusters is not None and num_clusters != k:
      raise ValueError(
          f"num_clusters={num_clusters} but membership has {k} columns")
    dtype = checks.compute_dtype(loss, membership)
  else:
    checks.integer_array("membership", membership, ndim=1,
                         shape_doc="[n] (cluster indices)")
    if num_clusters is None:
      raise ValueError("num_clusters must be given with a hard assignment")
    k = checks.positive_int("num_clusters", num_clusters)
    dtype = checks.compute_dtype(loss)
  return membership, loss, mask, weights, prior_strength, k, dtype


def mean_loss(loss, mask, w=None):
  """[m] each LLM's (weighted) mean loss over its labelled prompts.

  An LLM with no labelled prompt at all is assumed always wrong (loss 1):
  nothing is known of it, and routing must never prefer it for a quality it
  has not shown. Every router of the library (Psi, K-NN's fallback,
  ZeroRouter's hull) applies this one rule. Traceable; no checks.
  """
  if w is None:
    w = jnp.ones(loss.shape[:1], loss.dtype)
  labelled = mask * w[:, None]
  total = jnp.sum(labelled, axis=0)
  sums = jnp.sum(jnp.where(mask, loss, 0.0) * w[:, None], axis=0)
  return jnp.where(total > 0, sums / jnp.where(total > 0, total, 1.0), 1.0)


def cluster_sums(phi, loss, mask, w):
  """(labelled weight, weighted loss sums [k, m], each LLM's overall error
  [m]) of memberships ``phi`` [n, k], ``loss`` and ``mask`` [n, m] and
  weights ``w`` [n], all traced and in one dtype: the sums every Psi here
  (and Psi-star in :mod:`uniroute_jax.risk`) is made of."""
  labelled = mask * w[:, None]
  counts = jnp.matmul(phi.T, labelled, precision=PRECISION)
  sums = jnp.matmul(phi.T, jnp.where(mask, loss, 0.0) * w[:, None],
                    precision=PRECISION)
  return counts, sums, mean_loss(loss, mask, w)


def membership_matrix(membership, num_clusters: int, dtype) -> Array:
  """Memberships as an [n, k] matrix in ``dtype``: hard cluster ids [n] one
  hot (an id outside [0, k) gives a zero row), soft memberships as given."""
  if membership.ndim == 1:
    return jax.nn.one_hot(membership, num_clusters, dtype=dtype)
  return membership.astype(dtype)


def _inputs(membership, loss, mask, w, num_clusters, dtype, where):
  """Memberships [n, k] and the arrays in ``dtype``, with the value checks
  every estimate of Psi shares."""
  n = loss.shape[0]
  loss = loss.astype(dtype)
  mask = jnp.ones(loss.shape, bool) if mask is None else mask.astype(bool)
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  checks.require_membership(membership, num_clusters, where)
  phi = membership_matrix(membership, num_clusters, dtype)
  checks.require(jnp.all(jnp.where(mask, (loss >= 0) & (loss <= 1), True)),
                 f"{where}: loss must lie in [0, 1] where labelled")
  checks.require(jnp.all(w >= 0), f"{where}: weights must be non-negative")
  return phi, loss, mask, w


@checks.kernel(static_argnames=("num_clusters", "dtype"))
def _cluster_errors(membership, loss, mask, w, prior_strength, *,
                    num_clusters: int, dtype):
  phi, loss, mask, w = _inputs(membership, loss, mask, w, num_clusters, dtype,
                               "cluster_errors")
  prior_strength = jnp.asarray(0.0 if prior_strength is None else prior_strength,
                               dtype)
  checks.require(prior_strength >= 0, "cluster_errors: prior_strength must be "
                 "non-negative, got {}", prior_strength)
  counts, sums, overall = cluster_sums(phi, loss, mask, w)
  overall_row = overall[None, :]
  denom = counts + prior_strength
  psi = jnp.where(denom > 0,
                  (sums + prior_strength * overall_row) /
                  jnp.where(denom > 0, denom, 1.0),
                  overall_row)
  return ClusterErrors(psi, counts, overall)


# ------------------------------------------------------- Beta posteriors


class ClusterPosterior(NamedTuple):
  """A Beta posterior on each (cluster, LLM) error rate.

  The prior of LLM j is Beta(a_j mu_j, a_j (1 - mu_j)): centred on its
  overall error mu_j (kept 0.5 / (n_j + 1) away from 0 and 1 after n_j
  prompts: no finite number of right answers makes an error rate of
  exactly 0 certain), worth a_j pseudo-prompts. After s_cj errors in n_cj
  labelled prompts of cluster c, the posterior is Beta(alpha, beta) with
  alpha = s_cj + a_j mu_j and beta = n_cj - s_cj + a_j (1 - mu_j). Weighted
  prompts count as effective prompts (the weights rescaled so that they
  sum to (sum w)^2 / sum w^2), so only their relative sizes matter.

  Attributes:
    mean: [k, m] the posterior mean (the LLM's overall error where nothing
      is known): what routing uses in place of Psi.
    alpha, beta: [k, m] the posterior's parameters, in effective prompts.
    counts: [k, m] n_cj, the (weighted, fractional for soft memberships)
      labelled prompts behind each cell, as ``cluster_errors`` counts them.
    overall: [m] each LLM's mean loss (:func:`mean_loss`).
    prior_mean: [m] mu_j.
    prior_strength: [m] a_j.
  """

  mean: Array
  alpha: Array
  beta: Array
  counts: Array
  overall: Array
  prior_mean: Array
  prior_strength: Array

  @property
  def errors(self) -> ClusterErrors:
    """The posterior mean as the :class:`ClusterErrors` routing uses."""
    return ClusterErrors(self.mean, self.counts, self.overall)

  def quantile(self, q) -> Array:
    """[k, m] the posterior's q-quantile (traced ``q`` in [0, 1]); a cell
    with no prior and no prompt gets the prior mean."""
    return beta_quantile(self.alpha, self.beta, q, fallback=self.mean)

  def interval(self, level=None) -> tuple[Array, Array]:
    """([k, m] low, [k, m] high): the central credible interval holding
    ``level`` (traced, in [0, 1]; default 0.9) of the posterior; [0, 1] for
    a cell with neither a prior nor a prompt."""
    if level is not None:
      level = checks.scalar("level", level)
    return _interval(self.alpha, self.beta, self.mean, level,
                     dtype=checks.compute_dtype(self.alpha))


@checks.kernel(static_argnames=("dtype",))
def _interval(alpha, beta, mean, level, *, dtype):
  # The default is a constant of the program: a host default passed in
  # would be copied to the device on every call.
  level = jnp.asarray(0.9 if level is None else level, dtype)
  checks.require((level >= 0) & (level <= 1),
                 "interval: level must lie in [0, 1], got {}", level)
  # A cell with neither a prior nor a prompt could hold any error rate.
  known = (alpha > 0) | (beta > 0)
  low = _beta_quantile(alpha, beta, (1.0 - level) / 2.0, mean, iterations=60,
                       dtype=dtype)
  high = _beta_quantile(alpha, beta, (1.0 + level) / 2.0, mean, iterations=60,
                        dtype=dtype)
  return jnp.where(known, low, 0.0), jnp.where(known, high, 1.0)


def cluster_posterior(membership, loss, *, num_clusters: int | None = None,
                      mask=None, weights=None, prior_strength=None
                      ) -> ClusterPosterior:
  """The Beta-Binomial posterior on every LLM's per-cluster error rate.

  Each LLM's prior is centred on its overall mean loss (the
  :func:`mean_loss` rule: 1 for an LLM with no labelled prompt). Its
  strength is ``prior_strength`` pseudo-prompts when given, else chosen
  per LLM by empirical Bayes: the strength on :data:`STRENGTH_GRID` that
  maximises the marginal likelihood of the LLM's per-cluster counts,

    sum_c log B(s_c + a mu, n_c - s_c + a (1 - mu)) - log B(a mu, a (1 - mu)),

  so an LLM whose clusters differ little is shrunk hard towards its mean
  and one whose clusters differ much keeps its cluster means. The
  posterior mean is ``cluster_errors`` with that strength. Losses in
  (0, 1) and soft memberships enter as fractional counts (the likelihood
  is then a quasi-likelihood). With unit weights and an overall error
  inside (0, 1), the posterior mean for a given strength is
  ``cluster_errors`` with that ``prior_strength``.

  Args:
    membership, loss, num_clusters, mask, weights: as :func:`cluster_errors`.
    prior_strength: a >= 0 for every LLM (traced), or None for empirical
      Bayes.

  Returns:
    A :class:`ClusterPosterior`.

  Examples:
    >>> import numpy as np
    >>> loss = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], np.float32)
    >>> post = cluster_posterior(np.array([0, 0, 1, 1]), loss, num_clusters=2,
    ...                          prior_strength=2.0)
    >>> post.mean                       # (s + 2 * 0.5) / (n + 2), (s + 2 * 0.25) / ...
    Array([[0.75 , 0.125],
           [0.25 , 0.375]], dtype=float32)
  """
  if is_empirical_bayes(prior_strength):
    prior_strength = None
  membership, loss, mask, weights, prior_strength, k, dtype = (
      _check_errors_args(membership, loss, num_clusters, mask, weights,
                         prior_strength))
  return _cluster_posterior(membership, loss, mask, weights, prior_strength,
                            num_clusters=k, dtype=dtype)


def log_gamma_ratio(x, s) -> Array:
  """log Gamma(x + s) - log Gamma(x) for x > 0, s >= 0, without the
  cancellation of subtracting two large log-gammas: for x > 10 Stirling's
  series in the form (x - 1/2) log1p(s / x) + s log(x + s) - s + ..., so it
  stays accurate in float32 at the prior strengths empirical Bayes tries."""
  x, s = jnp.asarray(x), jnp.asarray(s)
  large = x > 10.0
  # Each branch sees x clamped to its own side of 10, not a stand-in value:
  # XLA may round x (a sum of products) differently where it computes the
  # test and where it computes a branch, and with a stand-in a point a hair
  # from 10 could take one branch's value at the stand-in.
  xl = jnp.maximum(x, 10.0)
  z = xl + s

  def tail(t):
    inv = 1.0 / t
    inv2 = inv * inv
    return inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 / 1260.0))

  stirling = ((xl - 0.5) * jnp.log1p(s / xl) + s * jnp.log(z) - s
              + tail(z) - tail(xl))
  xs = jnp.minimum(x, 10.0)
  direct = jax.scipy.special.gammaln(xs + s) - jax.scipy.special.gammaln(xs)
  return jnp.where(large, stirling, direct)


def _log_marginal(strength, counts, sums, mean):
  """[m] the log marginal likelihood (up to terms free of the strength) of
  each LLM's per-cluster counts under Beta(strength mu, strength (1 - mu)):
  log B(s + a, f + b) - log B(a, b) as three log-gamma ratios."""
  # At mu = 0 or 1 the Beta prior is degenerate. cluster_posterior passes a
  # centre already inside (0, 1); a mean a hair inside keeps every term
  # finite for other callers too.
  tiny = 1e-6
  mu = jnp.clip(mean, tiny, 1.0 - tiny)[None, :]
  a, b = strength * mu, strength * (1.0 - mu)
  fails = jnp.clip(counts - sums, 0.0, None)
  terms = (log_gamma_ratio(a, sums) + log_gamma_ratio(b, fails)
           - log_gamma_ratio(a + b, sums + fails))
  return jnp.sum(jnp.where(counts > 0, terms, 0.0), axis=0)


# Marginal likelihoods closer than this (in nats, plus a relative part for
# the rounding of large sums) are one: the difference is rounding, not
# evidence, and reading it as evidence would let float32 and float64, or a
# vmapped and a plain call, pick strengths a grid step apart.
EVIDENCE_TOLERANCE = (1e-3, 1e-5)


def empirical_bayes_strength(counts, sums, mean) -> Array:
  """[m] each LLM's prior strength: the weakest on :data:`STRENGTH_GRID`
  whose marginal likelihood of the LLM's [k, m] ``counts`` and loss
  ``sums`` is within :data:`EVIDENCE_TOLERANCE` of the largest. Traceable."""
  grid = jnp.asarray(STRENGTH_GRID, counts.dtype)
  scores = jax.vmap(lambda a: _log_marginal(a, counts, sums, mean))(grid)
  best = jnp.max(scores, axis=0)
  absolute, relative = EVIDENCE_TOLERANCE
  close = scores >= (best - (absolute + relative * jnp.abs(best)))[None, :]
  return grid[jnp.argmax(close, axis=0)]


def beta_quantile(alpha, beta, q, *, fallback=None, iterations: int = 60
                  ) -> Array:
  """The q-quantile of Beta(alpha, beta), elementwise, by bisection on the
  regularised incomplete beta function (``q`` traced: new values do not
  recompile).

  Args:
    alpha, beta: non-negative arrays of one shape. alpha = 0 is a point
      mass at 0, beta = 0 one at 1.
    q: a scalar (or an array of alpha's shape) in [0, 1].
    fallback: where alpha = beta = 0, the value returned (default NaN).
    iterations: bisection steps (static): 60 halvings reach float64's
      resolution of [0, 1].

  In float32, JAX's incomplete beta function loses accuracy far in the
  tails of very unequal parameters (e.g. Beta(3, 1e6) at 0.99 is 12% low);
  compute in float64 where such quantiles matter.

  Examples:
    >>> q = beta_quantile(np.float32(1.0), np.float32(1.0), 0.25)   # uniform
    >>> round(float(q), 5)
    0.25
  """
  alpha = checks.float_array("alpha", alpha, ndim=tuple(range(8)),
                             shape_doc="(any shape)")
  beta = checks.float_array("beta", beta, ndim=tuple(range(8)),
                            shape_doc="(any shape)")
  if alpha.shape != beta.shape:
    raise ValueError(f"alpha and beta must have one shape, got {alpha.shape} "
                     f"and {beta.shape}")
  q = checks.float_array("q", q, ndim=(0, alpha.ndim))
  if q.ndim and q.shape != alpha.shape:
    raise ValueError(f"q must be a scalar or have alpha's shape {alpha.shape}, "
                     f"got {q.shape}")
  if fallback is not None:
    fallback = checks.float_array("fallback", fallback, ndim=alpha.ndim)
  return _beta_quantile(alpha, beta, q, fallback,
                        iterations=checks.positive_int("iterations", iterations),
                        dtype=checks.compute_dtype(alpha, beta))


@checks.kernel(static_argnames=("iterations", "dtype"))
def _beta_quantile(alpha, beta, q, fallback, *, iterations, dtype):
  alpha, beta = alpha.astype(dtype), beta.astype(dtype)
  q = jnp.broadcast_to(q.astype(dtype), alpha.shape)
  checks.require(jnp.all((alpha >= 0) & (beta >= 0)),
                 "beta_quantile: alpha and beta must be non-negative")
  checks.require(jnp.all((q >= 0) & (q <= 1)),
                 "beta_quantile: q must lie in [0, 1]")
  safe_a = jnp.where(alpha > 0, alpha, 1.0)
  safe_b = jnp.where(beta > 0, beta, 1.0)

  def halve(_, bounds):
    low, high = bounds
    mid = (low + high) / 2.0
    below = jax.scipy.special.betainc(safe_a, safe_b, mid) < q
    return jnp.where(below, mid, low), jnp.where(below, high, mid)

  zeros = jnp.zeros(alpha.shape, dtype)
  low, high = jax.lax.fori_loop(0, iterations, halve, (zeros, zeros + 1.0))
  # The ends of the support, not where the rounded CDF first reaches 0 or 1.
  value = jnp.where(q >= 1, 1.0, jnp.where(q <= 0, 0.0, (low + high) / 2.0))
  value = jnp.where(alpha > 0, jnp.where(beta > 0, value, 1.0), 0.0)
  missing = (jnp.full(alpha.shape, jnp.nan, dtype) if fallback is None
             else fallback.astype(dtype))
  return jnp.where((alpha > 0) | (beta > 0), value, missing)


@checks.kernel(static_argnames=("num_clusters", "dtype"))
def _cluster_posterior(membership, loss, mask, w, prior_strength, *,
                       num_clusters: int, dtype):
  phi, loss, mask, w = _inputs(membership, loss, mask, w, num_clusters, dtype,
                               "cluster_posterior")
  counts, sums, overall = cluster_sums(phi, loss, mask, w)
  # Weights count prompts only relatively: the Beta parameters are in
  # effective prompts, (sum w)^2 / sum w^2 in all, so a rescaled weight
  # vector gives the same posterior.
  labelled = mask * w[:, None]
  total_w = jnp.sum(labelled, axis=0)
  total_w2 = jnp.sum(mask * (w * w)[:, None], axis=0)
  scale = jnp.where(total_w2 > 0, total_w / jnp.where(total_w2 > 0, total_w2, 1.0),
                    1.0)[None, :]
  counts_e, sums_e = counts * scale, sums * scale
  # The prior's centre: the overall error, kept 0.5 / (n + 1) inside (0, 1),
  # so that an LLM never wrong (or always wrong) on n prompts is not
  # certain of it in every cluster; an LLM with no label keeps its 1.
  n_e = jnp.sum(counts_e, axis=0)
  edge = 0.5 / (n_e + 1.0)
  centre = jnp.where(n_e > 0, jnp.clip(overall, edge, 1.0 - edge), overall)
  if prior_strength is None:
    strength = empirical_bayes_strength(counts_e, sums_e, centre)
  else:
    prior_strength = jnp.asarray(prior_strength, dtype)
    checks.require(prior_strength >= 0, "cluster_posterior: prior_strength "
                   "must be non-negative, got {}", prior_strength)
    strength = jnp.broadcast_to(prior_strength, overall.shape)
  alpha = sums_e + strength[None, :] * centre[None, :]
  beta = jnp.clip(counts_e - sums_e, 0.0, None) + strength[None, :] * (
      1.0 - centre[None, :])
  total = alpha + beta
  mean = jnp.where(total > 0, alpha / jnp.where(total > 0, total, 1.0),
                   overall[None, :])
  return ClusterPosterior(mean, alpha, beta, counts, overall, centre, strength)


# ------------------------------------------- which prompts to label first

SELECTIONS = ("random", "stratified", "neyman")
"""The orders :func:`labelling_ranks` knows."""


def labelling_ranks(key, clusters, *, num_clusters: int,
                    selection: str = "stratified", spread=None) -> Array:
  """[n] int32 each prompt's position (0 first) in the order a new LLM
  should be labelled on them, when it can be run on only some of them.

  Orders:
    - ``"random"``: a random order.
    - ``"stratified"``: every cluster in proportion to its number of
      prompts, in random order within each cluster, so the first s prompts
      spread over the clusters as evenly as s allows.
    - ``"neyman"``: clusters in proportion to their size times ``spread``
      (sigma_c, e.g. sqrt of the known LLMs' mean Psi (1 - Psi) in the
      cluster): Neyman allocation, which spends labels where an error rate
      is most uncertain. Equal spreads give the stratified order.

  Args:
    key: a ``jax.random.key``: the random order, and the order within
      clusters.
    clusters: [n] int cluster of each prompt in [0, num_clusters).
    num_clusters: k (static).
    selection: one of :data:`SELECTIONS` (static).
    spread: optional [k] non-negative sigma_c for ``"neyman"`` (default
      equal).

  Examples:
    >>> import jax
    >>> ranks = labelling_ranks(jax.random.key(0), np.array([0, 0, 0, 0, 1]),
    ...                         num_clusters=2)
    >>> int(ranks[4])            # cluster 1's one prompt is third of five
    2
  """
  checks.prng_key("key", key)
  clusters = checks.integer_array("clusters", clusters, ndim=1,
                                  shape_doc="[n] (cluster indices)")
  k = checks.positive_int("num_clusters", num_clusters)
  if selection not in SELECTIONS:
    raise ValueError(f"selection must be one of {SELECTIONS}, got "
                     f"{selection!r}")
  if spread is not None:
    spread = checks.float_array("spread", spread, ndim=1, shape_doc="[k]")
    if spread.shape[0] != k:
      raise ValueError(f"spread must have one entry per cluster ({k}), got "
                       f"shape {spread.shape}")
  return _labelling_ranks(key, clusters, spread, num_clusters=k,
                          selection=selection)


@checks.kernel(static_argnames=("num_clusters", "selection"))
def _labelling_ranks(key, clusters, spread, *, num_clusters, selection):
  n = clusters.shape[0]
  checks.require(jnp.all((clusters >= 0) & (clusters < num_clusters)),
                 f"labelling_ranks: clusters must hold cluster indices in "
                 f"[0, {num_clusters})")
  order_key, tie_key = jax.random.split(key)
  u = jax.random.uniform(order_key, (n,), jnp.float32)
  if selection == "random":
    return jnp.argsort(jnp.argsort(u)).astype(jnp.int32)
  # Position of each prompt within its cluster, in random order.
  order = jnp.lexsort((u, clusters))
  sorted_clusters = clusters[order]
  first = jnp.searchsorted(sorted_clusters, jnp.arange(num_clusters))
  within = jnp.zeros(n, jnp.int32).at[order].set(
      jnp.arange(n, dtype=jnp.int32) - first[sorted_clusters].astype(jnp.int32))
  share = jnp.bincount(clusters, length=num_clusters).astype(jnp.float32)
  if selection == "neyman" and spread is not None:
    share = share * jnp.maximum(spread.astype(jnp.float32), 1e-3)
  # Prompt j of cluster c enters at "time" (j + 1/2) / share_c: by time t
  # about t share_c of its prompts are in, so clusters fill in proportion
  # to their share. Equal times (clusters of equal shares) break at random.
  time = (within + 0.5) / share[clusters]
  tie = jax.random.uniform(tie_key, (n,), jnp.float32)
  return jnp.argsort(jnp.lexsort((tie, time))).astype(jnp.int32)

