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

Padding: ``num_clusters`` slots may hold fewer real clusters
(``active_clusters``, traced), so fits for different K share one compiled
program: the protocol's search over K is one computation over candidates
padded to the largest. Inactive slots hold zeros, are never assigned a
point, and leave every active cluster exactly as an unpadded fit would
(the same k-means++ draws, the same Lloyd steps).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import blocks, checks
from uniroute_jax.types import PRECISION, Array


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
    cluster_mask: [k] bool, True for the active slots (all of them unless
      ``active_clusters`` was given); inactive centroids are zeros. Pass it
      to :func:`assign_clusters` with the centroids.
  """

  centroids: Array
  assignment: Array
  inertia: Array
  num_iterations: Array
  converged: Array
  cluster_mask: Array


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
# a scatter-add (the matmul's cost grows with k, the scatter's does not). On
# a CPU the scatter-add over a plain array already wins above 8 clusters
# (at 7219 x 384: 0.45 ms against 1.1 ms for the matmul at k = 24).
_MATMUL_UPDATE_MAX_K = 32
_CPU_MATMUL_UPDATE_MAX_K = 8

# Up to this many centroids the nearest one is found by compare-and-select
# over the score columns: XLA:CPU runs an argmin reduction as scalar code.
_UNROLLED_ARGMIN_MAX_K = 32

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
  block = blocks.block_size(n, k, chunk_size)
  return math.ceil(block / tile) * tile, tile


def _inactive_penalty(active, dtype):
  """0 for active slots, +inf for inactive ones: added to a slot's squared
  norm, it keeps the slot from ever being the nearest."""
  return jnp.where(active, jnp.zeros((), dtype), jnp.inf)


def _nearest_block(x, x_sq, centroids, penalty):
  """Nearest centroid for a block of (centred) rows: ([b] int32, [b])."""
  k = centroids.shape[0]
  c_sq = jnp.sum(centroids * centroids, axis=1) + penalty
  cross = jnp.matmul(x, centroids.T, precision=PRECISION)
  partial = c_sq[None, :] - 2.0 * cross
  if k <= _UNROLLED_ARGMIN_MAX_K:
    # Strictly smaller only: ties keep the lower index, as argmin does.
    best, cluster = partial[:, 0], jnp.zeros(x.shape[0], jnp.int32)
    for j in range(1, k):
      closer = partial[:, j] < best
      best = jnp.where(closer, partial[:, j], best)
      cluster = jnp.where(closer, j, cluster)
  else:
    cluster = jnp.argmin(partial, axis=1).astype(jnp.int32)
    best = jnp.take_along_axis(partial, cluster[:, None], axis=1)[:, 0]
  return cluster, jnp.maximum(x_sq + best, 0.0)


def _nearest_tile(x, x_sq, centroids, penalty):
  """:func:`_nearest_block` for CPUs.

  XLA:CPU runs an argmin reduction as scalar code, which costs more than the
  matmul itself. With the scores transposed to [k, b], the argmin becomes k
  vectorised compare-and-select passes over a cache-resident tile.
  """
  k = centroids.shape[0]
  c_sq = jnp.sum(centroids * centroids, axis=1) + penalty
  # Scaling by -2 is exact, so the scores equal those of _nearest_block.
  scores = jnp.matmul(-2.0 * centroids, x.T, precision=PRECISION) + c_sq[:, None]

  def closer(j, state):
    best, cluster = state
    row = scores[j]
    better = row < best
    return jnp.where(better, row, best), jnp.where(better, j, cluster)

  best, cluster = jax.lax.fori_loop(
      1, k, closer, (scores[0], jnp.zeros(x.shape[0], jnp.int32)), unroll=4)
  return cluster, jnp.maximum(x_sq + best, 0.0)


def _nearest(x, x_sq, centroids, active, block: int, tile: int):
  """Nearest active centroid of each row; rows are a multiple of ``block``."""
  penalty = _inactive_penalty(active, x.dtype)

  def generic(x, x_sq, centroids, penalty):
    return blocks.map_rows(
        lambda xb, sb: _nearest_block(xb, sb, centroids, penalty), (x, x_sq),
        block)

  def cpu(x, x_sq, centroids, penalty):
    return blocks.map_rows(
        lambda xb, sb: _nearest_tile(xb, sb, centroids, penalty), (x, x_sq),
        tile)

  if centroids.shape[0] <= _CPU_TILES_ABOVE_K:
    # Few centroids: the argmin is short and the tiles' transposed rows
    # would cost more than they save.
    return generic(x, x_sq, centroids, penalty)
  return jax.lax.platform_dependent(x, x_sq, centroids, penalty, cpu=cpu,
                                    default=generic)


def _sq_distances_to(x, x_sq, points):
  """[p, n] squared distances from each of ``points`` [p, d] to every row."""
  p_sq = jnp.sum(points * points, axis=1)
  # x @ points.T reads the rows in their stored layout; only the small
  # [n, p] product is transposed.
  cross = jnp.matmul(x, points.T, precision=PRECISION).T
  return jnp.maximum(p_sq[:, None] - 2.0 * cross + x_sq[None, :], 0.0)


def _weighted_choice(key, weights, shape):
  """Indices drawn with probability proportional to ``weights`` (>= 0)."""
  total = jnp.sum(weights)
  cdf = jnp.cumsum(weights)
  u = jax.random.uniform(key, shape, dtype=weights.dtype) * total
  index = jnp.searchsorted(cdf, u, side="right")
  return jnp.minimum(index, weights.shape[0] - 1)


def _local_trials(num_clusters: int) -> tuple[int, ...]:
  """scikit-learn's greedy k-means++ candidates per step, 2 + log k, for
  every k up to ``num_clusters`` (entry k - 1)."""
  return tuple(2 + int(math.log(k)) for k in range(1, num_clusters + 1))


def _plusplus(key, x, x_sq, w, num_active, trials, *, num_clusters: int,
              num_trials: int):
  """Greedy k-means++ on centred rows: [k, d], the first ``num_active``
  slots filled.

  Each step draws ``num_trials`` candidates and keeps the best of the first
  ``trials`` (traced); uniform draws of a longer shape begin with those of
  a shorter one, so the first slots equal an unpadded seeding's.
  """
  n, d = x.shape
  first_key, loop_key = jax.random.split(key)
  first = _weighted_choice(first_key, w, ())
  centroids = jnp.zeros((num_clusters, d), x.dtype).at[0].set(x[first])
  closest = _sq_distances_to(x, x_sq, x[first][None])[0]
  usable = jnp.arange(num_trials) < trials

  def add_centroid(i, carry):
    centroids, closest, key = carry
    key, sub = jax.random.split(key)

    def add(state):
      centroids, closest = state
      potential = closest * w
      # All points already sit on a centroid: fall back to the weights.
      potential = jnp.where(jnp.sum(potential) > 0, potential, w)
      candidates = _weighted_choice(sub, potential, (num_trials,))
      dist = _sq_distances_to(x, x_sq, x[candidates])
      new_closest = jnp.minimum(closest[None, :], dist)
      score = jnp.where(usable, jnp.sum(new_closest * w[None, :], axis=1),
                        jnp.inf)
      best = jnp.argmin(score)
      return centroids.at[i].set(x[candidates[best]]), new_closest[best]

    # Steps past the active slots are skipped (a select under vmap).
    centroids, closest = jax.lax.cond(i < num_active, add, lambda s: s,
                                      (centroids, closest))
    return centroids, closest, key

  centroids, _, _ = jax.lax.fori_loop(
      1, num_clusters, add_centroid, (centroids, closest, loop_key))
  return centroids


def _random_rows(key, x, w, active):
  """Distinct rows drawn with probability proportional to w, one per active
  slot (inactive slots zero)."""
  logits = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
  # Gumbel top-k draws without replacement; top_k lists them in order, so
  # the first slots equal a draw of fewer rows.
  gumbel = jax.random.gumbel(key, w.shape, dtype=x.dtype)
  _, rows = jax.lax.top_k(logits + gumbel, active.shape[0])
  return jnp.where(active[:, None], x[rows], 0.0)


def _cluster_sums_one_hot(weighted_x, w, cluster, k: int):
  """([k, d], [k]) weighted row sums and masses of the clusters as one-hot
  matmuls: the rows are read once, at matmul speed."""
  one_hot = jax.nn.one_hot(cluster, k, dtype=weighted_x.dtype)
  return (jnp.matmul(one_hot.T, weighted_x, precision=PRECISION),
          jnp.matmul(one_hot.T, w, precision=PRECISION))


def _cluster_sums_scatter(weighted_x, w, cluster, k: int):
  """:func:`_cluster_sums_one_hot` as scatter-adds: their cost does not
  grow with k."""
  return (jax.ops.segment_sum(weighted_x, cluster, num_segments=k),
          jax.ops.segment_sum(w, cluster, num_segments=k))


def _update_centroids(x, w, cluster, sq_distance, centroids, active,
                      weighted_x=None):
  """Weighted means of the clusters; empty active clusters take the farthest
  points; inactive slots stay zero.

  ``weighted_x`` is ``x * w[:, None]`` when precomputed (or ``x`` itself when
  all weights are 1): XLA:CPU runs a scatter-add whose operand is a fused
  product several times slower than one over a plain array.
  """
  k = centroids.shape[0]
  if weighted_x is None:
    weighted_x = x * w[:, None]
  if k <= _CPU_MATMUL_UPDATE_MAX_K:
    sums, mass = _cluster_sums_one_hot(weighted_x, w, cluster, k)
  elif k <= _MATMUL_UPDATE_MAX_K:
    sums, mass = jax.lax.platform_dependent(
        weighted_x, w, cluster,
        cpu=functools.partial(_cluster_sums_scatter, k=k),
        default=functools.partial(_cluster_sums_one_hot, k=k))
  else:
    sums, mass = _cluster_sums_scatter(weighted_x, w, cluster, k)
  empty = (mass <= 0) & active

  def relocate(state):
    sums, mass = state
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

  sums, mass = jax.lax.cond(jnp.any(empty), relocate, lambda s: s, (sums, mass))
  safe_mass = jnp.where(mass > 0, mass, 1.0)
  return jnp.where((mass > 0)[:, None], sums / safe_mass[:, None], centroids)


class _LloydState(NamedTuple):
  centroids: Array
  cluster: Array
  num_iterations: Array
  converged: Array


def _lloyd(x, x_sq, w, weighted_x, centroids, active, tol_abs, *,
           max_iter: int, block: int, tile: int):
  """Lloyd iterations from ``centroids`` until converged or ``max_iter``."""

  def not_done(state):
    return (state.num_iterations < max_iter) & ~state.converged

  def step(state):
    cluster, sq = _nearest(x, x_sq, state.centroids, active, block, tile)
    new = _update_centroids(x, w, cluster, sq, state.centroids, active,
                            weighted_x)
    shift = jnp.sum((new - state.centroids) ** 2)
    unchanged = jnp.all(cluster == state.cluster)
    return _LloydState(new, cluster, state.num_iterations + 1,
                       unchanged | (shift <= tol_abs))

  start = _LloydState(centroids, jnp.full(x.shape[0], -1, jnp.int32),
                      jnp.zeros((), jnp.int32), jnp.zeros((), bool))
  return jax.lax.while_loop(not_done, step, start)


_DEFAULT_TOL = 1e-4


def _active_mask(active_clusters, num_clusters: int):
  """[k] bool for the first ``active_clusters`` slots (clamped to [1, k])."""
  if active_clusters is None:
    return jnp.ones((num_clusters,), bool), jnp.asarray(num_clusters, jnp.int32)
  checks.require((active_clusters >= 1) & (active_clusters <= num_clusters),
                 "kmeans: active_clusters must lie in [1, num_clusters], "
                 "got {}", active_clusters)
  count = jnp.clip(jnp.asarray(active_clusters, jnp.int32), 1, num_clusters)
  return jnp.arange(num_clusters) < count, count


@checks.kernel(
    static_argnames=("num_clusters", "init", "n_init", "max_iter", "block",
                     "tile", "num_trials", "dtype"))
def _kmeans(key, x, w, init_centroids, tol, active_clusters, *,
            num_clusters: int, init: str, n_init: int, max_iter: int,
            block: int, tile: int, num_trials: int | None, dtype):
  if key is None:
    # Unused (init holds the centroids, nothing is drawn); made here, inside
    # the program, so that the call moves nothing from the host.
    key = jax.random.key(0)
  x = x.astype(dtype)
  n = x.shape[0]
  checks.require(jnp.all(jnp.isfinite(x)), "kmeans: x must be finite")
  weighted = w is not None
  w = jnp.ones((n,), dtype) if w is None else w.astype(dtype)
  checks.require(jnp.all(w >= 0) & jnp.any(w > 0),
                 "kmeans: weights must be non-negative with a positive entry")
  tol = jnp.asarray(_DEFAULT_TOL if tol is None else tol, dtype)
  checks.require(tol >= 0, "kmeans: tol must be non-negative, got {}", tol)
  active, num_active = _active_mask(active_clusters, num_clusters)
  if num_trials is None:
    trials = jnp.asarray(_local_trials(num_clusters), jnp.int32)[num_active - 1]
    num_trials = _local_trials(num_clusters)[-1]
  else:
    trials = num_trials
  # Unweighted per-feature variance, as scikit-learn scales its tolerance.
  tol_abs = tol * jnp.mean(jnp.var(x, axis=0))
  shift = jnp.mean(x, axis=0, keepdims=True)
  pad = (-n) % block
  xc = jnp.pad(x - shift, ((0, pad), (0, 0)))
  wp = jnp.pad(w, (0, pad))
  x_sq = jnp.sum(xc * xc, axis=1)
  checks.require(jnp.isfinite(4 * n * jnp.max(x_sq)),
                 "kmeans: x is too large: its sums of squared distances "
                 "overflow; rescale x")
  # Padding rows are zeros after centring, so they add nothing to the sums;
  # their zero weight keeps them out of the masses.
  weighted_x = xc * wp[:, None] if weighted else xc

  def run(run_key):
    if init == "k-means++":
      start = _plusplus(run_key, xc, x_sq, wp, num_active, trials,
                        num_clusters=num_clusters, num_trials=num_trials)
    elif init == "random":
      start = _random_rows(run_key, xc, wp, active)
    else:
      checks.require(jnp.all(jnp.isfinite(init_centroids)),
                     "kmeans: init must be finite")
      start = jnp.where(active[:, None], init_centroids.astype(dtype) - shift,
                        0.0)
    state = _lloyd(xc, x_sq, wp, weighted_x, start, active, tol_abs,
                   max_iter=max_iter, block=block, tile=tile)
    cluster, sq = _nearest(xc, x_sq, state.centroids, active, block, tile)
    inertia = jnp.sum(wp * sq)
    centroids = jnp.where(active[:, None], state.centroids + shift, 0.0)
    return KMeansResult(centroids, cluster[:n], inertia, state.num_iterations,
                        state.converged, active)

  if n_init == 1:
    return run(key)
  runs = jax.lax.map(run, jax.random.split(key, n_init))
  best = jnp.argmin(runs.inertia)
  return jax.tree.map(lambda leaf: leaf[best], runs)


# -------------------------------------------------------------- public API


def kmeans(key, x, *, num_clusters: int | None = None, active_clusters=None,
           weights=None, init="k-means++", n_init: int = 1,
           max_iter: int = 300, tol=None, chunk_size: int | None = None,
           n_local_trials: int | None = None) -> KMeansResult:
  """Clusters the rows of ``x`` with weighted k-means (Lloyd's algorithm).

  Minimises sum_i w_i ||x_i - c_{a(i)}||^2 over centroids c and assignment a.

  Args:
    key: a ``jax.random.key``; may be None only when ``init`` is an array.
    x: [n, d] finite points.
    num_clusters: k (static), the number of centroid slots. Inferred from
      ``init`` when that is an array.
    active_clusters: optional traced int in [1, k]: only the first
      ``active_clusters`` slots are clusters, the others padding (zeros,
      never assigned). One compiled program then fits every K up to k, and
      each active cluster equals that of an unpadded fit with K clusters.
    weights: optional [n] non-negative sample weights, not all zero.
    init: "k-means++" (greedy, 2 + log K candidates per step, as
      scikit-learn), "random" (K distinct points drawn by weight), or a
      [k, d] array of initial centroids.
    n_init: restarts (static); the run with the lowest inertia is kept.
      Restarts run one after the other (``lax.map``), so memory does not grow.
    max_iter: the most Lloyd updates per run (static).
    tol: stop when the squared centroid shift, summed over clusters, is at
      most ``tol`` times the mean per-feature variance of ``x`` (traced;
      default 1e-4, as scikit-learn).
    chunk_size: rows per assignment block (static); default: all rows unless
      n * k exceeds 2**24, then blocks small enough to stay under it.
    n_local_trials: candidates per greedy k-means++ step (static); default
      2 + log K.

  Returns:
    A :class:`KMeansResult`; ``assignment`` and ``inertia`` are recomputed
    from the final centroids. Host points (NumPy arrays, lists) are
    checked: they must be finite and small enough that sums of squared
    distances stay finite in the compute dtype (``ValueError`` otherwise),
    and fewer distinct points than ``num_clusters`` warns, as centroids then
    repeat. JAX arrays are not inspected (see :mod:`uniroute_jax.checks`):
    for them such points give unspecified centroids.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> out = kmeans(jax.random.key(0), x, num_clusters=2)
    >>> bool(out.assignment[0] == out.assignment[1] != out.assignment[2])
    True
  """
  x = checks.float_array("x", x, ndim=2, shape_doc="[n, d]")
  dtype = checks.compute_dtype(x)
  n, d = x.shape
  if isinstance(init, str):
    if init not in ("k-means++", "random"):
      raise ValueError(
          f"init must be 'k-means++', 'random' or a [k, d] array, got {init!r}")
    init_centroids = None
    checks.prng_key("key", key)
  else:
    init_centroids = checks.float_array("init", init, ndim=2, shape_doc="[k, d]")
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
    if key is not None:
      checks.prng_key("key", key)
    init = "array"
  if num_clusters is None:
    raise ValueError("num_clusters must be given unless init is an array")
  k = checks.positive_int("num_clusters", num_clusters, upper=n,
                          upper_doc=f"the number of points ({n})")
  n_init = checks.positive_int("n_init", n_init)
  max_iter = checks.positive_int("max_iter", max_iter)
  weights = checks.weights("weights", weights, n)
  if tol is not None:
    tol = checks.scalar("tol", tol)
  if active_clusters is not None:
    checks.integer_array("active_clusters", active_clusters, ndim=0,
                         shape_doc="(a scalar)")
  if n_local_trials is not None:
    n_local_trials = checks.positive_int("n_local_trials", n_local_trials)
  if chunk_size is not None:
    checks.positive_int("chunk_size", chunk_size)
  # Host points are a user's data entering here: checked once, on the host.
  checks.host_points("x", x, k, dtype, weights)
  block, tile = _layout(n, k, chunk_size)
  return _kmeans(key, x, weights, init_centroids, tol, active_clusters,
                 num_clusters=k, init=init, n_init=n_init, max_iter=max_iter,
                 block=block, tile=tile, num_trials=n_local_trials, dtype=dtype)


def kmeans_plusplus(key, x, *, num_clusters: int, weights=None,
                    n_local_trials: int | None = None) -> Array:
  """Greedy k-means++ seeding: [k, d] initial centroids drawn from ``x``.

  Each step draws ``n_local_trials`` candidates with probability proportional
  to weight times squared distance to the nearest chosen centroid, and keeps
  the one that lowers the weighted potential most (Arthur & Vassilvitskii,
  2007; the greedy variant of scikit-learn).
  """
  checks.prng_key("key", key)
  x = checks.float_array("x", x, ndim=2, shape_doc="[n, d]")
  n = x.shape[0]
  k = checks.positive_int("num_clusters", num_clusters, upper=n,
                          upper_doc=f"the number of points ({n})")
  weights = checks.weights("weights", weights, n)
  trials = checks.positive_int(
      "n_local_trials", 2 + int(math.log(k)) if n_local_trials is None
      else n_local_trials)
  return _plusplus_jit(key, x, weights, num_clusters=k, num_trials=trials,
                       dtype=checks.compute_dtype(x))


@checks.kernel(static_argnames=("num_clusters", "num_trials", "dtype"))
def _plusplus_jit(key, x, w, *, num_clusters, num_trials, dtype):
  x = x.astype(dtype)
  w = jnp.ones(x.shape[:1], dtype) if w is None else w.astype(dtype)
  shift = jnp.mean(x, axis=0, keepdims=True)
  xc = x - shift
  x_sq = jnp.sum(xc * xc, axis=1)
  return _plusplus(key, xc, x_sq, w, num_clusters, num_trials,
                   num_clusters=num_clusters, num_trials=num_trials) + shift


def assign_clusters(x, centroids, *, cluster_mask=None,
                    chunk_size: int | None = None) -> Assignment:
  """Nearest centroid (squared Euclidean) of each row of ``x``.

  Args:
    x: [n, d] points.
    centroids: [k, d].
    cluster_mask: optional [k] bool (traced), False for padding slots that
      are never assigned (``KMeansResult.cluster_mask``); at least one True.
    chunk_size: rows per block (static); see :func:`kmeans`.

  Returns:
    An :class:`Assignment` with ``cluster`` [n] and ``sq_distance`` [n];
    a row holding NaN or an infinity gets cluster -1 and distance NaN.
  """
  x = checks.float_array("x", x, ndim=2, shape_doc="[n, d]")
  centroids = checks.float_array("centroids", centroids, ndim=2,
                                 shape_doc="[k, d]")
  if centroids.shape[1] != x.shape[1] or centroids.shape[0] == 0:
    raise ValueError(
        f"centroids must have shape [k >= 1, {x.shape[1]}], got {centroids.shape}")
  cluster_mask = checks.mask("cluster_mask", cluster_mask, centroids.shape[:1])
  if chunk_size is not None:
    checks.positive_int("chunk_size", chunk_size)
  block, tile = _layout(x.shape[0], centroids.shape[0], chunk_size)
  return _assign_jit(x, centroids, cluster_mask, block=block, tile=tile,
                     dtype=checks.compute_dtype(x, centroids))


@checks.kernel(static_argnames=("block", "tile", "dtype"))
def _assign_jit(x, centroids, cluster_mask, *, block, tile, dtype):
  x, centroids = x.astype(dtype), centroids.astype(dtype)
  n, k = x.shape[0], centroids.shape[0]
  active = (jnp.ones((k,), bool) if cluster_mask is None
            else cluster_mask.astype(bool))
  checks.require(jnp.any(active), "assign_clusters: cluster_mask must have a "
                 "True entry")
  # Centring on the active centroids' mean keeps float32 distances accurate
  # when the data sit far from the origin.
  shift = (jnp.sum(jnp.where(active[:, None], centroids, 0.0), axis=0,
                   keepdims=True) / jnp.maximum(jnp.sum(active), 1))
  xc = jnp.pad(x - shift, ((0, (-n) % block), (0, 0)))
  x_sq = jnp.sum(xc * xc, axis=1)
  cluster, sq = _nearest(xc, x_sq, centroids - shift, active, block, tile)
  # A row with a NaN or an infinity is near no centroid: routing then leaves
  # its prompt unrouted (-1), as it does for a learned map's NaN row.
  finite = jnp.all(jnp.isfinite(x), axis=1)
  return Assignment(jnp.where(finite, cluster[:n], -1),
                    jnp.where(finite, sq[:n], jnp.nan))
