"""The Router: routing against NumPy brute force, pool edits, save and load."""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import RTOL, no_retrace
from uniroute_jax import LearnedMap, checked, clustering
from uniroute_jax.cluster_map import (
    apply_cluster_map, fit_cluster_map, learned_map_predicted_loss)
from uniroute_jax.io import FORMAT_VERSION
from uniroute_jax.router import Representatives, Router

LAMBDAS = np.array([0.0, 0.013, 0.07, 0.21, 0.9, 40.0])


# ------------------------------------------------------------------ oracles


def numpy_nearest(x, centroids):
  x, centroids = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
  d2 = ((x[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
  return d2.argmin(axis=1)


def numpy_psi(phi, loss, mask, weights=None, prior=0.0):
  """Eq. 13 with shrinkage, looping over clusters and LLMs.

  ``phi`` is [n, k] membership (one-hot for hard clusters); a cluster with
  no labelled prompt for an LLM gets that LLM's overall mean.
  """
  n, k = phi.shape
  m = loss.shape[1]
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  psi = np.empty((k, m))
  for j in range(m):
    lab = mask[:, j]
    overall = (w[lab] * loss[lab, j]).sum() / w[lab].sum()
    for c in range(k):
      cw = phi[lab, c] * w[lab]
      count, total = cw.sum(), (cw * loss[lab, j]).sum()
      psi[c, j] = ((total + prior * overall) / (count + prior)
                   if count + prior > 0 else overall)
  return psi


def brute_route(gamma, cost, lam, pool=None):
  """argmin gamma + lam * cost; ties to the cheaper LLM, then lower index."""
  n, m = gamma.shape
  pool = np.ones(m, bool) if pool is None else pool
  out = np.empty(n, int)
  for i in range(n):
    keys = [(gamma[i, j] + lam * cost[j], cost[j], j)
            for j in range(m) if pool[j]]
    out[i] = min(keys)[2]
  return out


# ------------------------------------------------------------------- data


def problem(seed=0, n_val=60, n_test=50, d=3, k=4, m=5, dtype=np.float64):
  """Random prompts near k centres, 0/1 losses with missing labels, costs
  with one repeated value (exact-tie coverage)."""
  rng = np.random.default_rng(seed)
  centres = 3.0 * rng.normal(size=(k, d))
  x_val = centres[rng.integers(0, k, n_val)] + rng.normal(size=(n_val, d))
  x_test = centres[rng.integers(0, k, n_test)] + rng.normal(size=(n_test, d))
  loss = (rng.random((n_val, m)) < rng.uniform(0.2, 0.8, m)).astype(dtype)
  mask = rng.random((n_val, m)) < 0.85
  mask[0] = True
  loss[~mask] = np.nan   # missing labels may hold anything
  cost = rng.uniform(0.5, 3.0, m)
  cost[1] = cost[0]
  return dict(centroids=centres.astype(dtype), x_val=x_val.astype(dtype),
              x_test=x_test.astype(dtype), loss=loss, mask=mask,
              cost=cost.astype(dtype), names=tuple(f"llm{j}" for j in range(m)))


def kmeans_router(p, names=None, cols=None):
  cols = slice(None) if cols is None else cols
  router = Router(centroids=p["centroids"])
  return router.add_models(names or p["names"], p["x_val"], p["loss"][:, cols],
                           p["cost"][cols], mask=p["mask"][:, cols])


@pytest.fixture(scope="module")
def fitted():
  """A small learned map (hidden=(8,), 2 epochs) on float32 blobs."""
  p = problem(seed=7, n_val=64, dtype=np.float32)
  errors = np.nan_to_num(p["loss"])
  psi = np.clip(numpy_psi(np.eye(4)[numpy_nearest(p["x_val"], p["centroids"])],
                          errors, p["mask"]), 0.05, 0.95).astype(np.float32)
  return fit_cluster_map(jax.random.key(3), p["x_val"], errors, psi,
                         mask=p["mask"], hidden=(8,), epochs=2, batch_size=16,
                         momentum=0.9)


def learned_router(fitted, p):
  return Router.from_cluster_map(fitted).add_models(
      p["names"], p["x_val"], p["loss"], p["cost"], mask=p["mask"])


def assert_same_router(a, b):
  assert a.models == b.models and a.kind == b.kind
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------ k-means


def test_kmeans_route_matches_brute_force(dtype):
  p = problem(dtype=dtype)
  router = kmeans_router(p)
  assert router.kind == "kmeans" and router.dtype == dtype
  assert (router.num_clusters, router.dim, router.num_models) == (4, 3, 5)
  hard = np.eye(4)[numpy_nearest(p["x_val"], p["centroids"])]
  psi = numpy_psi(hard, p["loss"], p["mask"])
  np.testing.assert_allclose(np.asarray(router.psi), psi, rtol=RTOL[dtype])
  cluster = numpy_nearest(p["x_test"], p["centroids"])
  np.testing.assert_array_equal(np.asarray(router.membership(p["x_test"])),
                                cluster)
  gamma = psi[cluster]
  np.testing.assert_allclose(np.asarray(router.predicted_loss(p["x_test"])),
                             gamma, rtol=RTOL[dtype])
  out = router.route(p["x_test"], LAMBDAS.astype(dtype))
  assert out.choice.shape == (len(LAMBDAS), len(cluster))
  cost = p["cost"].astype(np.float64)
  for l, lam in enumerate(LAMBDAS.astype(dtype)):
    np.testing.assert_array_equal(np.asarray(out.choice[l]),
                                  brute_route(gamma, cost, float(lam)))
  single = router.route(p["x_test"], dtype(0.07))
  np.testing.assert_array_equal(np.asarray(single.choice),
                                np.asarray(out.choice[2]))


def test_exact_ties_go_to_cheaper_then_lower_index():
  x = np.zeros((2, 1))
  router = Router(centroids=np.zeros((1, 1)))
  loss = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])  # all 0.5
  router = router.add_models(["a", "b", "c", "d"], x, loss,
                             [2.0, 1.0, 1.0, 3.0])
  np.testing.assert_array_equal(np.asarray(router.route(x, 0.0).choice), [1, 1])
  np.testing.assert_array_equal(
      np.asarray(router.route(x, 0.0, models=["a", "c", "d"]).choice), [2, 2])


def test_infinite_lambda_routes_to_the_cheapest_most_accurate_llm():
  """+inf is the rule's limit, as for ``route``: the cheapest LLMs tie on
  cost, and the lower predicted loss among them wins; NaN is refused."""
  x = np.array([[0.0], [10.0]])
  router = Router(centroids=np.array([[0.0], [10.0]]))
  loss = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
  router = router.add_models(["a", "b", "c"], x, loss, [1.0, 1.0, 5.0],
                             warn_below=None)
  np.testing.assert_array_equal(
      np.asarray(router.route(x, np.array([0.0, np.inf])).choice),
      [[0, 1], [0, 1]])
  np.testing.assert_array_equal(
      np.asarray(router.route(x, np.inf, models=["b", "c"]).choice), [1, 1])
  with pytest.raises(ValueError, match="lambdas must not be NaN"):
    router.route(x, np.nan)
  with pytest.raises(ValueError, match="lambdas must be non-negative"):
    router.route(x, -np.inf)


def test_weights_and_prior_strength_match_numpy():
  p = problem(seed=1)
  w = np.random.default_rng(1).uniform(0.0, 2.0, len(p["x_val"]))
  router = Router(centroids=p["centroids"]).add_models(
      p["names"], p["x_val"], p["loss"], p["cost"], mask=p["mask"], weights=w,
      prior_strength=2.5)
  hard = np.eye(4)[numpy_nearest(p["x_val"], p["centroids"])]
  np.testing.assert_allclose(
      np.asarray(router.psi),
      numpy_psi(hard, p["loss"], p["mask"], weights=w, prior=2.5), rtol=1e-10)


def test_prior_strength_is_traced_with_host_labels():
  """jit and vmap over the strength while the labels are NumPy and the thin
  cells warning is on (it must not ask a tracer whether it is 0); 2 and 2.0
  are one trace."""
  p = problem(seed=1)
  router = Router(centroids=p["centroids"])

  def psi(a):
    return router.add_models(p["names"], p["x_val"], p["loss"], p["cost"],
                             mask=p["mask"], prior_strength=a,
                             warn_below=1).psi

  hard = np.eye(4)[numpy_nearest(p["x_val"], p["centroids"])]
  strengths = np.array([0.0, 2.5])
  for batched in (jax.vmap(psi)(jnp.asarray(strengths)),
                  [jax.jit(psi)(a) for a in strengths]):
    for a, got in zip(strengths, batched):
      np.testing.assert_allclose(
          np.asarray(got), numpy_psi(hard, p["loss"], p["mask"], prior=a),
          rtol=1e-10)
  psi(2.0)
  with no_retrace():
    psi(2)


def test_from_kmeans_uses_kmeans_centroids():
  p = problem(seed=2)
  router = Router.from_kmeans(jax.random.key(0), p["x_val"], num_clusters=3,
                              max_iter=20)
  fit = clustering.kmeans(jax.random.key(0), p["x_val"], num_clusters=3,
                          max_iter=20)
  np.testing.assert_array_equal(np.asarray(router.cluster_map.centroids),
                                np.asarray(fit.centroids))
  assert router.models == () and router.psi.shape == (3, 0)
  assert router.cost.shape == (0,) and router.kind == "kmeans"


# -------------------------------------------------------------------- pool


def test_add_then_remove_restores_the_pool():
  p = problem(seed=3)
  base = kmeans_router(p, names=p["names"][:3], cols=slice(0, 3))
  more = base.add_models(["x", "y"], p["x_val"], p["loss"][:, 3:],
                         p["cost"][3:], mask=p["mask"][:, 3:])
  assert more.models == p["names"][:3] + ("x", "y")
  assert base.models == p["names"][:3]          # unchanged: immutable
  assert_same_router(more.remove_models(["x", "y"]), base)
  # Removing from the middle keeps the others' order and columns.
  mid = more.remove_models("llm1")
  assert mid.models == ("llm0", "llm2", "x", "y")
  np.testing.assert_array_equal(np.asarray(mid.psi),
                                np.asarray(more.psi)[:, [0, 2, 3, 4]])
  empty = more.remove_models(more.models)
  assert empty.models == () and empty.psi.shape == (4, 0)


def test_adding_one_at_a_time_equals_adding_at_once():
  p = problem(seed=4)
  both = kmeans_router(p, names=("a", "b"), cols=slice(0, 2))
  one = Router(centroids=p["centroids"])
  for j, name in enumerate("ab"):
    one = one.add_models([name], p["x_val"], p["loss"][:, j:j + 1],
                         p["cost"][j:j + 1], mask=p["mask"][:, j:j + 1])
  assert_same_router(one, both)


def test_add_psi_equals_add_models():
  p = problem(seed=5)
  router = kmeans_router(p)
  again = Router(centroids=p["centroids"]).add_psi(
      p["names"], router.psi, p["cost"], counts=router.counts)
  assert_same_router(again, router)
  unknown = Router(centroids=p["centroids"]).add_psi(p["names"], router.psi,
                                                    p["cost"])
  assert np.isnan(np.asarray(unknown.counts)).all()


@pytest.mark.parametrize("kind", ["kmeans", "learned_map"])
def test_models_restriction_equals_a_smaller_pool(kind, fitted):
  p = problem(seed=6, dtype=np.float32)
  router = (kmeans_router(p) if kind == "kmeans"
            else learned_router(fitted, p))
  keep = ["llm4", "llm1", "llm2"]
  small = router.remove_models(["llm0", "llm3"])
  full_names = np.asarray(router.models)
  small_names = np.asarray(small.models)
  lambdas = LAMBDAS.astype(np.float32)
  got = router.route(p["x_test"], lambdas, models=keep).choice
  want = small.route(p["x_test"], lambdas).choice
  np.testing.assert_array_equal(full_names[np.asarray(got)],
                                small_names[np.asarray(want)])


# ------------------------------------------------------------- learned map


def test_learned_map_router_matches_the_map(fitted):
  p = problem(seed=6, dtype=np.float32)
  router = learned_router(fitted, p)
  assert router.kind == "learned_map"
  assert isinstance(router.cluster_map, LearnedMap)
  assert (router.num_clusters, router.dim) == (4, 3)
  gamma = router.predicted_loss(p["x_test"])
  np.testing.assert_array_equal(
      np.asarray(gamma),
      np.asarray(learned_map_predicted_loss(fitted, p["x_test"], router.psi)))
  # Psi: soft cluster means, weighted by Phi of the representative prompts.
  phi = np.asarray(apply_cluster_map(fitted, p["x_val"]), np.float64)
  np.testing.assert_allclose(np.asarray(router.psi),
                             numpy_psi(phi, p["loss"], p["mask"]), rtol=1e-5)
  out = router.route(p["x_test"], LAMBDAS.astype(np.float32))
  gamma = np.asarray(gamma, np.float64)
  for l, lam in enumerate(LAMBDAS.astype(np.float32)):
    np.testing.assert_array_equal(
        np.asarray(out.choice[l]),
        brute_route(gamma, p["cost"].astype(np.float64), float(lam)))


def test_router_is_a_pytree_that_passes_through_jit(fitted):
  p = problem(seed=6, dtype=np.float32)
  lambdas = LAMBDAS.astype(np.float32)
  for router in (kmeans_router(p), learned_router(fitted, p)):
    fn = jax.jit(
        lambda r, x: r.route(x, lambdas, models=["llm0", "llm2"]).choice)
    np.testing.assert_array_equal(
        np.asarray(fn(router, p["x_test"])),
        np.asarray(router.route(p["x_test"], lambdas,
                                models=["llm0", "llm2"]).choice))
    assert_same_router(jax.tree.map(lambda a: a, router), router)


# ------------------------------------------------------------- save / load


def saved_kinds(fitted, tmp_path):
  p = problem(seed=8)
  p32 = problem(seed=8, dtype=np.float32)
  plain = fit_cluster_map(jax.random.key(1), p32["x_val"],
                          np.nan_to_num(p32["loss"]), np.full((4, 5), 0.5),
                          mask=p32["mask"], hidden=(), batch_norm=False,
                          epochs=2, dtype=np.float64)
  return {
      "kmeans64": (kmeans_router(p), p),
      "kmeans32": (kmeans_router(p32), p32),
      "kmeans_empty": (Router(centroids=p["centroids"]), p),
      "learned": (learned_router(fitted, p32), p32),
      "single_layer64": (learned_router(plain, p), p),
      "kmeans_representatives": (kmeans_router(p).with_representatives(
          p["x_val"], ids=[f"q{i}" for i in range(60)]), p),
      "learned_representatives": (learned_router(fitted, p32)
                                  .with_representatives(p32["x_val"]), p32),
      # int64 memberships (x64 is on here) are kept as int32, as saved.
      "kmeans_int64_memberships": (Router(
          centroids=p["centroids"], representatives=Representatives(
              tuple(f"q{i}" for i in range(60)), p["x_val"],
              numpy_nearest(p["x_val"], p["centroids"]).astype(np.int64))),
                                   p),
      # A bfloat16 training record, which npy stores as void bytes.
      "learned_bfloat16_record": (learned_router(fitted._replace(
          loss_history=fitted.loss_history.astype(jnp.bfloat16),
          validation_area=fitted.validation_area.astype(jnp.bfloat16)), p32),
                                  p32),
  }


def test_save_load_round_trip(fitted, tmp_path):
  for label, (router, p) in saved_kinds(fitted, tmp_path).items():
    path = router.save(tmp_path / f"{label}.npz")
    loaded = Router.load(path)
    assert repr(loaded) == repr(router)
    assert_same_router(loaded, router)
    assert (loaded.representatives is None) == (router.representatives is None)
    if router.representatives is not None:
      assert loaded.representatives.ids == router.representatives.ids
    if router.kind == "learned_map":
      assert loaded.cluster_map.fitted.graphdef == router.cluster_map.fitted.graphdef
    np.testing.assert_array_equal(
        np.asarray(loaded.predicted_loss(p["x_test"])),
        np.asarray(router.predicted_loss(p["x_test"])))
    if router.models:
      lambdas = LAMBDAS.astype(router.dtype)
      np.testing.assert_array_equal(
          np.asarray(loaded.route(p["x_test"], lambdas).choice),
          np.asarray(router.route(p["x_test"], lambdas).choice))
  with np.load(tmp_path / "learned.npz", allow_pickle=False) as npz:
    assert "params/dense/0/kernel" in npz.files
    assert "state/norms/0/mean" in npz.files
    assert "state/cluster_mask" in npz.files
    assert npz["metadata"].dtype.kind == "U"


def test_save_refuses_to_overwrite(tmp_path):
  p = problem(seed=9)
  first = kmeans_router(p, names=("a",), cols=slice(0, 1))
  second = kmeans_router(p, names=("b", "c"), cols=slice(1, 3))
  path = tmp_path / "router.npz"
  first.save(path)
  before = path.read_bytes()
  with pytest.raises(FileExistsError, match="never overwritten"):
    second.save(path)
  assert path.read_bytes() == before
  assert_same_router(Router.load(path), first)
  second.save(path, overwrite=True)
  assert_same_router(Router.load(path), second)
  assert sorted(os.listdir(tmp_path)) == ["router.npz"]   # no temporary files


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
  p = problem(seed=9)
  router = kmeans_router(p)
  path = router.save(tmp_path / "router.npz")
  before = path.read_bytes()

  def broken(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", broken)
  with pytest.raises(OSError, match="disk full"):
    router.save(path, overwrite=True)
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["router.npz"]


def test_load_asks_for_x64_when_saved_in_float64(tmp_path):
  path = kmeans_router(problem(seed=9)).save(tmp_path / "router.npz")
  with jax.enable_x64(False):
    with pytest.raises(ValueError, match="jax_enable_x64"):
      Router.load(path)


def rewrite(path, out, **changes):
  """Copies a saved router with metadata fields changed."""
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}
  meta = json.loads(str(arrays["metadata"][()]))
  meta.update(changes)
  arrays["metadata"] = np.array(json.dumps(meta))
  np.savez(out, **arrays)
  return out


def test_load_rejects_other_files(tmp_path, monkeypatch):
  p = problem(seed=10)
  path = kmeans_router(p).save(tmp_path / "router.npz")
  np.savez(tmp_path / "other.npz", x=np.ones(3))
  with pytest.raises(ValueError, match="not a saved Router"):
    Router.load(tmp_path / "other.npz")
  bumped = rewrite(path, tmp_path / "bumped.npz", version=FORMAT_VERSION + 1)
  with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}"):
    Router.load(bumped)
  with pytest.raises(ValueError, match="not a saved Router"):
    Router.load(rewrite(path, tmp_path / "format.npz", format="something"))
  with pytest.raises(ValueError, match="psi"):
    Router.load(rewrite(path, tmp_path / "names.npz", models=["a"]))
  np.save(tmp_path / "single.npy", np.ones(3))
  with pytest.raises(ValueError, match="not a saved Router"):
    Router.load(tmp_path / "single.npy")
  (tmp_path / "text.npz").write_text("hello")
  with pytest.raises(ValueError, match="not a saved Router"):
    Router.load(tmp_path / "text.npz")
  with zipfile.ZipFile(tmp_path / "broken.npz", "w") as z:
    z.writestr("psi.npy", b"\x93NUMPY garbage")
  with pytest.raises(ValueError, match="not a saved Router"):
    Router.load(tmp_path / "broken.npz")
  # An object array is pickled data: it is refused, never unpickled.
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}
  arrays["psi"] = np.array([{"a": 1}], dtype=object)
  np.savez(tmp_path / "pickled.npz", **arrays)
  calls = []
  real_load = np.load

  def spy(*args, **kwargs):
    calls.append(kwargs.get("allow_pickle"))
    return real_load(*args, **kwargs)

  monkeypatch.setattr(np, "load", spy)
  with pytest.raises(ValueError, match="object array"):
    Router.load(tmp_path / "pickled.npz")
  assert calls == [False]


