"""ZeroRouter and K-NN against brute force."""

import itertools

import jax
import numpy as np
import pytest

from conftest import RTOL, no_retrace
from uniroute_jax.baselines import knn
from uniroute_jax import (checked, choose_models, deferral_curve, deferral_metrics,
                          knn_predicted_loss, knn_predicted_loss_grid,
                          zero_router_curve,
                          zero_router_hull, zero_router_route)


def brute_hull(loss, cost, pool):
  """LLMs the static rule picks at 0, between break-evens, or beyond them."""
  idx = np.flatnonzero(pool)
  breaks = {0.0}
  for a, b in itertools.combinations(idx, 2):
    if cost[a] != cost[b]:
      lam = (loss[a] - loss[b]) / (cost[b] - cost[a])
      if lam > 0:
        breaks.add(lam)
  breaks = np.array(sorted(breaks))
  probes = np.concatenate([[0.0], (breaks[1:] + breaks[:-1]) / 2, [breaks[-1] * 2 + 1]])
  chosen = np.asarray(choose_models(loss[None], cost, probes, pool_mask=pool))[:, 0]
  return sorted(set(chosen.tolist()), key=lambda j: cost[j])


def test_hull_matches_brute_force(dtype):
  rng = np.random.default_rng(0)
  for trial in range(20):
    m = rng.integers(2, 12)
    loss = rng.random(m).astype(dtype)
    cost = rng.uniform(0.1, 5.0, size=m).astype(dtype)
    pool = rng.random(m) < 0.8
    pool[rng.integers(m)] = True
    hull = zero_router_hull(loss, cost, pool_mask=pool)
    size = int(hull.size)
    expected = brute_hull(loss.astype(np.float64), cost.astype(np.float64), pool)
    assert np.asarray(hull.models)[:size].tolist() == expected
    # Padding repeats the dearest vertex.
    assert np.all(np.asarray(hull.models)[size:] == expected[-1])
    # Vertices: costs up, losses down, slopes flattening (convex).
    c, l = np.asarray(hull.cost)[:size], np.asarray(hull.loss)[:size]
    assert np.all(np.diff(c) > 0) and np.all(np.diff(l) < 0)
    slopes = np.diff(l) / np.diff(c)
    assert np.all(np.diff(slopes) > -1e-6)


def test_hull_excludes_points_on_an_edge():
  loss = np.array([0.5, 0.25, 0.0, 0.6])   # LLM 1 is on the segment 0-2
  cost = np.array([1.0, 2.0, 3.0, 2.0])
  hull = zero_router_hull(loss, cost)
  assert int(hull.size) == 2
  assert np.asarray(hull.models)[:2].tolist() == [0, 2]


def test_randomised_route_meets_the_budget():
  loss = np.array([0.5, 0.3, 0.2])
  cost = np.array([1.0, 2.0, 4.0])
  hull = zero_router_hull(loss, cost)
  n = 200_000
  choice = np.asarray(zero_router_route(jax.random.key(0), hull, 3.0, num_prompts=n))
  assert set(np.unique(choice)) == {1, 2}
  # P(LLM 1) = (4 - 3) / (4 - 2) = 1/2; 5 standard errors of slack.
  np.testing.assert_allclose((choice == 1).mean(), 0.5, atol=5 * np.sqrt(0.25 / n))
  np.testing.assert_allclose(cost[choice].mean(), 3.0, atol=5 * np.sqrt(1.0 / n))
  low = np.asarray(zero_router_route(jax.random.key(1), hull, 0.1, num_prompts=10))
  high = np.asarray(zero_router_route(jax.random.key(1), hull, 9.0, num_prompts=10))
  assert np.all(low == 0) and np.all(high == 2)


def test_zero_router_curve_is_one_cluster_uniroute():
  """Prop. 9: ZeroRouter's curve is that of the rule with gamma = mean loss."""
  rng = np.random.default_rng(1)
  val = (rng.random((80, 6)) < rng.random(6)).astype(float)
  test = (rng.random((50, 6)) < rng.random(6)).astype(float)
  cost = rng.uniform(0.1, 2.0, size=6)
  hull = zero_router_hull(val.mean(0), cost)
  zero = deferral_metrics(zero_router_curve(hull, test, cost))
  gamma = np.broadcast_to(val.mean(0), test.shape)
  rule = deferral_metrics(deferral_curve(gamma, test, cost))
  for a, b in zip(zero, rule):
    np.testing.assert_allclose(float(a), float(b), rtol=1e-12)


