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
  (the cost of XLA:CPU's ``top_k`` grows with k);
- for several k from lists of every prompt's nearest prompts found once
  for a dataset (:func:`neighbor_lists`,
  :func:`knn_predicted_loss_grid_from_lists`): a query's k nearest of any
  subset are the first k of its list in that subset, so many searches
  over subsets of one dataset (the protocol's trials) share one ranking.
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
    num_neighbors: k in [1, v]: a Python int (a constant of the program),
      or an integer scalar array, JAX or NumPy (``np.int32(5)`` included),
      which is traced: new values do not recompile, and one outside [1, v]
      counts as the nearest bound.
    mask: optional [v, m] bool, False where a reference label is missing;
      the mean runs over the neighbours that are labelled for that LLM.
    metric: "cosine" (similarity of the normalised embeddings) or
      "euclidean" (static). Ties go to the lower reference index: ties of
      the scores as computed (for "euclidean", 2 q.r - ||r||^2 after
      centring, as scikit-learn's brute force expands them), so references
      equidistant in exact arithmetic can be split by rounding.
    chunk_size: query rows per block (static), on every platform; default
      keeps the [n, v] similarity matrix under 2**24 entries, and on a CPU
      each block's scores within a cache-sized tile (:data:`CPU_TILE_ENTRIES`).

  Returns:
    [n, m] predicted loss. Where none of the k neighbours is labelled for an
    LLM, its mean loss over all labelled reference prompts (1, assumed
    always wrong, if it has none: ``features.mean_loss``).
  """
  query, reference, loss, mask = _check_inputs(query, reference, reference_loss,
                                               mask, metric)
  v = loss.shape[0]
  static_k = None
  if isinstance(num_neighbors, (jax.Array, np.ndarray, np.integer)):
    k = checks.integer_array("num_neighbors", num_neighbors, ndim=0,
                             shape_doc="(a scalar)")
  else:
    # An int is a constant of the program, an array traced.
    static_k = checks.positive_int(
        "num_neighbors", num_neighbors, upper=v,
        upper_doc=f"the number of reference prompts ({v})")
    k = None
  block = blocks.block_size(query.shape[0], v, chunk_size)
  tile = block if chunk_size is not None else _cpu_tile(query.shape[0], v)
  return _knn_one(query, reference, loss, mask, k, static_k=static_k,
                  metric=metric, block=block, tile=tile,
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


CPU_TILE_ENTRIES = 1 << 16
"""Scores one CPU block of :func:`knn_predicted_loss` holds, so that its 32
bisection passes read them from cache instead of memory."""

# Fewer rows than this and the similarity matmul loses more than the cache
# saves.
_CPU_TILE_MIN_ROWS = 32


def _cpu_tile(n: int, v: int) -> int:
  return max(1, min(n, max(_CPU_TILE_MIN_ROWS, CPU_TILE_ENTRIES // max(v, 1))))


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
  # [k_max, len(ks)] 1 where a neighbour's rank is below k: the prefix sums
  # at the ks as one matmul (a cumulative sum over every rank costs 2.5x).
  prefix = (jnp.arange(k_max)[:, None] < ks[None, :]).astype(p.observed.dtype)
  table = _label_table(p.observed, p.labelled)

  def block_fn(q):
    # top_k lists neighbours nearest first, so the k nearest are a prefix.
    _, neighbours = jax.lax.top_k(_scores(p, q), k_max)
    return _prefix_means(table, p.overall, neighbours, prefix)

  return jnp.moveaxis(blocks.map_rows(block_fn, (p.query,), block), 1, 0)


def _label_table(observed, labelled):
  """[2m, v + 1] the observed losses and 0/1 labels of the references,
  transposed, with a last column of zeros for empty neighbour slots."""
  table = jnp.concatenate([observed, labelled], axis=1).T
  return jnp.pad(table, ((0, 0), (0, 1)))


def _prefix_means(table, overall, neighbours, prefix):
  """[b, c, m] each LLM's mean loss over each row's first k neighbours, for
  the k that ``prefix`` [k_max, c] marks; ``neighbours`` [b, k_max] are
  columns of ``table`` (:func:`_label_table`).

  Gathering columns of the transposed table leaves the ranks last, where
  the matmul contracts them without a transpose.
  """
  m = table.shape[0] // 2
  b, k_max = neighbours.shape
  both = jnp.matmul(table[:, neighbours].reshape(2 * m * b, k_max), prefix,
                    precision=PRECISION).reshape(2 * m, b, -1)
  sums, counts = both[:m], both[m:]
  return jnp.transpose(jnp.where(counts > 0, sums / jnp.maximum(counts, 1),
                                 overall.T[:, :, None]), (1, 2, 0))


# ----------------------------------------------- neighbour lists of a dataset


def neighbor_lists(embeddings, *, length: int, metric: str = "cosine",
                   rows=None, chunk_size: int | None = None) -> Array:
  """[n, length] int32: each prompt's ``length`` nearest prompts of the same
  set (itself among them), nearest first, ties to the lower index.

  Computed once for a dataset, the lists answer "the k nearest of this
  prompt among a subset of the prompts" for any subset, as the first k of
  its list that belong to it (:func:`knn_predicted_loss_grid_from_lists`),
  as long as the list holds k of them. The protocol's trials find each
  validation prompt's nearest training prompts so, instead of ranking every
  training prompt again in every trial.

  Args:
    embeddings: [n, d] the prompts.
    length: list length, in [1, n] (static).
    metric: "cosine" or "euclidean" (centred on the mean of every prompt),
      as :func:`knn_predicted_loss`; the scores are computed once here, so
      prompts whose scores differ only by rounding may rank otherwise than
      in a search of a subset.
    rows: optional [r] int: the prompts whose lists to find (default all),
      e.g. to share the work between threads; [r, length] then.
    chunk_size: rows per block (static); default keeps each block's scores
      under 2**24 entries.
  """
  if metric not in _METRICS:
    raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
  emb = checks.float_array("embeddings", embeddings, ndim=2, shape_doc="[n, d]")
  n = emb.shape[0]
  length = checks.positive_int("length", length, upper=n,
                               upper_doc=f"the number of prompts ({n})")
  if rows is None:
    rows = jnp.arange(n, dtype=jnp.int32)
  rows = checks.integer_array("rows", rows, ndim=1, shape_doc="[r]")
  return _neighbor_lists(emb, rows, length=length, metric=metric,
                         block=blocks.block_size(rows.shape[0], n, chunk_size),
                         dtype=checks.compute_dtype(emb))


@checks.kernel(static_argnames=("length", "metric", "block", "dtype"))
def _neighbor_lists(emb, rows, *, length, metric, block, dtype):
  n = emb.shape[0]
  checks.require(jnp.all((rows >= 0) & (rows < n)),
                 f"neighbor_lists: rows must lie in [0, {n})")
  p = _prepare(emb, emb, jnp.zeros((n, 1), dtype), None, metric, dtype,
               "neighbor_lists")

  def block_fn(q):
    return jax.lax.top_k(_scores(p, q), length)[1].astype(jnp.int32)

  return blocks.map_rows(block_fn, (p.query[rows],), block)


def knn_predicted_loss_grid_from_lists(neighbors, reference_loss, *,
                                       num_neighbors, max_neighbors: int,
                                       mask=None) -> tuple[Array, Array]:
  """:func:`knn_predicted_loss_grid` from neighbour lists found beforehand.

  Args:
    neighbors: [n, L] int: each query's nearest prompts, nearest first
      (e.g. rows of :func:`neighbor_lists`), as rows of ``reference_loss``,
      or -1 for a prompt that is not a reference (skipped).
    reference_loss: [v, m] loss of each LLM on the reference prompts.
    num_neighbors: [c] int array of the k to evaluate (traced), each in
      [1, max_neighbors] (a larger one counts as ``max_neighbors``).
    max_neighbors: the largest k (static).
    mask: optional [v, m] bool, False where a reference label is missing.

  Returns:
    ([c, n, m] predicted loss, [n] bool ``complete``): ``complete`` is True
    where a query's list holds at least ``max_neighbors`` references, and
    then its predictions equal those of a search over the references whose
    scores rank as in the lists. Elsewhere a k beyond the references found
    uses those found.
  """
  neighbors = checks.integer_array("neighbors", neighbors, ndim=2,
                                   shape_doc="[n, L]")
  loss = checks.float_array("reference_loss", reference_loss, ndim=2,
                            shape_doc="[v, m]")
  mask = checks.mask("mask", mask, loss.shape)
  ks = checks.integer_array("num_neighbors", num_neighbors, ndim=1,
                            shape_doc="[c]")
  k_max = checks.positive_int("max_neighbors", max_neighbors)
  return _grid_from_lists(neighbors, loss, mask, ks, k_max=k_max,
                          dtype=checks.compute_dtype(loss))


@checks.kernel(static_argnames=("k_max", "dtype"))
def _grid_from_lists(neighbors, loss, mask, ks, *, k_max, dtype):
  loss = loss.astype(dtype)
  v = loss.shape[0]
  mask = jnp.ones(loss.shape, bool) if mask is None else mask.astype(bool)
  checks.require(jnp.all((neighbors >= -1) & (neighbors < v)),
                 f"knn: neighbors must be reference rows in [0, {v}) or -1")
  checks.require(jnp.all((ks >= 1) & (ks <= k_max)),
                 f"knn: num_neighbors must lie in [1, {k_max}]")
  ks = jnp.clip(ks.astype(jnp.int32), 1, k_max)
  is_reference = neighbors >= 0
  rank = jnp.cumsum(is_reference, axis=1, dtype=jnp.int32) - 1
  complete = rank[:, -1] >= k_max - 1
  # Each list's references, compacted in order into [n, k_max]; unfilled
  # slots (and every prompt past the k_max-th reference) point to the
  # table's zero column v.
  slot = jnp.where(is_reference & (rank < k_max), rank, k_max)
  rows = jnp.arange(neighbors.shape[0])[:, None]
  compact = jnp.full((neighbors.shape[0], k_max + 1), v, jnp.int32).at[
      rows, slot].set(jnp.where(is_reference, neighbors, v).astype(jnp.int32))
  table = _label_table(jnp.where(mask, loss, 0.0), mask.astype(dtype))
  prefix = (jnp.arange(k_max)[:, None] < ks[None, :]).astype(dtype)
  overall = features.mean_loss(loss, mask)[None, :]
  gamma = _prefix_means(table, overall, compact[:, :k_max], prefix)
  return jnp.moveaxis(gamma, 1, 0), complete


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


@checks.kernel(static_argnames=("static_k", "metric", "block", "tile",
                                 "dtype"))
def _knn_one(query, reference, loss, mask, k, *, static_k, metric, block, tile,
             dtype):
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

  if tile == block:
    return blocks.map_rows(block_fn, (p.query,), block)
  return jax.lax.platform_dependent(
      p.query, cpu=lambda q: blocks.map_rows(block_fn, (q,), tile),
      default=lambda q: blocks.map_rows(block_fn, (q,), block))