# -------------------------------------------------------------- bad inputs


def test_bad_inputs_name_the_argument(fitted):
  p = problem(seed=11)
  router = kmeans_router(p)
  x, loss, mask = p["x_val"], p["loss"][:, :2], p["mask"][:, :2]
  cost = [1.0, 2.0]
  with pytest.raises(ValueError, match="embeddings must have 3 columns"):
    router.route(np.ones((4, 2)), 0.0)
  with pytest.raises(ValueError, match="embeddings must have 3 columns"):
    router.add_models(["a", "b"], np.ones((len(x), 4)), loss, cost, mask=mask)
  with pytest.raises(ValueError, match="embeddings must have 3 columns"):
    Router.from_cluster_map(fitted).predicted_loss(np.ones((4, 5)))
  with pytest.raises(ValueError, match="names must be unique"):
    router.add_models(["a", "a"], x, loss, cost, mask=mask)
  with pytest.raises(ValueError, match="names: .*already in the pool"):
    router.add_models(["a", "llm0"], x, loss, cost, mask=mask)
  with pytest.raises(ValueError, match="loss must have one column per name"):
    router.add_models(["a", "b", "c"], x, loss, cost + [1.0], mask=mask)
  with pytest.raises(ValueError, match="embeddings and loss"):
    router.add_models(["a", "b"], x[:-1], loss, cost, mask=mask)
  with pytest.raises(ValueError, match="mask"):
    router.add_models(["a", "b"], x, loss, cost, mask=mask[:-1])
  with pytest.raises(ValueError, match="cost must be non-negative, found -1.0$"):
    router.add_models(["a", "b"], x, loss, [1.0, -1.0], mask=mask)
  with pytest.raises(ValueError, match="cost must have shape"):
    router.add_models(["a", "b"], x, loss, [1.0], mask=mask)
  with pytest.raises(ValueError, match="cost must be \\[m\\]"):
    router.add_models(["a", "b"], x, loss, np.ones((len(x), 2)), mask=mask)
  with pytest.raises(ValueError, match=r"loss must lie in \[0.0, 1.0\], found 2.0$"):
    router.add_models(["a", "b"], x, np.nan_to_num(loss) + 1, cost)
  with pytest.raises(ValueError, match=r"psi must lie in \[0.0, 1.0\], found 1.5$"):
    router.add_psi(["a"], np.full((4, 1), 1.5), [1.0])
  with pytest.raises(ValueError, match="psi must have shape"):
    router.add_psi(["a"], np.full((3, 1), 0.5), [1.0])
  with pytest.raises(ValueError, match="names: .*not in the pool"):
    router.remove_models(["llm0", "nope"])
  with pytest.raises(ValueError, match="models: .*not in the pool"):
    router.route(p["x_test"], 0.0, models=["nope"])
  with pytest.raises(ValueError, match="models must name at least one"):
    router.route(p["x_test"], 0.0, models=[])
  with pytest.raises(ValueError, match="names must hold non-empty strings"):
    router.add_psi([3], np.full((4, 1), 0.5), [1.0])
  with pytest.raises(ValueError, match="pool is empty"):
    Router(centroids=p["centroids"]).route(p["x_test"], 0.0)
  with pytest.raises(ValueError, match="exactly one of cluster_map and centroids"):
    Router(centroids=p["centroids"], cluster_map=fitted)
  with pytest.raises(ValueError, match="exactly one of cluster_map and centroids"):
    Router()
  with pytest.raises(ValueError, match="psi and cost must both be given"):
    Router(centroids=p["centroids"], models=["a"])
  with pytest.raises(ValueError, match="cluster_map must be a ClusterMapping"):
    Router(cluster_map="kmeans")
  with pytest.raises(ValueError, match="centroids must be finite"):
    Router(centroids=np.full((2, 3), np.nan))
  with pytest.raises(ValueError, match="mask: LLM 'b' has no labelled prompt"):
    router.add_models(["a", "b"], x, loss, cost,
                      mask=np.stack([mask[:, 0], np.zeros(len(x), bool)], 1))
  batched = jax.tree.map(lambda a: jnp.stack([a, a]), fitted)
  with pytest.raises(ValueError, match="leading batch axis"):
    Router(cluster_map=batched)
  with pytest.raises(ValueError, match="lambdas must be non-negative"):
    checked(router.route)(p["x_test"], np.asarray(-1.0))
  with pytest.raises(AttributeError, match="immutable"):
    router.psi = None