def numpy_knn(query, reference, loss, mask, k, metric):
  out = np.zeros((len(query), loss.shape[1]))
  overall = (loss * mask).sum(0) / mask.sum(0)
  for i, q in enumerate(query):
    if metric == "cosine":
      score = (reference / np.linalg.norm(reference, axis=1, keepdims=True)) @ (
          q / np.linalg.norm(q))
    else:
      score = -((reference - q) ** 2).sum(1)
    nearest = np.argsort(-score, kind="stable")[:k]
    for j in range(loss.shape[1]):
      labelled = nearest[mask[nearest, j]]
      out[i, j] = loss[labelled, j].mean() if len(labelled) else overall[j]
  return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_matches_numpy(dtype, mode, metric):
  rng = np.random.default_rng(2)
  query = rng.normal(size=(30, 6)).astype(dtype)
  reference = rng.normal(size=(50, 6)).astype(dtype)
  loss = rng.random((50, 4)).astype(dtype)
  mask = rng.random((50, 4)) < 0.7
  mask[:, 3] = False
  mask[0, 3] = True  # LLM 3: most queries have no labelled neighbour
  out = knn_predicted_loss(query, reference, loss, num_neighbors=5, mask=mask,
                           metric=metric)
  expected = numpy_knn(query.astype(np.float64), reference.astype(np.float64),
                       loss.astype(np.float64), mask, 5, metric)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=RTOL[dtype] * 10)
  assert out.dtype == dtype


def test_knn_chunked_equals_whole_and_is_order_invariant():
  rng = np.random.default_rng(3)
  query, reference = rng.normal(size=(37, 5)), rng.normal(size=(40, 5))
  loss = rng.random((40, 3))
  whole = knn_predicted_loss(query, reference, loss, num_neighbors=4)
  chunked = knn_predicted_loss(query, reference, loss, num_neighbors=4, chunk_size=8)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-12)
  perm = rng.permutation(40)
  shuffled = knn_predicted_loss(query, reference[perm], loss[perm], num_neighbors=4)
  np.testing.assert_allclose(np.asarray(shuffled), np.asarray(whole), rtol=1e-12)


def test_knn_with_all_neighbours_is_the_mean():
  rng = np.random.default_rng(4)
  reference, loss = rng.normal(size=(20, 3)), rng.random((20, 2))
  out = knn_predicted_loss(rng.normal(size=(5, 3)), reference, loss, num_neighbors=20)
  np.testing.assert_allclose(np.asarray(out), np.tile(loss.mean(0), (5, 1)), rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (dict(num_neighbors=11), "num_neighbors must be at most"),
    (dict(metric="manhattan"), "metric must be one of"),
    (dict(query=np.ones((3, 4))), "same embedding size"),
    (dict(reference_loss=np.ones((9, 2))), "reference and reference_loss must agree"),
    (dict(num_neighbors=np.array([1, 2])), "num_neighbors must be a numeric 0-d"),
    (dict(query="text"), "query must be a numeric 2-d array"),
])
def test_knn_bad_input(bad, match):
  args = dict(query=np.ones((3, 2)), reference=np.ones((10, 2)),
              reference_loss=np.zeros((10, 2)), num_neighbors=3)
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    knn_predicted_loss(args.pop("query"), args.pop("reference"),
                       args.pop("reference_loss"), **args)


def test_knn_grid_equals_one_k_at_a_time(mode):
  rng = np.random.default_rng(5)
  query, reference = rng.normal(size=(23, 4)), rng.normal(size=(30, 4))
  loss, mask = rng.random((30, 3)), rng.random((30, 3)) < 0.6
  ks = (1, 4, 9, 30)
  grid = knn_predicted_loss_grid(query, reference, loss, num_neighbors=ks, mask=mask,
                                 chunk_size=7)
  assert grid.shape == (4, 23, 3)
  for g, k in enumerate(ks):
    expected = numpy_knn(query, reference, loss, mask, k, "cosine")
    np.testing.assert_allclose(np.asarray(grid[g]), expected, rtol=1e-12)


