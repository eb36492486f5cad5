"""K-means: greedy k-means++ seeding, Lloyd iterations, nearest-centroid assignment.

UniRoute clusters the (unlabelled) training prompts with k-means and then
represents every LLM by its mean error in each cluster (``features.py``).

Numerics, chosen because float32 k-means is easy to get wrong:
- data are centred before distances are formed, and squared distances are
  clamped at 0, so points far from the origin do not produce negative
  distances (or a negative inertia);
- the distance matmul runs at ``Precision.HIGHEST`` (GPUs and TPUs would
  otherwise use TF32 / bf16 passes);
- the stopping tolerance is relative to the data's mean per-feature variance,
  as in scikit-learn, so it does not depend on the data's scale;
- empty clusters are relocated to the points farthest from their centroid,
  and the (sort-based) relocation runs only on iterations that have one;
- when ``n * k`` is large, assignment runs over row blocks so the [n, k]
  distance matrix never exists at once.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import _blocks
from uniroute_jax import _validation as check
from uniroute_jax.types import Array

_HIGHEST = jax.lax.Precision.HIGHEST


class KMeansResult(NamedTuple):
  """Output of :func:`kmeans`.

  Attributes:
    centroids: [k, d] cluster centres.
    assignment: [n] int32, index of the nearest centroid of each point.
    inertia: [] weighted sum of squared distances to the nearest centroid.
    num_iterations: [] int32, Lloyd updates run (of the best restart).
    converged: [] bool, True when the stopping criterion (centroid shift at
      most ``tol`` times the data variance, or an unchanged assignment) was
      met within ``max_iter`` updates.
  """

  centroids: Array
  assignment: Array
  inertia: Array
  num_iterations: Array
  converged: Array


class Assignment(NamedTuple):
  """Nearest centroid of each point.

  Attributes:
    cluster: [n] int32 index of the nearest centroid.
    sq_distance: [n] squared Euclidean distance to it (never negative).
  """

  cluster: Array
  sq_distance: Array


# ----------------------------------------------------------------- internals


# Up to this many clusters the centroid update is a one-hot matmul, above it
# a scatter-add (the matmul's cost grows with k, the scatter's does not).
_MATMUL_UPDATE_MAX_K = 32

# The CPU tile kernel pays off above this many centroids (measured on
# n = 7k and 100k rows of 384 dims).
_CPU_TILES_ABOVE_K = 32

# Entries of one CPU tile of the (transposed) distance matrix: small enough
# to stay in cache between the matmul that writes it and the passes that read it.
_CPU_TILE_ENTRIES = 1 << 18


def _layout(n: int, k: int, chunk_size: int | None) -> tuple[int, int]:
  """(block, tile) row counts for assignment; block is a multiple of tile.

  ``block`` bounds memory on every platform; ``tile`` is the CPU's
  cache-sized unit. Rows are padded to a multiple of ``block`` once, up front.
  """
  tile = max(1, min(n, max(64, _CPU_TILE_ENTRIES // max(k, 1))))
  block = _blocks.block_size(n, k, chunk_size)
  return math.ceil(block / tile) * tile, tile


def _nearest_block(x, x_sq, centroids):
  """Nearest centroid for a block of (centred) rows: ([b] int32, [b])."""
  c_sq = jnp.sum(centroids * centroids, axis=1)
  cross = jnp.matmul(x, centroids.T, precision=_HIGHEST)
  partial = c_sq[None, :] - 2.0 * cross
  cluster = jnp.argmin(partial, axis=1).astype(jnp.int32)
  best = jnp.take_along_axis(partial, cluster[:, None], axis=1)[:, 0]
  return cluster, jnp.maximum(x_sq + best, 0.0)


def _nearest_tile(x, x_sq, centroids):
  """:func:`_nearest_block` for CPUs.

  XLA:CPU runs an argmin reduction as scalar code, which costs more than the
  matmul itself. With the scores transposed to [k, b], the argmin becomes k
  vectorised compare-and-select passes over a cache-resident tile.
  """
  k = centroids.shape[0]
  c_sq = jnp.sum(centroids * centroids, axis=1)
  # Scaling by -2 is exact, so the scores equal those of _nearest_block.
  scores = jnp.matmul(-2.0 * centroids, x.T, precision=_HIGHEST) + c_sq[:, None]

  def closer(j, state):
    best, cluster = state
    row = scores[j]
    better = row < best
    return jnp.where(better, row, best), jnp.where(better, j, cluster)

  best, cluster = jax.lax.fori_loop(
      1, k, closer, (scores[0], jnp.zeros(x.shape[0], jnp.int32)), unroll=4)
  return cluster, jnp.maximum(x_sq + best, 0.0)


def _nearest(x, x_sq, centroids, block: int, tile: int):
  """Nearest centroid of each row; rows are a multiple of ``block``."""

  def generic(x, x_sq, centroids):
    return _blocks.map_rows(lambda xb, sb: _nearest_block(xb, sb, centroids),
                            (x, x_sq), block)

  def cpu(x, x_sq, centroids):
    return _blocks.map_rows(lambda xb, sb: _nearest_tile(xb, sb, centroids),
                            (x, x_sq), tile)

  if centroids.shape[0] <= _CPU_TILES_ABOVE_K:
    # Few centroids: the argmin is short and the tiles' transposed rows
    # would cost more than they save.
    return generic(x, x_sq, centroids)
  return jax.lax.platform_dependent(x, x_sq, centroids, cpu=cpu,
                                    default=generic)


def _sq_distances_to(x, x_sq, points):
  """[p, n] squared distances from each of ``points`` [p, d] to every row."""
  p_sq = jnp.sum(points * points, axis=1)
  # x @ points.T reads the rows in their stored layout; only the small
  # [n, p] product is transposed.
  cross = jnp.matmul(x, points.T, precision=_HIGHEST).T
  return jnp.maximum(p_sq[:, None] - 2.0 * cross + x_sq[None, :], 0.0)


def _weighted_choice(key, weights, shape):
  """Indices drawn with probability proportional to ``weights`` (>= 0)."""
  total = jnp.sum(weights)
  cdf = jnp.cumsum(weights)
  u = jax.random.uniform(key, shape, dtype=weights.dtype) * total
  index = jnp.searchsorted(cdf, u, side="right")
  return jnp.minimum(index, weights.shape[0] - 1)


def _plusplus(key, x, x_sq, w, num_clusters: int, num_trials: int):
  """Greedy k-means++ on centred rows: [k, d]."""
  n, d = x.shape
  first_key, loop_key = jax.random.split(key)
  first = _weighted_choice(first_key, w, ())
  centroids = jnp.zeros((num_clusters, d), x.dtype).at[0].set(x[first])
  closest = _sq_distances_to(x, x_sq, x[first][None])[0]

  def add_centroid(i, carry):
    centroids, closest, key = carry
    key, sub = jax.random.split(key)
    potential = closest * w
    # All points already sit on a centroid: fall back to the weights.
    potential = jnp.where(jnp.sum(potential) > 0, potential, w)
    candidates = _weighted_choice(sub, potential, (num_trials,))
    dist = _sq_distances_to(x, x_sq, x[candidates])
    new_closest = jnp.minimum(closest[None, :], dist)
    best = jnp.argmin(jnp.sum(new_closest * w[None, :], axis=1))
    centroids = centroids.at[i].set(x[candidates[best]])
    return centroids, new_closest[best], key

  centroids, _, _ = jax.lax.fori_loop(
      1, num_clusters, add_centroid, (centroids, closest, loop_key))
  return centroids


def _random_rows(key, x, w, num_clusters: int):
  """``num_clusters`` distinct rows drawn with probability proportional to w."""
  logits = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
  # Gumbel top-k draws without replacement.
  gumbel = jax.random.gumbel(key, w.shape, dtype=x.dtype)
  _, rows = jax.lax.top_k(logits + gumbel, num_clusters)
  return x[rows]


def _update_centroids(x, w, cluster, sq_distance, centroids, weighted_x=None):
  """Weighted means of the clusters; empty clusters take the farthest points.

  ``weighted_x`` is ``x * w[:, None]`` when precomputed (or ``x`` itself when
  all weights are 1): XLA:CPU runs a scatter-add whose operand is a fused
  product several times slower than one over a plain array.
  """
  k = centroids.shape[0]
  if weighted_x is None:
    weighted_x = x * w[:, None]
  if k <= _MATMUL_UPDATE_MAX_K:
    # Few clusters: a one-hot matmul reads the rows once at matmul speed,
    # where a scatter-add is bound by its per-row bookkeeping.
    one_hot = jax.nn.one_hot(cluster, k, dtype=x.dtype)
    sums = jnp.matmul(one_hot.T, weighted_x, precision=_HIGHEST)
    mass = jnp.matmul(one_hot.T, w, precision=_HIGHEST)
  else:
    sums = jax.ops.segment_sum(weighted_x, cluster, num_segments=k)
    mass = jax.ops.segment_sum(w, cluster, num_segments=k)

  def relocate(state):
    sums, mass = state
    empty = mass <= 0
    # Zero-weight points (and padding rows) are never chosen.
    far_score = jnp.where(w > 0, sq_distance, -1.0)
    _, farthest = jax.lax.top_k(far_score, k)
    rank = jnp.maximum(jnp.cumsum(empty) - 1, 0)
    source = farthest[rank]
    moved_x = jnp.where(empty[:, None], x[source] * w[source][:, None], 0.0)
    moved_w = jnp.where(empty, w[source], 0.0)
    sums = sums.at[cluster[source]].add(-moved_x)
    mass = mass.at[cluster[source]].add(-moved_w)
    sums = jnp.where(empty[:, None], moved_x, sums)
    mass = jnp.where(empty, moved_w, mass)
    return sums, mass

  sums, mass = jax.lax.cond(
      jnp.any(mass <= 0), relocate, lambda s: s, (sums, mass))
  safe_mass = jnp.where(mass > 0, mass, 1.0)
  return jnp.where((mass > 0)[:, None], sums / safe_mass[:, None], centroids)


class _LloydState(NamedTuple):
  centroids: Array
  cluster: Array
  num_iterations: Array
  converged: Array


def _lloyd(x, x_sq, w, weighted_x, centroids, tol_abs, *, max_iter: int,
           block: int, tile: int):
  """Lloyd iterations from ``centroids`` until converged or ``max_iter``."""

  def not_done(state):
    return (state.num_iterations < max_iter) & ~state.converged

  def step(state):
    cluster, sq = _nearest(x, x_sq, state.centroids, block, tile)
    new = _update_centroids(x, w, cluster, sq, state.centroids, weighted_x)
    shift = jnp.sum((new - state.centroids) ** 2)
    unchanged = jnp.all(cluster == state.cluster)
    return _LloydState(new, cluster, state.num_iterations + 1,
                       unchanged | (shift <= tol_abs))

  start = _LloydState(centroids, jnp.full(x.shape[0], -1, jnp.int32),
                      jnp.zeros((), jnp.int32), jnp.zeros((), bool))
  return jax.lax.while_loop(not_done, step, start)


@functools.partial(
    jax.jit,
    static_argnames=("num_clusters", "init", "n_init", "max_iter", "block",
                     "tile", "num_trials", "weighted"))
def _kmeans(key, x, w, init_centroids, tol, *, num_clusters: int, init: str,
            n_init: int, max_iter: int, block: int, tile: int,
            num_trials: int, weighted: bool):
  n = x.shape[0]
  # Unweighted per-feature variance, as scikit-learn scales its tolerance.
  tol_abs = tol * jnp.mean(jnp.var(x, axis=0))
  shift = jnp.mean(x, axis=0, keepdims=True)
  pad = (-n) % block
  xc = jnp.pad(x - shift, ((0, pad), (0, 0)))
  wp = jnp.pad(w, (0, pad))
  x_sq = jnp.sum(xc * xc, axis=1)
  # Padding rows are zeros after centring, so they add nothing to the sums;
  # their zero weight keeps them out of the masses.
  weighted_x = xc * wp[:, None] if weighted else xc

  def run(run_key):
    if init == "k-means++":
      start = _plusplus(run_key, xc, x_sq, wp, num_clusters, num_trials)
    elif init == "random":
      start = _random_rows(run_key, xc, wp, num_clusters)
    else:
      start = init_centroids - shift
    state = _lloyd(xc, x_sq, wp, weighted_x, start, tol_abs,
                   max_iter=max_iter, block=block, tile=tile)
    cluster, sq = _nearest(xc, x_sq, state.centroids, block, tile)
    inertia = jnp.sum(wp * sq)
    return KMeansResult(state.centroids + shift, cluster[:n], inertia,
                        state.num_iterations, state.converged)

  if n_init == 1:
    return run(key)
  runs = jax.lax.map(run, jax.random.split(key, n_init))
  best = jnp.argmin(runs.inertia)
  return jax.tree.map(lambda leaf: leaf[best], runs)


# -------------------------------------------------------------- public API


def kmeans(key, x, *, num_clusters: int | None = None, weights=None,
           init="k-means++", n_init: int = 1, max_iter: int = 300,
           tol=1e-4, chunk_size: int | None = None,
           n_local_trials: int | None = None) -> KMeansResult:
  """Clusters the rows of ``x`` with weighted k-means (Lloyd's algorithm).

  Minimises sum_i w_i ||x_i - c_{a(i)}||^2 over centroids c and assignment a.

  Args:
    key: a ``jax.random.key``; may be None only when ``init`` is an array.
    x: [n, d] points.
    num_clusters: k (static). Inferred from ``init`` when that is an array.
    weights: optional [n] non-negative sample weights.
    init: "k-means++" (greedy, 2 + log k candidates per step, as
      scikit-learn), "random" (k distinct points drawn by weight), or a
      [k, d] array of initial centroids.
    n_init: restarts (static); the run with the lowest inertia is kept.
      Restarts run one after the other (``lax.map``), so memory does not grow.
    max_iter: the most Lloyd updates per run (static).
    tol: stop when the squared centroid shift, summed over clusters, is at
      most ``tol`` times the mean per-feature variance of ``x`` (traced).
    chunk_size: rows per assignment block (static); default: all rows unless
      n * k exceeds 2**24, then blocks small enough to stay under it.
    n_local_trials: candidates per greedy k-means++ step (static).

  Returns:
    A :class:`KMeansResult`; ``assignment`` and ``inertia`` are recomputed
    from the final centroids.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> out = kmeans(jax.random.key(0), x, num_clusters=2)
    >>> bool(out.assignment[0] == out.assignment[1] != out.assignment[2])
    True
  """
  dtype = check.compute_dtype(x)
  x = check.array("x", x, ndim=2, dtype=dtype, shape_doc="[n, d]")
  n, d = x.shape
  check.finite("x", x)
  if isinstance(init, str):
    if init not in ("k-means++", "random"):
      raise ValueError(
          f"init must be 'k-means++', 'random' or a [k, d] array, got {init!r}")
    init_centroids = jnp.zeros((0, d), dtype)
    if key is None:
      raise ValueError(f"key must be a jax.random.key when init is {init!r}")
  else:
    init_centroids = check.array("init", init, ndim=2, dtype=dtype,
                                 shape_doc="[k, d]")
    check.finite("init", init_centroids)
    if init_centroids.shape[1] != d:
      raise ValueError(
          f"init must have {d} columns like x, got shape {init_centroids.shape}")
    if num_clusters is None:
      num_clusters = init_centroids.shape[0]
    if num_clusters != init_centroids.shape[0]:
      raise ValueError(
          f"num_clusters={num_clusters} but init has {init_centroids.shape[0]} rows")
    if n_init != 1:
      raise ValueError("n_init must be 1 when init is an array of centroids")
    init, key = "array", jax.random.key(0) if key is None else key
  if num_clusters is None:
    raise ValueError("num_clusters must be given unless init is an array")
  k = check.positive_int("num_clusters", num_clusters, upper=n,
                         upper_doc=f"the number of points ({n})")
  n_init = check.positive_int("n_init", n_init)
  max_iter = check.positive_int("max_iter", max_iter)
  w = check.weights("weights", weights, n, dtype)
  check.nonnegative("tol", jnp.asarray(tol))
  if n_local_trials is None:
    n_local_trials = 2 + int(math.log(k))
  n_local_trials = check.positive_int("n_local_trials", n_local_trials)
  if chunk_size is not None:
    check.positive_int("chunk_size", chunk_size)
  block, tile = _layout(n, k, chunk_size)
  return _kmeans(key, x, w, init_centroids, jnp.asarray(tol, dtype),
                 num_clusters=k, init=init, n_init=n_init, max_iter=max_iter,
                 block=block, tile=tile, num_trials=n_local_trials,
                 weighted=weights is not None)


def kmeans_plusplus(key, x, *, num_clusters: int, weights=None,
                    n_local_trials: int | None = None) -> Array:
  """Greedy k-means++ seeding: [k, d] initial centroids drawn from ``x``.

  Each step draws ``n_local_trials`` candidates with probability proportional
  to weight times squared distance to the nearest chosen centroid, and keeps
  the one that lowers the weighted potential most (Arthur & Vassilvitskii,
  2007; the greedy variant of scikit-learn).
  """
  dtype = check.compute_dtype(x)
  x = check.array("x", x, ndim=2, dtype=dtype, shape_doc="[n, d]")
  check.finite("x", x)
  n = x.shape[0]
  k = check.positive_int("num_clusters", num_clusters, upper=n,
                         upper_doc=f"the number of points ({n})")
  w = check.weights("weights", weights, n, dtype)
  trials = check.positive_int(
      "n_local_trials", 2 + int(math.log(k)) if n_local_trials is None
      else n_local_trials)
  return _plusplus_jit(key, x, w, num_clusters=k, num_trials=trials)


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_trials"))
def _plusplus_jit(key, x, w, *, num_clusters, num_trials):
  shift = jnp.mean(x, axis=0, keepdims=True)
  xc = x - shift
  x_sq = jnp.sum(xc * xc, axis=1)
  return _plusplus(key, xc, x_sq, w, num_clusters, num_trials) + shift


def assign_clusters(x, centroids, *, chunk_size: int | None = None
                    ) -> Assignment:
  """Nearest centroid (squared Euclidean) of each row of ``x``.

  Args:
    x: [n, d] points.
    centroids: [k, d].
    chunk_size: rows per block (static); see :func:`kmeans`.

  Returns:
    An :class:`Assignment` with ``cluster`` [n] and ``sq_distance`` [n].
  """
  dtype = check.compute_dtype(x, centroids)
  x = check.array("x", x, ndim=2, dtype=dtype, shape_doc="[n, d]")
  centroids = check.array("centroids", centroids, ndim=2, dtype=dtype,
                          shape_doc="[k, d]")
  if centroids.shape[1] != x.shape[1] or centroids.shape[0] == 0:
    raise ValueError(
        f"centroids must have shape [k >= 1, {x.shape[1]}], got {centroids.shape}")
  check.finite("x", x)
  check.finite("centroids", centroids)
  if chunk_size is not None:
    check.positive_int("chunk_size", chunk_size)
  block, tile = _layout(x.shape[0], centroids.shape[0], chunk_size)
  return _assign_jit(x, centroids, block=block, tile=tile)


@functools.partial(jax.jit, static_argnames=("block", "tile"))
def _assign_jit(x, centroids, *, block, tile):
  n = x.shape[0]
  # Centring on the centroids' mean keeps float32 distances accurate when
  # the data sit far from the origin.
  shift = jnp.mean(centroids, axis=0, keepdims=True)
  xc = jnp.pad(x - shift, ((0, (-n) % block), (0, 0)))
  x_sq = jnp.sum(xc * xc, axis=1)
  cluster, sq = _nearest(xc, x_sq, centroids - shift, block, tile)
  return Assignment(cluster[:n], sq[:n])