def as_version_1(path, out):
  """Rewrites a saved router in format version 1: the learned map's running
  averages under batch_stats/, its structure under cluster_map, no mask."""
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}
  meta = json.loads(str(arrays["metadata"][()]))
  meta["version"] = 1
  spec = meta.pop("map")
  if meta["kind"] == "learned_map":
    meta["cluster_map"] = spec
  meta.pop("representatives", None)
  for key in list(arrays):
    if key in ("state/cluster_mask", "cluster_mask", "counts") or (
        key.startswith("representatives/")):
      arrays.pop(key)
    elif key.startswith("state/"):
      arrays["batch_stats/" + key[len("state/"):]] = arrays.pop(key)
  arrays["metadata"] = np.array(json.dumps(meta))
  np.savez(out, **arrays)
  return out


def test_routers_saved_in_format_version_1_still_load(fitted, tmp_path):
  for label, (router, p) in saved_kinds(fitted, tmp_path).items():
    if not router.models:
      continue
    path = router.save(tmp_path / f"{label}.npz")
    old = Router.load(as_version_1(path, tmp_path / f"{label}_v1.npz"))
    assert old.models == router.models and old.kind == router.kind
    np.testing.assert_array_equal(
        np.asarray(old.predicted_loss(p["x_test"])),
        np.asarray(router.predicted_loss(p["x_test"])))