def test_knn_grid_of_traced_ks_equals_static_ks_without_recompiling():
  rng = np.random.default_rng(6)
  query, reference = rng.normal(size=(13, 4)), rng.normal(size=(30, 4))
  loss, mask = rng.random((30, 3)), rng.random((30, 3)) < 0.6
  static = knn_predicted_loss_grid(query, reference, loss, num_neighbors=(2, 7),
                                   max_neighbors=9, mask=mask)
  traced = knn_predicted_loss_grid(query, reference, loss, max_neighbors=9,
                                   num_neighbors=jax.numpy.array([2, 7]), mask=mask)
  np.testing.assert_array_equal(np.asarray(static), np.asarray(traced))
  with no_retrace():
    other = knn_predicted_loss_grid(query, reference, loss, max_neighbors=9,
                                    num_neighbors=jax.numpy.array([9, 1]),
                                    mask=mask)
  for g, k in enumerate((9, 1)):
    np.testing.assert_allclose(
        np.asarray(other[g]), numpy_knn(query, reference, loss, mask, k, "cosine"),
        rtol=1e-12)
  with pytest.raises(ValueError, match=r"num_neighbors must lie in \[1, 9\]"):
    checked(knn_predicted_loss_grid)(query, reference, loss, max_neighbors=9,
                                     num_neighbors=jax.numpy.array([0, 3]))
  with pytest.raises(ValueError, match="reference_loss must lie in"):
    checked(knn_predicted_loss)(query, reference, loss + 1, num_neighbors=3)


def test_knn_grid_bad_input():
  args = (np.ones((3, 2)), np.ones((10, 2)), np.zeros((10, 2)))
  with pytest.raises(ValueError, match="max_neighbors must be given"):
    knn_predicted_loss_grid(*args, num_neighbors=np.array([1, 2]))
  with pytest.raises(ValueError, match="must name at least one k"):
    knn_predicted_loss_grid(*args, num_neighbors=())
  with pytest.raises(ValueError, match=r"at most max_neighbors \(2\)"):
    knn_predicted_loss_grid(*args, num_neighbors=(1, 3), max_neighbors=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nearest_mask_is_the_top_k_with_ties_to_the_lower_index(dtype):
  """The bisection over order keys picks exactly the k largest scores,
  ties to the lower index, for every k (negative, zero, repeated scores)."""
  from uniroute_jax.baselines.knn import _nearest_mask
  rng = np.random.default_rng(9)
  score = rng.integers(-3, 4, size=(40, 17)).astype(dtype) / 2   # many ties
  score[0] = -0.0
  score[1] = np.linspace(-1e30, 1e30, 17)
  distinct = rng.permutation(40 * 17).reshape(40, 17).astype(dtype) - 300

  def top_k_lower_index_first(score, k):
    order = np.lexsort((np.arange(17)[None].repeat(40, 0), -score), axis=1)
    want = np.zeros_like(score)
    np.put_along_axis(want, order[:, :k], 1.0, axis=1)
    return want

  # Tied and tie-free blocks take different paths; under vmap both run.
  batched = jax.jit(jax.vmap(_nearest_mask, in_axes=(0, None)))
  for k in (1, 2, 7, 16, 17):
    for s in (score, distinct):
      np.testing.assert_array_equal(np.asarray(jax.jit(_nearest_mask)(s, k)),
                                    top_k_lower_index_first(s, k))
    both = np.asarray(batched(np.stack([score, distinct]), k))
    np.testing.assert_array_equal(both[0], top_k_lower_index_first(score, k))
    np.testing.assert_array_equal(both[1], top_k_lower_index_first(distinct, k))


def test_knn_one_k_traced_equals_the_grid_and_numpy(dtype):
  rng = np.random.default_rng(10)
  query = rng.normal(size=(23, 4)).astype(dtype)
  reference = rng.normal(size=(30, 4)).astype(dtype)
  loss, mask = rng.random((30, 3)).astype(dtype), rng.random((30, 3)) < 0.6
  for metric in ("cosine", "euclidean"):
    ks = jax.numpy.arange(1, 31)
    batched = jax.jit(jax.vmap(lambda k: knn_predicted_loss(
        query, reference, loss, num_neighbors=k, mask=mask, metric=metric)))(ks)
    grid = knn_predicted_loss_grid(query, reference, loss, mask=mask,
                                   num_neighbors=tuple(range(1, 31)),
                                   metric=metric)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(grid),
                               rtol=RTOL[dtype] * 10, atol=RTOL[dtype])
    for k in (1, 13, 30):
      np.testing.assert_allclose(
          np.asarray(batched[k - 1]),
          numpy_knn(query.astype(np.float64), reference.astype(np.float64),
                    loss.astype(np.float64), mask, k, metric),
          rtol=RTOL[dtype] * 10)
  with pytest.raises(ValueError, match=r"num_neighbors must lie in \[1, 30\]"):
    checked(knn_predicted_loss)(query, reference, loss,
                                num_neighbors=jax.numpy.asarray(31))


