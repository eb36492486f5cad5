"""k-means against scikit-learn and brute force, in float32 and float64."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from conftest import RTOL, no_retrace
from uniroute_jax import clustering as km
from uniroute_jax import assign_clusters, checked, kmeans, kmeans_plusplus


def blobs(n=600, d=5, centres=4, seed=0, dtype=np.float64, spread=4.0):
  rng = np.random.default_rng(seed)
  mu = rng.normal(scale=spread, size=(centres, d))
  label = rng.integers(centres, size=n)
  return (mu[label] + rng.normal(size=(n, d))).astype(dtype)


def brute_inertia(x, centroids, weights=None):
  d2 = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
  w = np.ones(len(x)) if weights is None else weights
  return float((w * d2.min(1)).sum()), d2.argmin(1)


def test_matches_sklearn_from_same_init(dtype, mode):
  x = blobs(dtype=dtype)
  init = x[[0, 1, 2, 3, 4]]
  ours = kmeans(None, x, init=init, tol=0.0, max_iter=100)
  ref = KMeans(5, init=init, n_init=1, tol=0.0, max_iter=100,
               algorithm="lloyd").fit(x.astype(np.float64))
  rtol = 1e-5 if dtype == np.float64 else 1e-4
  np.testing.assert_allclose(float(ours.inertia), ref.inertia_, rtol=rtol)
  assert adjusted_rand_score(ref.labels_, np.asarray(ours.assignment)) == 1.0
  np.testing.assert_allclose(np.asarray(ours.centroids), ref.cluster_centers_,
                             rtol=rtol, atol=rtol)
  assert int(ours.num_iterations) == ref.n_iter_
  assert bool(ours.converged)
  assert ours.centroids.dtype == dtype
  # The reported inertia is that of the reported assignment and centroids.
  inertia, labels = brute_inertia(x, np.asarray(ours.centroids))
  np.testing.assert_allclose(float(ours.inertia), inertia, rtol=RTOL[dtype] * 10)
  np.testing.assert_array_equal(labels, np.asarray(ours.assignment))


def test_jit_equals_eager():
  x = blobs(n=200)
  run = lambda: kmeans(jax.random.key(3), x, num_clusters=4, n_init=2)
  jitted = run()
  with jax.disable_jit():
    eager = run()
  for a, b in zip(jitted, eager):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10)


def test_user_jit_of_public_function():
  x = jnp.asarray(blobs(n=200))
  f = jax.jit(lambda key, x: kmeans(key, x, num_clusters=3).inertia)
  direct = kmeans(jax.random.key(1), x, num_clusters=3).inertia
  np.testing.assert_allclose(float(f(jax.random.key(1), x)), float(direct),
                             rtol=1e-12)


def potential(x, centroids):
  return brute_inertia(x, np.asarray(centroids))[0]


def test_plusplus_beats_random_init_on_average():
  x = blobs(n=800, centres=10, spread=6.0)
  pp, rnd = [], []
  for seed in range(20):
    key = jax.random.key(seed)
    pp.append(potential(x, kmeans_plusplus(key, x, num_clusters=10)))
    rows = np.random.default_rng(seed).choice(len(x), 10, replace=False)
    rnd.append(potential(x, x[rows]))
  assert np.mean(pp) < np.mean(rnd)


def test_plusplus_centroids_are_distinct_data_points():
  x = blobs(n=300)
  c = np.asarray(kmeans_plusplus(jax.random.key(0), x, num_clusters=8))
  d2 = ((c[:, None] - x[None]) ** 2).sum(-1)
  np.testing.assert_allclose(d2.min(1), 0.0, atol=1e-9)
  assert len({tuple(np.round(row, 8)) for row in c}) == 8


def test_plusplus_with_duplicate_points_does_not_break():
  x = np.repeat(np.eye(3), 10, axis=0)
  c = np.asarray(kmeans_plusplus(jax.random.key(0), x, num_clusters=5))
  assert np.all(np.isfinite(c))
  assert len({tuple(row) for row in c}) == 3


def test_float32_far_from_origin():
  x = blobs(dtype=np.float64)
  init = x[:4]
  near = kmeans(None, x.astype(np.float32), init=init.astype(np.float32))
  far = kmeans(None, (x + 1e4).astype(np.float32),
               init=(init + 1e4).astype(np.float32))
  assert float(far.inertia) >= 0
  assert adjusted_rand_score(np.asarray(near.assignment),
                             np.asarray(far.assignment)) == 1.0
  np.testing.assert_allclose(float(far.inertia), float(near.inertia), rtol=1e-2)
  assert np.all(np.asarray(assign_clusters((x + 1e4).astype(np.float32),
                                           far.centroids).sq_distance) >= 0)


def test_integer_weights_equal_repeated_rows(dtype):
  x = blobs(n=150, dtype=dtype)
  w = np.random.default_rng(1).integers(0, 4, size=len(x))
  init = x[w > 0][:3]
  weighted = kmeans(None, x, init=init, weights=w.astype(dtype), tol=0.0)
  repeated = kmeans(None, np.repeat(x, w, axis=0), init=init, tol=0.0)
  np.testing.assert_allclose(np.asarray(weighted.centroids),
                             np.asarray(repeated.centroids), rtol=RTOL[dtype] * 10,
                             atol=RTOL[dtype] * 10)
  np.testing.assert_allclose(float(weighted.inertia), float(repeated.inertia),
                             rtol=RTOL[dtype] * 10)


def test_weights_match_sklearn():
  x = blobs(n=300)
  w = np.random.default_rng(2).uniform(0.1, 3.0, size=len(x))
  init = x[:4]
  ours = kmeans(None, x, init=init, weights=w, tol=0.0)
  ref = KMeans(4, init=init, n_init=1, tol=0.0, algorithm="lloyd").fit(
      x, sample_weight=w)
  np.testing.assert_allclose(float(ours.inertia), ref.inertia_, rtol=1e-8)
  np.testing.assert_allclose(np.asarray(ours.centroids), ref.cluster_centers_,
                             rtol=1e-8)


def test_scaling_weights_changes_nothing_but_inertia():
  x = blobs(n=200)
  init = x[:3]
  a = kmeans(None, x, init=init)
  b = kmeans(None, x, init=init, weights=np.full(len(x), 2.5))
  np.testing.assert_allclose(np.asarray(a.centroids), np.asarray(b.centroids),
                             rtol=1e-10)
  np.testing.assert_allclose(2.5 * float(a.inertia), float(b.inertia), rtol=1e-10)


def test_empty_cluster_is_relocated_like_sklearn():
  x = blobs(n=300)
  # The last initial centroid is far from every point: empty on iteration 1.
  init = np.vstack([x[:3], np.full((1, x.shape[1]), 1e3)])
  ours = kmeans(None, x, init=init, tol=0.0)
  ref = KMeans(4, init=init, n_init=1, tol=0.0, algorithm="lloyd").fit(x)
  counts = np.bincount(np.asarray(ours.assignment), minlength=4)
  assert counts.min() > 0
  np.testing.assert_allclose(float(ours.inertia), ref.inertia_, rtol=1e-8)
  assert adjusted_rand_score(ref.labels_, np.asarray(ours.assignment)) == 1.0


def test_relocation_moves_the_farthest_point():
  x = np.array([[0.0], [0.1], [0.2], [10.0]])
  init = np.array([[0.1], [100.0]])
  state = km._update_centroids(
      jnp.asarray(x), jnp.ones(4), jnp.zeros(4, jnp.int32),
      jnp.asarray(((x - 0.1) ** 2)[:, 0]), jnp.asarray(init),
      jnp.ones(2, bool))
  # Cluster 1 had nothing; it takes x=10, which leaves cluster 0.
  np.testing.assert_allclose(np.asarray(state), [[0.1], [10.0]], atol=1e-12)


def test_restarts_keep_the_best_run():
  x = blobs(n=300, centres=6, spread=3.0)
  key = jax.random.key(7)
  best = kmeans(key, x, num_clusters=6, n_init=4)
  singles = [kmeans(k, x, num_clusters=6) for k in jax.random.split(key, 4)]
  inertias = [float(s.inertia) for s in singles]
  np.testing.assert_allclose(float(best.inertia), min(inertias), rtol=1e-12)
  chosen = singles[int(np.argmin(inertias))]
  np.testing.assert_array_equal(np.asarray(best.assignment),
                                np.asarray(chosen.assignment))


def test_chunked_equals_unchunked(dtype):
  x = blobs(n=257, dtype=dtype)
  init = x[:5]
  whole = kmeans(None, x, init=init)
  chunked = kmeans(None, x, init=init, chunk_size=32)
  np.testing.assert_array_equal(np.asarray(whole.assignment),
                                np.asarray(chunked.assignment))
  np.testing.assert_allclose(np.asarray(whole.centroids),
                             np.asarray(chunked.centroids), rtol=RTOL[dtype])
  a = assign_clusters(x, whole.centroids, chunk_size=50)
  np.testing.assert_array_equal(np.asarray(a.cluster), np.asarray(whole.assignment))


def test_assign_clusters_matches_brute_force(dtype, mode):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(100, 7)).astype(dtype)
  c = rng.normal(size=(9, 7)).astype(dtype)
  out = assign_clusters(x, c)
  d2 = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(out.cluster), d2.argmin(1))
  np.testing.assert_allclose(np.asarray(out.sq_distance), d2.min(1),
                             rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 10)
  assert out.cluster.dtype == jnp.int32


def test_a_row_that_is_not_finite_is_assigned_no_cluster():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(20, 3))
  c = rng.normal(size=(4, 3))
  x[3, 1], x[7, 0], x[8] = np.nan, np.inf, -np.inf
  for fn in (assign_clusters, jax.jit(assign_clusters)):
    out = fn(jnp.asarray(x), jnp.asarray(c))
    bad = np.zeros(20, bool)
    bad[[3, 7, 8]] = True
    cluster = np.asarray(out.cluster)
    assert (cluster[bad] == -1).all() and np.isnan(out.sq_distance[bad]).all()
    d2 = ((x[~bad, None] - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(cluster[~bad], d2.argmin(1))
  # So a k-means router leaves such a prompt unrouted, as a learned map does.
  from uniroute_jax.router import Router
  router = Router(centroids=c, models=("a", "b"), psi=rng.random((4, 2)),
                  cost=np.array([1.0, 0.5]))
  choice = np.asarray(router.route(jnp.asarray(x), 0.1).choice)
  assert (choice[[3, 7, 8]] == -1).all() and (choice[~bad] >= 0).all()


def test_assignment_invariant_to_translation_and_permutation():
  x = blobs(n=200)
  c = x[:4]
  base = np.asarray(assign_clusters(x, c).cluster)
  shifted = np.asarray(assign_clusters(x + 50.0, c + 50.0).cluster)
  np.testing.assert_array_equal(base, shifted)
  perm = np.random.default_rng(0).permutation(len(x))
  np.testing.assert_array_equal(np.asarray(assign_clusters(x[perm], c).cluster),
                                base[perm])


def test_prompt_permutation_does_not_change_clustering():
  x = blobs(n=200)
  init = x[:4]
  perm = np.random.default_rng(1).permutation(len(x))
  a = kmeans(None, x, init=init)
  b = kmeans(None, x[perm], init=init)
  np.testing.assert_allclose(np.asarray(a.centroids), np.asarray(b.centroids),
                             rtol=1e-9)
  np.testing.assert_array_equal(np.asarray(a.assignment)[perm],
                                np.asarray(b.assignment))


def test_converged_flag():
  x = blobs(n=400, centres=8, spread=1.0)
  one_step = kmeans(None, x, init=x[:8], max_iter=1, tol=0.0)
  assert not bool(one_step.converged)
  assert int(one_step.num_iterations) == 1
  loose = kmeans(None, x, init=x[:8], tol=1e6)
  assert bool(loose.converged)
  assert int(loose.num_iterations) == 1


def test_tolerance_scales_with_the_data():
  x = blobs(n=300)
  a = kmeans(None, x, init=x[:4], tol=1e-2)
  b = kmeans(None, 1000.0 * x, init=1000.0 * x[:4], tol=1e-2)
  assert int(a.num_iterations) == int(b.num_iterations)


def test_low_precision_input_accumulates_in_float32():
  x = blobs(n=200, dtype=np.float16)
  out = kmeans(jax.random.key(0), x, num_clusters=3)
  assert out.centroids.dtype == np.float32


def test_no_retrace_when_only_values_change():
  x = blobs(n=120)
  kmeans(None, x, init=x[:3], tol=1e-4, weights=np.ones(len(x)))
  kmeans(jax.random.key(0), x, num_clusters=5, active_clusters=2)
  with no_retrace():
    kmeans(None, x + 1.0, init=x[3:6], tol=1e-3,
           weights=np.linspace(0.5, 1.5, len(x)))
    kmeans(None, x * 2.0, init=x[6:9], tol=0.0, weights=np.ones(len(x)))
    kmeans(jax.random.key(1), x, num_clusters=5, active_clusters=4)


@pytest.mark.parametrize("bad, match", [
    (dict(num_clusters=11), "num_clusters must be at most"),
    (dict(num_clusters=0), "num_clusters must be a positive integer"),
    (dict(weights=np.ones(9)), "weights must have length 10"),
    (dict(x=np.ones(10)), r"x must be a numeric 2-d array"),
    (dict(x=[["a", "b"]]), r"x must be a numeric 2-d array"),
    (dict(init="bogus"), "init must be"),
    (dict(init=np.ones((2, 3))), "init must have 2 columns"),
    (dict(key=0), "key must be a single jax.random.key"),
    (dict(active_clusters=1.5), "active_clusters must hold integers"),
])
def test_bad_input(bad, match):
  args = dict(x=np.random.default_rng(0).normal(size=(10, 2)), num_clusters=2,
              key=jax.random.key(0))
  args.update(bad)
  if isinstance(args.get("init"), np.ndarray):
    args.pop("num_clusters")
  x, key = args.pop("x"), args.pop("key")
  with pytest.raises(ValueError, match=match):
    kmeans(key, x, **args)


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.full((10, 2), np.nan)), "kmeans: x must be finite"),
    (dict(weights=-np.ones(10)), "weights must be non-negative"),
    (dict(weights=np.zeros(10)), "with a positive entry"),
    (dict(tol=-1.0), "tol must be non-negative"),
    (dict(active_clusters=3), "active_clusters must lie in"),
    (dict(x=np.arange(20, dtype=np.float32).reshape(10, 2) * 1e19),
     "x is too large"),
])
def test_bad_values_are_caught_under_checkify(bad, match):
  """Device values are never inspected by the core (no host sync);
  checked() runs its preconditions on the device and raises."""
  args = dict(x=np.random.default_rng(0).normal(size=(10, 2)), num_clusters=2)
  args.update(bad)
  x = jnp.asarray(args.pop("x"))
  if "weights" in args:
    args["weights"] = jnp.asarray(args["weights"])
  kmeans(jax.random.key(0), x, **args)          # unchecked: no error
  if "weights" in args:   # the same values from the host: refused there
    with pytest.raises(ValueError, match="weights must (be non-negative|have at least one positive)"):
      kmeans(jax.random.key(0), x, **{**args, "weights": np.asarray(args["weights"])})
  with pytest.raises(ValueError, match=match):
    checked(kmeans)(jax.random.key(0), x, **args)


@pytest.mark.parametrize("init", ["k-means++", "random", "array"])
def test_padded_fit_equals_unpadded_fit(init):
  """K active clusters among k slots: the same k-means++ draws, the same
  Lloyd steps, the same clusters as a fit with K slots; padding stays zero
  and is never assigned."""
  x = blobs(n=500, centres=6, spread=3.0)
  start = x[[3, 50, 100, 150]]
  for active in (1, 2, 4):
    kw = dict(init=start[:active] if init == "array" else init)
    pkw = dict(init=np.vstack([start[:active], np.zeros((7 - active, 5))])
               if init == "array" else init)
    plain = kmeans(jax.random.key(4), x, num_clusters=active, **kw)
    padded = kmeans(jax.random.key(4), x, num_clusters=7,
                    active_clusters=active, **pkw)
    np.testing.assert_array_equal(np.asarray(padded.cluster_mask),
                                  np.arange(7) < active)
    np.testing.assert_allclose(np.asarray(padded.centroids)[:active],
                               np.asarray(plain.centroids), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(padded.centroids)[active:], 0.0)
    np.testing.assert_array_equal(np.asarray(padded.assignment),
                                  np.asarray(plain.assignment))
    assert int(padded.num_iterations) == int(plain.num_iterations)
    np.testing.assert_allclose(float(padded.inertia), float(plain.inertia),
                               rtol=1e-12)
    out = assign_clusters(x, padded.centroids, cluster_mask=padded.cluster_mask)
    np.testing.assert_array_equal(np.asarray(out.cluster),
                                  np.asarray(plain.assignment))


def test_padded_fits_vmap_over_the_number_of_clusters():
  """One program for every K: vmapped over active counts it equals the
  separate fits."""
  x = jnp.asarray(blobs(n=300, centres=5))
  keys = jax.random.split(jax.random.key(2), 3)
  counts = jnp.array([2, 3, 5])
  batched = jax.vmap(lambda k, a: kmeans(k, x, num_clusters=5,
                                         active_clusters=a))(keys, counts)
  for i, a in enumerate((2, 3, 5)):
    alone = kmeans(keys[i], x, num_clusters=a)
    np.testing.assert_allclose(np.asarray(batched.centroids[i, :a]),
                               np.asarray(alone.centroids), rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(batched.assignment[i]),
                                  np.asarray(alone.assignment))


@pytest.mark.parametrize("impl", ["_nearest_block", "_nearest_tile"])
@pytest.mark.parametrize("k", [13, 40])
def test_both_assignment_kernels_match_brute_force(dtype, impl, k):
  """The CPU kernel runs on this machine; the generic one serves GPU and TPU
  (compare-and-select up to 32 centroids, argmin above). An inactive slot
  (+inf penalty) is never the nearest; ties go to the lower index."""
  rng = np.random.default_rng(6)
  x = rng.normal(size=(301, 9)).astype(dtype)
  c = rng.normal(size=(k, 9)).astype(dtype)
  c[7] = c[2]   # an exact tie: the lower index wins
  x_sq = (x * x).sum(1)
  active = np.arange(k) != 4
  penalty = np.where(active, 0.0, np.inf).astype(dtype)
  cluster, sq = getattr(km, impl)(jnp.asarray(x), jnp.asarray(x_sq),
                                  jnp.asarray(c), jnp.asarray(penalty))
  d2 = ((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
  d2[:, ~active] = np.inf
  np.testing.assert_array_equal(np.asarray(cluster), d2.argmin(1))
  np.testing.assert_allclose(np.asarray(sq), d2.min(1), rtol=RTOL[dtype] * 10,
                             atol=RTOL[dtype] * 10)


@pytest.mark.parametrize("impl", ["_cluster_sums_one_hot",
                                  "_cluster_sums_scatter"])
def test_both_centroid_sum_kernels_match_a_numpy_loop(dtype, impl):
  """The one-hot matmul serves few clusters (and accelerators), the
  scatter-add more of them on a CPU: both give each cluster's weighted sum
  and mass, an empty cluster zeros."""
  rng = np.random.default_rng(8)
  x = rng.normal(size=(203, 5)).astype(dtype)
  w = rng.uniform(size=203).astype(dtype)
  cluster = rng.integers(0, 6, size=203).astype(np.int32)
  cluster[cluster == 3] = 0
  sums, mass = getattr(km, impl)(jnp.asarray(x * w[:, None]), jnp.asarray(w),
                                 jnp.asarray(cluster), 7)
  want_sums = np.zeros((7, 5))
  want_mass = np.zeros(7)
  for row, j in enumerate(cluster):
    want_sums[j] += x[row].astype(np.float64) * w[row]
    want_mass[j] += w[row]
  np.testing.assert_allclose(np.asarray(sums), want_sums, rtol=RTOL[dtype] * 10,
                             atol=RTOL[dtype] * 10)
  np.testing.assert_allclose(np.asarray(mass), want_mass, rtol=RTOL[dtype] * 10)
  assert np.all(np.asarray(sums)[[3, 6]] == 0) and np.all(np.asarray(mass)[[3, 6]] == 0)


def test_layout_blocks_are_whole_tiles():
  for n, k, chunk in [(10, 3, None), (100_000, 100, None), (1_000_000, 100, None),
                      (5000, 7, 128), (1, 1, None)]:
    block, tile = km._layout(n, k, chunk)
    assert block % tile == 0 and tile >= 1
    assert block * k <= max(2 ** 24, tile * k) or chunk is not None


def test_many_clusters_match_sklearn():
  """Above 32 clusters the update is a scatter-add and, on CPU, assignment
  runs in transposed tiles: the same fixed point as scikit-learn."""
  x = blobs(n=900, d=6, centres=40, spread=6.0)
  init = x[:40]
  ours = kmeans(None, x, init=init, tol=0.0, max_iter=100)
  ref = KMeans(40, init=init, n_init=1, tol=0.0, max_iter=100,
               algorithm="lloyd").fit(x)
  np.testing.assert_allclose(float(ours.inertia), ref.inertia_, rtol=1e-8)
  assert adjusted_rand_score(ref.labels_, np.asarray(ours.assignment)) == 1.0
  assert int(ours.num_iterations) == ref.n_iter_


@pytest.mark.parametrize("bad, match", [
    (np.full((10, 2), np.nan), "x must be finite"),
    (np.arange(20, dtype=np.float32).reshape(10, 2) * 1e19,
     "would overflow float32"),
    (np.arange(20, dtype=np.float64).reshape(10, 2) * 1e160,
     "would overflow float64"),
])
def test_host_points_that_would_give_nan_are_refused(bad, match):
  """Given host data, kmeans checks the values once on the host: points so
  large that squared distances overflow used to give a NaN inertia."""
  with pytest.raises(ValueError, match=match):
    kmeans(jax.random.key(0), bad, num_clusters=2)


def test_large_points_within_the_bound_are_accepted_and_exact():
  """Points 1e18 from the origin: inside the bound, the objective is finite
  and the fit is the hand-computed one (each pair's midpoint)."""
  scale = 5e17
  x = np.asarray([[0.0], [1.0], [10.0], [11.0]], np.float32) * scale
  fit = kmeans(jax.random.key(0), x, num_clusters=2)
  np.testing.assert_allclose(float(fit.inertia), scale ** 2, rtol=1e-5)
  np.testing.assert_allclose(np.sort(np.asarray(fit.centroids)[:, 0]),
                             [0.5 * scale, 10.5 * scale], rtol=1e-6)
  assert fit.assignment[0] == fit.assignment[1] != fit.assignment[2]


def test_more_clusters_than_distinct_points_warns():
  x = np.repeat(np.eye(3), 10, axis=0)
  with pytest.warns(UserWarning, match="x: only 3 distinct point.*num_clusters 5"):
    fit = kmeans(jax.random.key(0), x, num_clusters=5)
  assert len({tuple(np.round(row, 6)) for row in np.asarray(fit.centroids)}) == 3
  with pytest.warns(UserWarning, match="2 distinct point.*positive weight"):
    kmeans(jax.random.key(0), x, num_clusters=3,
           weights=np.repeat([1.0, 1.0, 0.0], 10))
  # Signed zeros are one point; enough distinct points never warn.
  with pytest.warns(UserWarning, match="1 distinct"):
    kmeans(jax.random.key(0), np.asarray([[0.0], [-0.0]]), num_clusters=2)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    kmeans(jax.random.key(0), blobs(), num_clusters=5)
    kmeans(jax.random.key(0), jnp.asarray(x), num_clusters=5)  # device data


def test_router_from_kmeans_checks_embeddings_by_name():
  from uniroute_jax import Router
  with pytest.raises(ValueError, match="embeddings: points lie"):
    Router.from_kmeans(jax.random.key(0),
                       np.arange(20, dtype=np.float32).reshape(10, 2) * 1e19,
                       num_clusters=2)
  with pytest.warns(UserWarning, match="embeddings: only 3 distinct"):
    Router.from_kmeans(jax.random.key(0), np.repeat(np.eye(3), 4, axis=0),
                       num_clusters=4)