def test_host_values_are_checked_where_they_enter():
  """NumPy values given to a router are checked on the way in: NaN
  embeddings, NaN or negative lambdas, unusable weights and non-numeric
  options are a ValueError naming the argument, never a silent answer."""
  key = jax.random.key(0)
  x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
  loss = (x[:, :2] > 0).astype(np.float32)
  router = Router.from_kmeans(key, x, num_clusters=3).add_models(
      ["a", "b"], x, loss, [1.0, 2.0])
  for call, match in [
      (lambda: router.route(np.full((2, 3), np.nan), 0.0), "embeddings must be finite"),
      (lambda: router.route(x[:3], np.nan), "lambdas must not be NaN"),
      (lambda: router.route(x[:3], -5.0), "lambdas must be non-negative"),
      (lambda: router.route(x[:3], "a"), "lambdas must be a numeric"),
      (lambda: Router.from_kmeans(key, x, num_clusters=2,
                                  weights=np.full(20, np.nan)), "weights must be finite"),
      (lambda: Router.from_kmeans(key, x, num_clusters=2, weights=np.zeros(20)),
       "weights must have at least one positive entry"),
      (lambda: Router.from_kmeans(key, x, num_clusters=2, weights=-np.ones(20)),
       "weights must be non-negative"),
      (lambda: Router.from_kmeans(key, x, num_clusters=2, weights="a"),
       "weights must be a numeric"),
      (lambda: router.add_models(["c"], x, loss[:, :1], [1.0], weights=np.zeros(20)),
       "weights must have at least one positive entry"),
      (lambda: router.add_models(["c"], x, loss[:, :1], [1.0], prior_strength="a"),
       "prior_strength must be a non-negative number or 'empirical_bayes'"),
  ]:
    with pytest.raises(ValueError, match=match):
      call()
  # Device values are the caller's: not read back, and routed as documented.
  assert router.route(jnp.asarray(x[:3]), jnp.asarray(0.0)).choice.shape == (3,)


