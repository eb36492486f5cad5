"""K-NN routing: an LLM's predicted loss on a prompt is its mean loss on the
prompt's k nearest validation prompts.

It is the special case of UniRoute with Phi(x) the indicator of x's k nearest
validation prompts and Psi(h) h's raw validation errors, so new LLMs need only
their validation labels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from uniroute_jax import _blocks
from uniroute_jax import _validation as check
from uniroute_jax import features
from uniroute_jax.types import Array

_HIGHEST = jax.lax.Precision.HIGHEST
_METRICS = ("cosine", "euclidean")


def knn_predicted_loss(query, reference, reference_loss, *, num_neighbors: int,
                       mask=None, metric: str = "cosine",
                       chunk_size: int | None = None) -> Array:
  """[n, m] mean loss of each LLM over each query's nearest reference prompts.

  Args:
    query: [n, d] embeddings of the prompts to route.
    reference: [v, d] embeddings of the labelled (validation) prompts.
    reference_loss: [v, m] loss of each LLM on the reference prompts.
    num_neighbors: k (static), at most v.
    mask: optional [v, m] bool, False where a reference label is missing;
      the mean runs over the neighbours that are labelled for that LLM.
    metric: "cosine" (similarity of the normalised embeddings) or
      "euclidean" (static). Ties go to the lower reference index.
    chunk_size: query rows per block (static); default keeps the [n, v]
      similarity matrix under 2**24 entries.

  Returns:
    [n, m] predicted loss. Where none of the k neighbours is labelled for an
    LLM, its mean loss over all labelled reference prompts (1, assumed
    always wrong, if it has none: ``features.mean_loss``).
  """
  return _knn_checked(query, reference, reference_loss, ks=(num_neighbors,),
                      mask=mask, metric=metric, chunk_size=chunk_size)[0]


def knn_predicted_loss_grid(query, reference, reference_loss, *,
                            num_neighbors, mask=None, metric: str = "cosine",
                            chunk_size: int | None = None) -> Array:
  """:func:`knn_predicted_loss` for several k at once: [len(k), n, m].

  One nearest-neighbour search with the largest k; every smaller k is a
  prefix of the same sorted neighbour list, so all k cost one search.
  ``num_neighbors`` is a sequence of k (static).
  """
  ks = tuple(num_neighbors)
  if not ks:
    raise ValueError("num_neighbors must name at least one k")
  return _knn_checked(query, reference, reference_loss, ks=ks, mask=mask,
                      metric=metric, chunk_size=chunk_size)


def _knn_checked(query, reference, reference_loss, *, ks, mask, metric,
                 chunk_size):
  if metric not in _METRICS:
    raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
  dtype = check.compute_dtype(query, reference, reference_loss)
  query = check.array("query", query, ndim=2, dtype=dtype, shape_doc="[n, d]")
  reference = check.array("reference", reference, ndim=2, dtype=dtype,
                          shape_doc="[v, d]")
  loss = check.array("reference_loss", reference_loss, ndim=2, dtype=dtype,
                     shape_doc="[v, m]")
  v, m = loss.shape
  check.same_size("reference", reference.shape[0], "reference_loss", v,
                  "prompts")
  if query.shape[1] != reference.shape[1]:
    raise ValueError(
        f"query and reference must have the same embedding size: "
        f"got {query.shape[1]} and {reference.shape[1]}")
  ks = tuple(check.positive_int("num_neighbors", k, upper=v,
                                upper_doc=f"the number of reference prompts ({v})")
             for k in ks)
  mask = check.bool_mask("mask", mask, (v, m))
  check.finite("query", query)
  check.finite("reference", reference)
  check.in_range("reference_loss", loss, 0.0, 1.0, where=mask)
  block = _blocks.block_size(query.shape[0], v, chunk_size)
  return _knn(query, reference, loss, mask, ks=ks, metric=metric, block=block)


@functools.partial(jax.jit, static_argnames=("ks", "metric", "block"))
def _knn(query, reference, loss, mask, *, ks, metric, block):
  if metric == "cosine":
    def unit(a):
      norm = jnp.linalg.norm(a, axis=1, keepdims=True)
      return a / jnp.where(norm > 0, norm, 1.0)
    query, reference = unit(query), unit(reference)
    ref_term = jnp.zeros((1, reference.shape[0]), query.dtype)
  else:
    shift = jnp.mean(reference, axis=0, keepdims=True)
    query, reference = query - shift, reference - shift
    # -||q - r||^2 ranks like 2 q.r - ||r||^2.
    ref_term = -jnp.sum(reference * reference, axis=1)[None, :]
  labelled = mask.astype(loss.dtype)
  observed = jnp.where(mask, loss, 0.0)
  overall = features.mean_loss(loss, mask)[None, :]
  positions = jnp.asarray(ks, jnp.int32) - 1

  def block_fn(q):
    scale = 1.0 if metric == "cosine" else 2.0
    score = scale * jnp.matmul(q, reference.T, precision=_HIGHEST) + ref_term
    # top_k lists neighbours nearest first, so the k nearest are a prefix.
    _, neighbours = jax.lax.top_k(score, max(ks))
    sums = jnp.cumsum(observed[neighbours], axis=1)[:, positions]
    counts = jnp.cumsum(labelled[neighbours], axis=1)[:, positions]
    # [b, len(ks), m]
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), overall[:, None])

  return jnp.moveaxis(_blocks.map_rows(block_fn, (query,), block), 1, 0)