def test_a_hull_of_no_available_llm_has_no_vertex():
  hull = jax.jit(lambda p: zero_router_hull(np.array([0.2, 0.5, 0.1]),
                                            np.array([1.0, 2.0, 3.0]),
                                            pool_mask=p))(np.zeros(3, bool))
  assert int(hull.size) == 0
  np.testing.assert_array_equal(np.asarray(hull.models), -1)
  assert np.isnan(np.asarray(hull.cost)).all()
  assert np.isnan(np.asarray(hull.loss)).all()


def test_a_batch_of_hulls_is_refused_with_the_way_to_map_it():
  hulls = jax.vmap(lambda m: zero_router_hull(m, np.array([1.0, 2.0])))(
      np.array([[0.2, 0.1], [0.3, 0.1]]))
  with pytest.raises(ValueError, match=r"hull must be one hull .*jax.vmap"):
    zero_router_route(jax.random.key(0), hulls, 0.5, num_prompts=4)


def numpy_lists(x, length, metric):
  """Each row's nearest rows of x, nearest first, ties to the lower index."""
  if metric == "cosine":
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    score = unit @ unit.T
  else:
    score = -((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  return np.argsort(-score, axis=1, kind="stable")[:, :length]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_neighbor_lists_match_numpy(dtype, mode, metric):
  rng = np.random.default_rng(11)
  x = rng.normal(size=(45, 6)).astype(dtype)
  for length, chunk in ((45, None), (12, 8)):
    lists = knn.neighbor_lists(x, length=length, metric=metric, chunk_size=chunk)
    assert lists.shape == (45, length) and lists.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(lists),
                                  numpy_lists(x.astype(np.float64), length, metric))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_neighbor_lists_break_ties_to_the_lower_index(dtype, mode, metric):
  """Rows of four entries +-1 among eight, each with its negation: unit rows
  of +-0.5 and a mean of exactly 0, so every score is exact whatever the
  order of its sums, and many rows tie (duplicate rows among them). A
  matmul need not round equal rows' scores alike in different output
  positions, so ties are only pinned this way."""
  rng = np.random.default_rng(13)
  half = np.zeros((20, 8), dtype)
  for row in half:
    row[rng.permutation(8)[:4]] = rng.choice([-1.0, 1.0], 4)
  half[15] = half[3]
  x = np.concatenate([half, -half])
  for length, chunk in ((40, None), (12, 8)):
    lists = knn.neighbor_lists(x, length=length, metric=metric, chunk_size=chunk)
    np.testing.assert_array_equal(np.asarray(lists),
                                  numpy_lists(x.astype(np.float64), length, metric))


def _positions(lists, references):
  """Dataset rows as positions among the (sorted) references, -1 outside."""
  position = np.full(lists.shape[0], -1)
  position[references] = np.arange(len(references))
  return position[lists]


def test_grid_from_lists_equals_a_search_of_the_references(mode):
  """The first k references of each query's list of nearest prompts are its
  k nearest references: the grid equals the search over the references
  alone and the NumPy loop, without recompiling for new k."""
  rng = np.random.default_rng(12)
  x = rng.normal(size=(60, 5))
  references = np.sort(rng.permutation(60)[:35])
  queries = np.setdiff1d(np.arange(60), references)
  loss, mask = rng.random((35, 3)), rng.random((35, 3)) < 0.7
  lists = _positions(np.asarray(knn.neighbor_lists(x, length=60)), references)
  ks = np.array([1, 4, 9, 20])
  grid, complete = knn.knn_predicted_loss_grid_from_lists(
      lists[queries], loss, mask=mask, num_neighbors=ks, max_neighbors=20)
  assert grid.shape == (4, 25, 3) and bool(np.all(complete))
  searched = knn_predicted_loss_grid(x[queries], x[references], loss, mask=mask,
                                     num_neighbors=tuple(ks.tolist()))
  np.testing.assert_allclose(np.asarray(grid), np.asarray(searched), rtol=1e-12)
  for g, k in enumerate(ks):
    np.testing.assert_allclose(
        np.asarray(grid[g]),
        numpy_knn(x[queries], x[references], loss, mask, int(k), "cosine"),
        rtol=1e-12)
  with no_retrace():
    knn.knn_predicted_loss_grid_from_lists(
        lists[queries], loss, mask=mask, num_neighbors=ks[::-1].copy(),
        max_neighbors=20)


def test_grid_from_short_lists_says_which_rows_are_incomplete():
  """A list holding fewer references than the largest k is flagged, and its
  predictions use the references it holds."""
  rng = np.random.default_rng(13)
  x = rng.normal(size=(40, 4))
  references = np.sort(rng.permutation(40)[:20])
  queries = np.setdiff1d(np.arange(40), references)
  loss = rng.random((20, 2))
  short = _positions(np.asarray(knn.neighbor_lists(x, length=10)), references)
  found = (short[queries] >= 0).sum(1)
  grid, complete = knn.knn_predicted_loss_grid_from_lists(
      short[queries], loss, num_neighbors=np.array([2, 6]), max_neighbors=6)
  np.testing.assert_array_equal(np.asarray(complete), found >= 6)
  assert 0 < np.sum(found < 6) < len(queries)   # both kinds of row occur
  for i, q in enumerate(queries):
    held = short[q][short[q] >= 0]
    for g, k in enumerate((2, 6)):
      np.testing.assert_allclose(float(grid[g, i, 0]),
                                 loss[held[:k], 0].mean(), rtol=1e-12)


def test_neighbor_lists_bad_input():
  with pytest.raises(ValueError, match=r"length must be at most the number "
                     r"of prompts \(5\)"):
    knn.neighbor_lists(np.ones((5, 2)), length=6)
  with pytest.raises(ValueError, match="metric must be one of"):
    knn.neighbor_lists(np.ones((5, 2)), length=2, metric="manhattan")
  args = dict(reference_loss=np.zeros((4, 2)), num_neighbors=np.array([1, 2]),
              max_neighbors=2)
  with pytest.raises(ValueError, match=r"neighbors must hold integers \[n, L\]"):
    knn.knn_predicted_loss_grid_from_lists(np.zeros((3, 5)), **args)
  with pytest.raises(ValueError, match=r"reference rows in \[0, 4\) or -1"):
    checked(knn.knn_predicted_loss_grid_from_lists)(
        np.array([[0, 4]]), **args)


def test_a_prompts_list_does_not_depend_on_the_rows_found_with_it():
  """The protocol finds only the lists its trials read, in blocks whose
  other rows vary with the trials: a row's list must not change with them
  (float32, where rounding could tell)."""
  rng = np.random.default_rng(14)
  x = rng.normal(size=(300, 16)).astype(np.float32)
  whole = np.asarray(knn.neighbor_lists(x, length=40))
  for rows in (rng.permutation(300)[:64], np.arange(7, 300, 5)[::-1].copy()):
    part = np.asarray(knn.neighbor_lists(x, length=40, rows=rows))
    np.testing.assert_array_equal(part, whole[rows])