def test_the_embedder_identity_travels_with_the_router(tmp_path):
  """Saved, loaded, flattened as a pytree, and kept by pool edits."""
  key = jax.random.key(0)
  x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
  identity = {"name": "enc", "weights_sha256": "ab" * 32, "truncation": "tail",
              "max_length": 256}
  router = Router.from_kmeans(key, x, num_clusters=3).with_embedder(identity)
  router = router.add_models(["a", "b"], x, (x[:, :2] > 0).astype(np.float32),
                             [1.0, 2.0]).remove_models(["a"])
  assert router.embedder == identity
  leaves, tree = jax.tree.flatten(router)
  assert jax.tree.unflatten(tree, leaves).embedder == identity
  router.save(tmp_path / "r.npz")
  assert Router.load(tmp_path / "r.npz").embedder == identity
  router.check_embedder(identity)
  with pytest.raises(ValueError, match=r"truncation 'head' \(the router's: 'tail'\)"):
    router.check_embedder({**identity, "truncation": "head"})
  Router.from_kmeans(key, x, num_clusters=3).check_embedder(identity)  # none kept
  with pytest.raises(ValueError, match="embedder must be a mapping"):
    router.with_embedder("enc")


# ------------------------------------------------------ onboarding an LLM


def numpy_counts(phi, mask):
  """Labelled-prompt weight per (cluster, LLM), looping."""
  k, m = phi.shape[1], mask.shape[1]
  return np.array([[phi[mask[:, j], c].sum() for j in range(m)]
                   for c in range(k)])


