"""LLM feature vectors Psi: per-cluster mean loss on the validation prompts (eq. 13).

An LLM h is represented by Psi(h) in [0, 1]^K, its mean loss over the
validation prompts in each of K clusters. Onboarding a new LLM is running it
on those prompts once and averaging: nothing is trained.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import _validation as check
from uniroute_jax.types import Array

_HIGHEST = jax.lax.Precision.HIGHEST


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
                   mask=None, weights=None, prior_strength=0.0
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
    prior_strength: a >= 0 above (traced).

  Returns:
    A :class:`ClusterErrors`. An LLM with no labelled prompt at all is an
    error on concrete inputs; traced (e.g. inside a vmapped protocol) it
    gets ``overall`` and ``psi`` 1, as :func:`mean_loss` says.

  Examples:
    >>> import numpy as np
    >>> loss = np.array([[0, 1], [1, 1], [0, 0]], np.float32)  # 3 prompts, 2 LLMs
    >>> cluster_errors(np.array([0, 0, 1]), loss, num_clusters=2).psi
    Array([[0.5, 1. ],
           [0. , 0. ]], dtype=float32)
  """
  dtype = check.compute_dtype(loss, membership if _is_soft(membership) else None)
  loss = check.array("loss", loss, ndim=2, dtype=dtype, shape_doc="[n, m]")
  n, m = loss.shape
  mask = check.bool_mask("mask", mask, (n, m))
  check.in_range("loss", loss, 0.0, 1.0, where=mask)
  if check.is_concrete(mask) and m and not bool(jnp.all(jnp.any(mask, axis=0))):
    missing = int(jnp.argmin(jnp.any(mask, axis=0)))
    raise ValueError(f"mask: LLM {missing} has no labelled prompt")
  w = check.weights("weights", weights, n, dtype)
  check.nonnegative("prior_strength", jnp.asarray(prior_strength))
  if _is_soft(membership):
    phi = check.array("membership", membership, ndim=2, dtype=dtype,
                      shape_doc="[n, k]")
    check.same_size("membership", phi.shape[0], "loss", n, "prompts")
    check.nonnegative("membership", phi)
    if num_clusters is not None and num_clusters != phi.shape[1]:
      raise ValueError(
          f"num_clusters={num_clusters} but membership has {phi.shape[1]} columns")
  else:
    cluster = check.array("membership", membership, ndim=1, shape_doc="[n]")
    check.same_size("membership", cluster.shape[0], "loss", n, "prompts")
    if num_clusters is None:
      raise ValueError("num_clusters must be given with a hard assignment")
    k = check.positive_int("num_clusters", num_clusters)
    check.in_range("membership", cluster, 0, k - 1)
    phi = jax.nn.one_hot(cluster, k, dtype=dtype)
  return _cluster_errors(phi, loss, mask, w, jnp.asarray(prior_strength, dtype))


def _is_soft(membership) -> bool:
  return membership is not None and jnp.ndim(membership) == 2


def mean_loss(loss, mask, w=None):
  """[m] each LLM's (weighted) mean loss over its labelled prompts.

  An LLM with no labelled prompt at all is assumed always wrong (loss 1):
  nothing is known of it, and routing must never prefer it for a quality it
  has not shown. Every router of the library (Psi, K-NN's fallback,
  ZeroRouter's hull) applies this one rule.
  """
  if w is None:
    w = jnp.ones(loss.shape[:1], loss.dtype)
  labelled = mask * w[:, None]
  total = jnp.sum(labelled, axis=0)
  sums = jnp.sum(jnp.where(mask, loss, 0.0) * w[:, None], axis=0)
  return jnp.where(total > 0, sums / jnp.where(total > 0, total, 1.0), 1.0)


@jax.jit
def _cluster_errors(phi, loss, mask, w, prior_strength):
  labelled = mask * w[:, None]
  counts = jnp.matmul(phi.T, labelled, precision=_HIGHEST)
  sums = jnp.matmul(phi.T, jnp.where(mask, loss, 0.0) * w[:, None],
                    precision=_HIGHEST)
  overall = mean_loss(loss, mask, w)
  overall_row = overall[None, :]
  denom = counts + prior_strength
  psi = jnp.where(denom > 0,
                  (sums + prior_strength * overall_row) /
                  jnp.where(denom > 0, denom, 1.0),
                  overall_row)
  return ClusterErrors(psi, counts, overall)
