"""LLM feature vectors Psi: per-cluster mean loss on the validation prompts (eq. 13).

An LLM h is represented by Psi(h) in [0, 1]^K, its mean loss over the
validation prompts in each of K clusters. Onboarding a new LLM is running it
on those prompts once and averaging: nothing is trained.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import checks
from uniroute_jax.types import PRECISION, Array


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
  otherwise reports an error of exactly 0, 0.5 or 1.

  Args:
    membership: [n] int cluster index of each prompt (hard assignment), or
      [n, k] non-negative soft memberships (rows summing to 1).
    loss: [n, m] loss of each LLM on each prompt, in [0, 1].
    num_clusters: k (static); required with a hard assignment.
    mask: optional [n, m] bool, False where a label is missing.
    weights: optional [n] non-negative prompt weights.
    prior_strength: a >= 0 above (traced; default 0).

  Returns:
    A :class:`ClusterErrors`. An LLM with no labelled prompt at all is
    assumed always wrong: ``overall`` and its ``psi`` are 1
    (:func:`mean_loss`). A hard cluster index outside [0, k) leaves its
    prompt out. Values are not checked (see :mod:`uniroute_jax.checks`).

  Examples:
    >>> import numpy as np
    >>> loss = np.array([[0, 1], [1, 1], [0, 0]], np.float32)  # 3 prompts, 2 LLMs
    >>> cluster_errors(np.array([0, 0, 1]), loss, num_clusters=2).psi
    Array([[0.5, 1. ],
           [0. , 0. ]], dtype=float32)
  """
  loss = checks.float_array("loss", loss, ndim=2, shape_doc="[n, m]")
  n, m = loss.shape
  mask = checks.mask("mask", mask, (n, m))
  weights = checks.weights("weights", weights, n)
  if prior_strength is not None:
    checks.scalar("prior_strength", prior_strength)
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
  return _cluster_errors(membership, loss, mask, weights, prior_strength,
                         num_clusters=k, dtype=dtype)


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


@checks.kernel(static_argnames=("num_clusters", "dtype"))
def _cluster_errors(membership, loss, mask, w, prior_strength, *,
                    num_clusters: int, dtype):
  n = loss.shape[0]
  loss = loss.astype(dtype)
  mask = jnp.ones(loss.shape, bool) if mask is None else mask.astype(bool)
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  prior_strength = jnp.asarray(0.0 if prior_strength is None else prior_strength,
                               dtype)
  if membership.ndim == 1:
    checks.require(jnp.all((membership >= 0) & (membership < num_clusters)),
                   f"cluster_errors: membership must hold cluster indices in "
                   f"[0, {num_clusters})")
    phi = jax.nn.one_hot(membership, num_clusters, dtype=dtype)
  else:
    phi = membership.astype(dtype)
    checks.require(jnp.all(phi >= 0), "cluster_errors: membership must be "
                   "non-negative")
  checks.require(jnp.all(jnp.where(mask, (loss >= 0) & (loss <= 1), True)),
                 "cluster_errors: loss must lie in [0, 1] where labelled")
  checks.require(jnp.all(w >= 0), "cluster_errors: weights must be non-negative")
  checks.require(prior_strength >= 0, "cluster_errors: prior_strength must be "
                 "non-negative, got {}", prior_strength)
  labelled = mask * w[:, None]
  counts = jnp.matmul(phi.T, labelled, precision=PRECISION)
  sums = jnp.matmul(phi.T, jnp.where(mask, loss, 0.0) * w[:, None],
                    precision=PRECISION)
  overall = mean_loss(loss, mask, w)
  overall_row = overall[None, :]
  denom = counts + prior_strength
  psi = jnp.where(denom > 0,
                  (sums + prior_strength * overall_row) /
                  jnp.where(denom > 0, denom, 1.0),
                  overall_row)
  return ClusterErrors(psi, counts, overall)