@pytest.mark.parametrize("kind", ["kmeans", "learned_map"])
def test_onboard_equals_a_router_fitted_with_the_llm(kind, fitted):
  """An LLM onboarded on the stored representatives gets the Psi, counts
  and routes it would have had in the pool from the start."""
  p = problem(seed=11, dtype=np.float32)
  full = kmeans_router(p) if kind == "kmeans" else learned_router(fitted, p)
  base = (Router(centroids=p["centroids"]) if kind == "kmeans"
          else Router.from_cluster_map(fitted))
  ids = [f"q{i}" for i in range(p["x_val"].shape[0])]
  early = base.add_models(p["names"][:3], p["x_val"], p["loss"][:, :3],
                          p["cost"][:3], mask=p["mask"][:, :3])
  early = early.with_representatives(p["x_val"], ids=ids)
  late = early.onboard(p["names"][3:], p["loss"][:, 3:], p["cost"][3:],
                       mask=p["mask"][:, 3:])
  assert late.models == full.models
  assert late.representatives.ids == tuple(ids)
  for mine, theirs in ((late.psi, full.psi), (late.counts, full.counts),
                       (late.cost, full.cost)):
    np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
  np.testing.assert_array_equal(
      np.asarray(late.route(p["x_test"], LAMBDAS.astype(np.float32)).choice),
      np.asarray(full.route(p["x_test"], LAMBDAS.astype(np.float32)).choice))
  phi = (np.eye(4)[numpy_nearest(p["x_val"], p["centroids"])]
         if kind == "kmeans" else np.asarray(apply_cluster_map(fitted,
                                                               p["x_val"])))
  np.testing.assert_allclose(np.asarray(late.counts),
                             numpy_counts(phi, p["mask"]), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(late.psi),
                             numpy_psi(phi, np.nan_to_num(p["loss"]),
                                       p["mask"]), rtol=1e-5, atol=1e-6)


def test_representatives_travel_with_pool_edits_and_jit():
  p = problem(seed=12, dtype=np.float32)
  router = kmeans_router(p).with_representatives(p["x_val"])
  smaller = router.remove_models(["llm1", "llm3"])
  assert smaller.representatives is router.representatives
  np.testing.assert_array_equal(np.asarray(smaller.counts),
                                np.asarray(router.counts)[:, [0, 2, 4]])
  assert router.with_embedder({"name": "e"}).representatives is not None
  np.testing.assert_array_equal(
      np.asarray(router.representatives.membership),
      numpy_nearest(p["x_val"], p["centroids"]))
  fn = jax.jit(lambda r, x: r.route(x, 0.5).choice)
  np.testing.assert_array_equal(np.asarray(fn(router, p["x_test"])),
                                np.asarray(router.route(p["x_test"], 0.5).choice))
  added = jax.jit(lambda r, loss: r.onboard(["new"], loss, [1.0]).psi)(
      router, np.nan_to_num(p["loss"][:, :1]))
  eager = router.add_models(["new"], p["x_val"], np.nan_to_num(p["loss"][:, :1]),
                            [1.0])
  np.testing.assert_allclose(np.asarray(added), np.asarray(eager.psi),
                             rtol=1e-6)


