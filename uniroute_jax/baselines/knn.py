"""K-NN routing: an LLM's predicted loss on a prompt is its mean loss on the
prompt's k nearest validation prompts.

It is the special case of UniRoute with Phi(x) the indicator of x's k nearest
validation prompts and Psi(h) h's raw validation errors, so new LLMs need only
their validation labels.

Two exact searches, both with ties to the lower reference index:
- for several k at once (:func:`knn_predicted_loss_grid`), one ``top_k``
  with the largest k, every smaller k a prefix of its sorted list;
- for one k (:func:`knn_predicted_loss`), the k-th largest similarity of
  each query found by bisection over the bits of its order-preserving
  integer key (32 or 64 passes of compare-and-count), then the neighbours
  as a 0/1 mask and their sums as one matmul. It needs no sort and no
  static k: k may be traced, and a large k costs no more than a small one
  (the cost of XLA:CPU's ``top_k`` grows with k).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import blocks, checks, features, ordering
from uniroute_jax.types import PRECISION, Array

_METRICS = ("cosine", "euclidean")


def _check_inputs(query, reference, reference_loss, mask, metric):
  if metric not in _METRICS:
    raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
  query = checks.float_array("query", query, ndim=2, shape_doc="[n, d]")
  reference = checks.float_array("reference", reference, ndim=2,
                                 shape_doc="[v, d]")
  loss = checks.float_array("reference_loss", reference_loss, ndim=2,
                            shape_doc="[v, m]")
  v, m = loss.shape
  checks.same_size("reference", reference.shape[0], "reference_loss", v,
                   "prompts")
  if query.shape[1] != reference.shape[1]:
    raise ValueError(
        f"query and reference must have the same embedding size: "
        f"got {query.shape[1]} and {reference.shape[1]}")
  return query, reference, loss, checks.mask("mask", mask, (v, m))


def knn_predicted_loss(query, reference, reference_loss, *, num_neighbors,
                       mask=None, metric: str = "cosine",
                       chunk_size: int | None = None) -> Array:
  """[n, m] mean loss of each LLM over each query's nearest reference prompts.

  Args:
    query: [n, d] embeddings of the prompts to route.
    reference: [v, d] embeddings of the labelled (validation) prompts.
    reference_loss: [v, m] loss of each LLM on the reference prompts.
    num_neighbors: k in [1, v]: an int, or a traced int scalar (new values
      do not recompile; one outside [1, v] counts as the nearest bound).
    mask: optional [v, m] bool, False where a reference label is missing;
      the mean runs over the neighbours that are labelled for that LLM.
    metric: "cosine" (similarity of the normalised embeddings) or
      "euclidean" (static). Ties go to the lower reference index: ties of
      the scores as computed (for "euclidean", 2 q.r - ||r||^2 after
      centring, as scikit-learn's brute force expands them), so references
      equidistant in exact arithmetic can be split by rounding.
    chunk_size: query rows per block (static); default keeps the [n, v]
      similarity matrix under 2**24 entries.

  Returns:
    [n, m] predicted loss. Where none of the k neighbours is labelled for an
    LLM, its mean loss over all labelled reference prompts (1, assumed
    always wrong, if it has none: ``features.mean_loss``).
  """
  query, reference, loss, mask = _check_inputs(query, reference, reference_loss,
                                               mask, metric)
  v = loss.shape[0]
  static_k = None
  if isinstance(num_neighbors, (jax.Array, np.ndarray)):
    k = checks.integer_array("num_neighbors", num_neighbors, ndim=0,
                             shape_doc="(a scalar)")
  else:
    # An int is a constant of the program, an array traced.
    static_k = checks.positive_int(
        "num_neighbors", num_neighbors, upper=v,
        upper_doc=f"the number of reference prompts ({v})")
    k = None
  block = blocks.block_size(query.shape[0], v, chunk_size)
  return _knn_one(query, reference, loss, mask, k, static_k=static_k,
                  metric=metric, block=block,
                  dtype=checks.compute_dtype(query, reference, loss))


def knn_predicted_loss_grid(query, reference, reference_loss, *,
                            num_neighbors, max_neighbors: int | None = None,
                            mask=None, metric: str = "cosine",
                            chunk_size: int | None = None) -> Array:
  """:func:`knn_predicted_loss` for several k at once: [len(k), n, m].

  One nearest-neighbour search with the largest k; every smaller k is a
  prefix of the same sorted neighbour list, so all k cost one search.

  Args:
    num_neighbors: the k to evaluate: a sequence of ints (static), or an
      int array [c] (traced: new values do not recompile) with
      ``max_neighbors``.
    max_neighbors: the largest k the search finds (static); required with
      an array ``num_neighbors``, whose entries must lie in
      [1, max_neighbors] (a larger one counts as ``max_neighbors``).
    Other arguments as :func:`knn_predicted_loss`.
  """
  query, reference, loss, mask = _check_inputs(query, reference, reference_loss,
                                               mask, metric)
  v = loss.shape[0]
  upper = dict(upper=v, upper_doc=f"the number of reference prompts ({v})")
  if isinstance(num_neighbors, (jax.Array, np.ndarray)):
    ks = checks.integer_array("num_neighbors", num_neighbors, ndim=1,
                              shape_doc="[c]")
    if max_neighbors is None:
      raise ValueError("max_neighbors must be given with an array of "
                       "num_neighbors (it fixes the search's size)")
    k_max = checks.positive_int("max_neighbors", max_neighbors, **upper)
  else:
    if isinstance(num_neighbors, (str, bytes)):
      raise ValueError(f"num_neighbors must be a sequence of ints, got "
                       f"{num_neighbors!r}")
    try:
      ks = tuple(num_neighbors)
    except TypeError:
      raise ValueError(f"num_neighbors must be a sequence of ints, got "
                       f"{num_neighbors!r}") from None
    if not ks:
      raise ValueError("num_neighbors must name at least one k")
    ks = tuple(checks.positive_int("num_neighbors", k, **upper) for k in ks)
    k_max = (max(ks) if max_neighbors is None else
             checks.positive_int("max_neighbors", max_neighbors, **upper))
    if max(ks) > k_max:
      raise ValueError(f"num_neighbors must be at most max_neighbors "
                       f"({k_max}), got {max(ks)}")
  block = blocks.block_size(query.shape[0], v, chunk_size)
  # A tuple of k is static (a constant of the program), an array traced.
  traced = None if isinstance(ks, tuple) else ks
  return _knn(query, reference, loss, mask, traced,
              static_ks=ks if traced is None else None, k_max=k_max,
              metric=metric, block=block,
              dtype=checks.compute_dtype(query, reference, loss))


class _Prepared(NamedTuple):
  """Inputs of the searches, in the compute dtype."""

  query: Array       # [n, d]
  reference: Array   # [v, d]
  ref_term: Array    # [1, v] added to scale * query @ reference.T
  scale: float
  observed: Array    # [v, m] loss, 0 where unlabelled
  labelled: Array    # [v, m] 0/1
  overall: Array     # [1, m] fallback mean loss


def _prepare(query, reference, loss, mask, metric, dtype, where) -> _Prepared:
  query, reference, loss = (a.astype(dtype) for a in (query, reference, loss))
  mask = jnp.ones(loss.shape, bool) if mask is None else mask.astype(bool)
  checks.require(jnp.all(jnp.isfinite(query)) & jnp.all(jnp.isfinite(reference)),
                 f"{where}: query and reference must be finite")
  checks.require(jnp.all(jnp.where(mask, (loss >= 0) & (loss <= 1), True)),
                 f"{where}: reference_loss must lie in [0, 1] where labelled")
  if metric == "cosine":
    def unit(a):
      norm = jnp.linalg.norm(a, axis=1, keepdims=True)
      return a / jnp.where(norm > 0, norm, 1.0)
    query, reference = unit(query), unit(reference)
    ref_term, scale = jnp.zeros((1, reference.shape[0]), query.dtype), 1.0
  else:
    shift = jnp.mean(reference, axis=0, keepdims=True)
    query, reference = query - shift, reference - shift
    # -||q - r||^2 ranks like 2 q.r - ||r||^2.
    ref_term, scale = -jnp.sum(reference * reference, axis=1)[None, :], 2.0
  return _Prepared(query, reference, ref_term, scale, jnp.where(mask, loss, 0.0),
                   mask.astype(loss.dtype), features.mean_loss(loss, mask)[None, :])


def _scores(p: _Prepared, q):
  return p.scale * jnp.matmul(q, p.reference.T, precision=PRECISION) + p.ref_term


@checks.kernel(static_argnames=("static_ks", "k_max", "metric", "block", "dtype"))
def _knn(query, reference, loss, mask, ks, *, static_ks, k_max, metric, block,
         dtype):
  if ks is None:
    ks = jnp.asarray(static_ks, jnp.int32)
  p = _prepare(query, reference, loss, mask, metric, dtype,
               "knn_predicted_loss_grid")
  checks.require(jnp.all((ks >= 1) & (ks <= k_max)),
                 f"knn: num_neighbors must lie in [1, {k_max}]")
  ks = jnp.clip(ks.astype(jnp.int32), 1, k_max)
  m = p.observed.shape[1]
  # [k_max, len(ks)] 1 where a neighbour's rank is below k: the prefix sums
  # at the ks as one matmul (a cumulative sum over every rank costs 2.5x).
  prefix = (jnp.arange(k_max)[:, None] < ks[None, :]).astype(p.observed.dtype)
  # [2m, v]: gathering columns of the transposed table leaves the ranks
  # last, where the matmul contracts them without a transpose.
  table = jnp.concatenate([p.observed, p.labelled], axis=1).T

  def block_fn(q):
    # top_k lists neighbours nearest first, so the k nearest are a prefix.
    _, neighbours = jax.lax.top_k(_scores(p, q), k_max)
    b = neighbours.shape[0]
    both = jnp.matmul(table[:, neighbours].reshape(2 * m * b, k_max), prefix,
                      precision=PRECISION).reshape(2 * m, b, -1)
    sums, counts = both[:m], both[m:]
    # [b, len(ks), m]
    return jnp.transpose(jnp.where(counts > 0, sums / jnp.maximum(counts, 1),
                                   p.overall.T[:, :, None]), (1, 2, 0))

  return jnp.moveaxis(blocks.map_rows(block_fn, (p.query,), block), 1, 0)


def _nearest_mask(score, k):
  """[b, v] float 0/1 mask of each row's k largest scores (ties to the lower
  index), for a traced k in [1, v]: bisection over the bits of the scores'
  order keys finds each row's k-th largest exactly."""
  keys = ordering.order_keys(score)   # -0.0 and +0.0 are one score
  bits = keys.dtype
  width = 8 * keys.dtype.itemsize

  # XLA:CPU sums a row of bools into integers as scalar code; summed as
  # floats (exact below 2**24 entries a row) the pass vectorises, 4x faster.
  count_dtype = jnp.float32 if score.shape[1] < 2 ** 24 else jnp.int32

  def count_at_least(t):
    return jnp.sum((keys >= t[:, None]).astype(count_dtype), axis=1)

  def halve(_, bounds):
    lo, hi = bounds
    gap = hi - lo
    mid = lo + (gap >> 1) + (gap & 1)
    keep = count_at_least(mid) >= k
    return jnp.where(keep, mid, lo), jnp.where(keep, hi, mid - 1)

  rows = score.shape[0]
  lo, _ = jax.lax.fori_loop(
      0, width, halve, (jnp.zeros((rows,), bits),
                        jnp.full((rows,), jnp.iinfo(bits).max, bits)))
  above = keys > lo[:, None]
  tied = keys == lo[:, None]
  need = k - jnp.sum(above.astype(count_dtype), axis=1, keepdims=True)
  surplus = jnp.sum(tied.astype(count_dtype), axis=1, keepdims=True) > need

  def lower_indices_first(_):
    return above | (tied & (jnp.cumsum(tied, axis=1) <= need))

  # Usually every row's k-th largest score occurs as often as it is needed
  # (once), so the running count that breaks ties, a slow pass on a CPU,
  # runs only for blocks where some row has more ties than places.
  chosen = jax.lax.cond(jnp.any(surplus), lower_indices_first,
                        lambda _: above | tied, None)
  return chosen.astype(score.dtype)


@checks.kernel(static_argnames=("static_k", "metric", "block", "dtype"))
def _knn_one(query, reference, loss, mask, k, *, static_k, metric, block, dtype):
  if k is None:
    k = static_k
  p = _prepare(query, reference, loss, mask, metric, dtype, "knn_predicted_loss")
  v = p.reference.shape[0]
  checks.require((k >= 1) & (k <= v), f"knn: num_neighbors must lie in [1, {v}]")
  k = jnp.clip(jnp.asarray(k, jnp.int32), 1, v)

  def block_fn(q):
    chosen = _nearest_mask(_scores(p, q), k)
    sums = jnp.matmul(chosen, p.observed, precision=PRECISION)
    counts = jnp.matmul(chosen, p.labelled, precision=PRECISION)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), p.overall)

  return blocks.map_rows(block_fn, (p.query,), block)