def test_onboarding_refuses_what_does_not_fit():
  p = problem(seed=13, dtype=np.float32)
  router = kmeans_router(p)
  with pytest.raises(ValueError, match="no representative prompts"):
    router.onboard(["new"], p["loss"][:, :1], [1.0])
  router = router.with_representatives(p["x_val"])
  with pytest.raises(ValueError, match="representatives"):
    router.onboard(["new"], p["loss"][:10, :1], [1.0])
  with pytest.raises(ValueError, match="already in the pool"):
    router.onboard(["llm0"], np.zeros((60, 1)), [1.0])
  with pytest.raises(ValueError, match="ids must be unique; 'a' repeats"):
    router.with_representatives(p["x_val"][:2], ids=["a", "a"])
  with pytest.raises(ValueError, match="one id per representative"):
    router.with_representatives(p["x_val"][:2], ids=["a"])
  with pytest.raises(ValueError, match="embeddings"):
    router.with_representatives(np.full((2, 3), np.nan, np.float32))
  with pytest.raises(ValueError, match="counts must be non-negative"):
    router.add_psi(["new"], np.full((4, 1), 0.5), [1.0],
                   counts=np.full((4, 1), -1.0))


def test_representatives_are_checked_at_construction():
  p = problem(seed=14)
  ids = tuple(f"q{i}" for i in range(60))
  base = dict(centroids=p["centroids"])
  clusters = numpy_nearest(p["x_val"], p["centroids"])
  with pytest.raises(ValueError, match=r"representatives.membership must lie "
                     r"in \[0, 3\]"):
    Router(**base, representatives=Representatives(ids, p["x_val"],
                                                   np.full(60, 4)))
  with pytest.raises(ValueError, match="must hold integer clusters"):
    Router(**base, representatives=Representatives(
        ids, p["x_val"], clusters.astype(np.float64)))
  with pytest.raises(ValueError, match=r"representatives.membership must lie "
                     r"in \[0.0, 1.0\]"):
    Router(**base, representatives=Representatives(
        ids, p["x_val"], np.full((60, 4), -0.5)))
  kept = Router(**base, representatives=Representatives(ids, p["x_val"],
                                                        clusters))
  assert kept.representatives.membership.dtype == jnp.int32


def test_saved_representatives_are_checked(tmp_path):
  p = problem(seed=14)
  path = kmeans_router(p).with_representatives(p["x_val"]).save(
      tmp_path / "router.npz")
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}

  def tampered(name, **changes):
    out = dict(arrays, **changes)
    for key in [k for k, v in changes.items() if v is None]:
      out.pop(key)
    np.savez(tmp_path / name, **out)
    return tmp_path / name

  meta = json.loads(str(arrays["metadata"][()]))
  bad = {"representatives/membership": np.full(60, 9, np.int32)}
  with pytest.raises(ValueError, match=r"memberships must be int32 clusters"):
    Router.load(tampered("bad_membership.npz", **bad))
  unannounced = dict(meta)
  unannounced.pop("representatives")
  with pytest.raises(ValueError, match="does not announce"):
    Router.load(tampered("unannounced.npz",
                         metadata=np.array(json.dumps(unannounced))))
  with pytest.raises(ValueError, match="ids must be text"):
    Router.load(tampered("int_ids.npz",
                         **{"representatives/ids": np.arange(60)}))


def test_thin_clusters_warn_when_llms_are_added():
  """A cluster where a new LLM has fewer than warn_below labelled prompts is
  named in one warning per LLM; enough labels, None, or device labels
  (never read back) do not warn."""
  import warnings
  from uniroute_jax import checks
  from uniroute_jax.router import THIN_CELL
  rng = np.random.default_rng(0)
  centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
  x = np.repeat(centroids, [20, 20, 3], axis=0) + rng.normal(
      0, 0.1, (43, 2)).astype(np.float32)
  loss = (rng.random((43, 2)) < 0.5).astype(np.float32)
  router = Router(centroids=centroids)
  with pytest.warns(checks.ArgumentWarning, match=(
      f"'b': its error in 1 of 3 clusters rests on fewer than {THIN_CELL} "
      "labelled prompts")) as caught:
    router.add_models(["a", "b"], x, loss, np.ones(2, np.float32),
                      mask=np.c_[np.ones(43, bool), np.r_[np.ones(40, bool),
                                                          np.zeros(3, bool)]])
  messages = [str(w.message) for w in caught]
  assert sum("'a'" in m for m in messages) == 1      # 3 prompts < 5
  assert sum("'b'" in m for m in messages) == 1      # 0 prompts
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    router.add_models(["a", "b"], x, loss, np.ones(2, np.float32), warn_below=3)
    router.add_models(["a", "b"], x, loss, np.ones(2, np.float32),
                      warn_below=None)
    router.add_models(["a", "b"], jnp.asarray(x), jnp.asarray(loss),
                      np.ones(2, np.float32))
    jax.jit(lambda l: router.add_models(["a", "b"], x, l, np.ones(2)).psi)(loss)
  rep = router.with_representatives(x)
  with pytest.warns(checks.ArgumentWarning, match="'c': its error in 1 of 3"):
    rep.onboard(["c"], loss[:, :1], np.ones(1, np.float32))
  # Prompts are counted as prompts, whatever their weights.
  for w in (10.0, 0.5):
    with pytest.warns(checks.ArgumentWarning, match="'a': its error in 1 of 3"):
      router.add_models(["a"], x, loss[:, :1], np.ones(1),
                        weights=np.full(43, w))
  with pytest.raises(ValueError, match="warn_below must be a positive integer"):
    router.add_models(["a"], x, loss[:, :1], np.ones(1), warn_below=0)


def test_empirical_bayes_priors_onboard_llms():
  rng = np.random.default_rng(1)
  centroids = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
  x = np.repeat(centroids, 30, axis=0)
  loss = (rng.random((60, 1)) < 0.3).astype(np.float32)
  router = Router(centroids=centroids).add_models(
      ["a"], x, loss, np.ones(1, np.float32), prior_strength="empirical_bayes")
  from uniroute_jax import features
  want = features.cluster_posterior(np.repeat([0, 1], 30), loss,
                                    num_clusters=2).mean
  np.testing.assert_allclose(router.psi, want, rtol=1e-6)


def test_the_command_lines_thin_threshold_is_the_routers():
  from uniroute_jax.cli import pool
  from uniroute_jax.router import THIN_CELL
  assert pool.THIN_CELL == THIN_CELL


def test_labelling_order_spreads_representatives_over_clusters():
  from uniroute_jax import features
  rng = np.random.default_rng(2)
  centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
  x = np.repeat(centroids, [60, 30, 10], axis=0) + rng.normal(
      0, 0.1, (100, 2)).astype(np.float32)
  loss = (rng.random((100, 2)) < 0.5).astype(np.float32)
  router = Router(centroids=centroids).add_models(
      ["a", "b"], x, loss, np.ones(2, np.float32)).with_representatives(x)
  order = np.asarray(router.labelling_order(jax.random.key(0),
                                            selection="stratified"))
  np.testing.assert_array_equal(np.sort(order), np.arange(100))
  shuffled = np.asarray(router.labelling_order(jax.random.key(0)))
  np.testing.assert_array_equal(np.sort(shuffled), np.arange(100))
  clusters = np.repeat([0, 1, 2], [60, 30, 10])
  np.testing.assert_array_equal(np.bincount(clusters[order[:10]]), [6, 3, 1])
  psi = np.asarray(router.psi)
  spread = np.sqrt(np.mean(psi * (1 - psi), axis=1))
  ranks = features.labelling_ranks(jax.random.key(0), clusters, num_clusters=3,
                                   selection="neyman", spread=spread)
  np.testing.assert_array_equal(
      router.labelling_order(jax.random.key(0), selection="neyman"),
      np.argsort(np.asarray(ranks)))
  with pytest.raises(ValueError, match="keeps no representative prompts"):
    Router(centroids=centroids).labelling_order(jax.random.key(0))
  # No LLM, no spread to allocate by: Neyman is refused, not stratified.
  empty = router.remove_models(["a", "b"])
  with pytest.raises(ValueError, match="selection='neyman' allocates by the "
                     "spread of the pool's errors, and the router has no LLM"):
    empty.labelling_order(jax.random.key(0), selection="neyman")
  np.testing.assert_array_equal(
      empty.labelling_order(jax.random.key(0), selection="stratified"), order)


def test_the_routers_psi_prior_is_used_for_llms_added_later_and_saved(tmp_path):
  from uniroute_jax import features
  rng = np.random.default_rng(3)
  centroids = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
  x = np.repeat(centroids, 8, axis=0)
  loss = (rng.random((16, 1)) < 0.4).astype(np.float32)
  clusters = np.repeat([0, 1], 8)
  plain = Router(centroids=centroids)
  assert plain.psi_prior is None
  for prior in ("empirical_bayes", 3.0):
    router = plain.with_psi_prior(prior)
    got = router.add_models(["a"], x, loss, np.ones(1, np.float32)).psi
    want = features.cluster_errors(clusters, loss, num_clusters=2,
                                   prior_strength=prior).psi
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # An explicit prior_strength wins over the router's.
    np.testing.assert_allclose(
        router.add_models(["a"], x, loss, np.ones(1), prior_strength=0.0).psi,
        features.cluster_errors(clusters, loss, num_clusters=2).psi, rtol=1e-6)
    path = router.save(tmp_path / f"r{prior}.npz")
    assert Router.load(path).psi_prior == prior
    flat, tree = jax.tree.flatten(router)
    assert jax.tree.unflatten(tree, flat).psi_prior == prior
  for bad in (-1.0, "auto", True, jnp.float32(1.0), 1 + 0j, np.complex64(2),
              np.timedelta64(3), np.inf, np.nan, [1.0]):
    with pytest.raises(ValueError, match="psi_prior must be"):
      Router(centroids=centroids, psi_prior=bad)
  # A version-3 file (before the rule was saved) onboards with plain means.
  old = rewrite(plain.save(tmp_path / "plain.npz"), tmp_path / "v3.npz",
                version=3)
  assert Router.load(old).psi_prior is None
  for bad in ("auto", -2, [1]):
    tampered = rewrite(path, tmp_path / "bad.npz", psi_prior=bad)
    with pytest.raises(ValueError, match="metadata 'psi_prior' must be"):
      Router.load(tampered)


def test_copies_are_the_router_itself_and_pickle_is_refused(fitted):
  import copy
  import pickle
  p = problem(seed=3)
  for router in (kmeans_router(p), learned_router(fitted, problem(
      seed=3, dtype=np.float32))):
    for value in (router, router.cluster_map):
      assert copy.copy(value) is value and copy.deepcopy(value) is value
      with pytest.raises(TypeError, match="Router.save"):
        pickle.dumps(value)
    assert copy.deepcopy({"r": router})["r"] is router
