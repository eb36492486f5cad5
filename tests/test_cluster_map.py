"""The learned cluster map (UniRoute LearnedMap): loss, gradients, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from conftest import RTOL
from uniroute_jax import checked, clustering, learn, metrics, routing
from uniroute_jax.cluster_map import (
    ClusterMap, ClusterMapConfig, apply_cluster_map, cluster_map_loss,
    fit_cluster_map, learned_map_predicted_loss)
from uniroute_jax.learn import CheckpointSelection


def numpy_loss(phi, psi, errors, mask, eps=1e-6):
  phi, psi, errors = (np.asarray(a, np.float64) for a in (phi, psi, errors))
  total, count = 0.0, 0
  for i in range(errors.shape[0]):
    for j in range(errors.shape[1]):
      if mask[i, j]:
        g = min(max(float(phi[i] @ psi[:, j]), eps), 1 - eps)
        e = errors[i, j]
        total -= e * np.log(g) + (1 - e) * np.log(1 - g)
        count += 1
  return total / max(count, 1)


def loss_problem(n=7, k=3, m=4, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, k)) * 2
  phi = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  psi = rng.uniform(0.05, 0.95, (k, m))
  psi[0, 0], psi[1, 1] = 0.0, 1.0   # exercises the clipping
  errors = np.where(rng.random((n, m)) < 0.5, rng.integers(0, 2, (n, m)),
                    rng.random((n, m)))
  mask = rng.random((n, m)) < 0.7
  return phi.astype(dtype), psi.astype(dtype), errors.astype(dtype), mask


def blobs(key, n=48, d=4, m=3, k=2):
  """Two well-separated blobs; blob c has error profile psi[c]."""
  kx, kc, ke = jax.random.split(key, 3)
  label = jnp.arange(n) % k
  centres = 4.0 * jax.random.normal(kc, (k, d))
  x = centres[label] + jax.random.normal(kx, (n, d))
  psi = jnp.tile(jnp.array([[0.9], [0.1]]), (1, m))
  if m > 1:
    psi = psi.at[:, -1].set(jnp.array([0.2, 0.8]))
  errors = (jax.random.uniform(ke, (n, m)) < psi[label]).astype(x.dtype)
  return x, errors, psi, label


def allclose_trees(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol)


# -------------------------------------------------------------------- loss


def test_loss_matches_numpy(dtype):
  phi, psi, errors, mask = loss_problem(dtype=dtype)
  errors[~mask] = np.nan   # missing labels may hold anything
  got = cluster_map_loss(phi, psi, errors, mask)
  assert got.dtype == dtype
  np.testing.assert_allclose(float(got), numpy_loss(phi, psi, errors, mask),
                             rtol=RTOL[dtype] * 10)
  full = cluster_map_loss(phi, psi, np.nan_to_num(errors))
  np.testing.assert_allclose(
      float(full), numpy_loss(phi, psi, np.nan_to_num(errors),
                              np.ones_like(mask)), rtol=RTOL[dtype] * 10)


def test_masking_equals_removing(dtype):
  phi, psi, errors, mask = loss_problem(dtype=dtype, seed=1)
  mask[2] = False
  errors[2] = np.nan
  keep = np.arange(len(phi)) != 2
  with_row = cluster_map_loss(phi, psi, errors, mask)
  without = cluster_map_loss(phi[keep], psi, errors[keep], mask[keep])
  np.testing.assert_allclose(float(with_row), float(without),
                             rtol=RTOL[dtype] * 10)
  # Nothing observed: zero, not NaN, with zero gradient.
  none = np.zeros_like(mask)
  assert float(cluster_map_loss(phi, psi, errors, none)) == 0.0
  grad = jax.grad(cluster_map_loss)(jnp.asarray(phi), psi, errors, none)
  assert np.all(np.asarray(grad) == 0)


@pytest.mark.parametrize("hidden,batch_norm", [((), False), ((4,), True)])
def test_gradients_match_finite_differences(hidden, batch_norm):
  d, k, m, n = 3, 3, 4, 6
  _, psi, errors, mask = loss_problem(n=n, k=k, m=m, seed=2)
  x = np.random.default_rng(3).normal(size=(n, d))
  model = ClusterMap(d, k, hidden=hidden, batch_norm=batch_norm,
                     dtype=jnp.float64, param_dtype=jnp.float64,
                     rngs=nnx.Rngs(0))
  graphdef, params, stats = nnx.split(model, nnx.Param, ...)
  flat, unravel = ravel_pytree(params)

  @jax.jit
  def loss(flat):
    net = nnx.merge(graphdef, unravel(flat), stats, copy=True)
    return cluster_map_loss(net(x, use_running_average=False), psi, errors,
                            mask)

  h = 1e-6
  steps = h * jnp.eye(flat.size, dtype=flat.dtype)
  numeric = (jax.vmap(loss)(flat[None, :] + steps)
             - jax.vmap(loss)(flat[None, :] - steps)) / (2 * h)
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(flat)),
                             np.asarray(numeric), rtol=1e-6, atol=1e-9)
  # Psi is held fixed.
  phi = nnx.merge(graphdef, params, stats, copy=True)(x)
  psi_grad = jax.grad(cluster_map_loss, argnums=1)(phi, psi, errors, mask)
  assert np.all(np.asarray(psi_grad) == 0)


# ------------------------------------------------------------------ module


def test_module_architectures():
  x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
  net = ClusterMap(5, 4, rngs=nnx.Rngs(0))
  p = net(x)
  assert p.shape == (3, 4)
  np.testing.assert_allclose(np.asarray(p.sum(axis=1)), 1.0, rtol=1e-6)
  assert [layer.kernel.shape for layer in net.dense] == [(5, 128), (128, 128)]
  assert len(net.norms) == 2 and net.input_norm is not None
  assert net.output.kernel.shape == (128, 4)
  deep = ClusterMap(5, 4, hidden=(7, 6, 5), rngs=nnx.Rngs(0))
  assert [layer.kernel.shape[1] for layer in deep.dense] == [7, 6, 5]
  # The section 5.2 map: one softmax-dense layer.
  flat = ClusterMap(5, 4, hidden=(), batch_norm=False, rngs=nnx.Rngs(1))
  w, b = np.asarray(flat.output.kernel[...]), np.asarray(flat.output.bias[...])
  z = x.astype(np.float64) @ w + b
  expected = np.exp(z - z.max(1, keepdims=True))
  expected /= expected.sum(1, keepdims=True)
  np.testing.assert_allclose(np.asarray(flat(x)), expected, rtol=1e-5)


def test_sharp_map_routes_like_kmeans():
  x, _, _, _ = blobs(jax.random.key(0), n=30, d=4, k=2)
  x = jnp.concatenate([x, x[:10] + 20.0])   # a third blob
  result = clustering.kmeans(jax.random.key(1), x, num_clusters=3)
  centres = result.centroids
  net = ClusterMap(4, 3, hidden=(), batch_norm=False, dtype=jnp.float64,
                   param_dtype=jnp.float64, rngs=nnx.Rngs(0))
  # Logits scale * (2 x.c - |c|^2): the softmax is the nearest centroid's
  # one-hot once the scale is large.
  scale = 1e4
  net.output.kernel[...] = scale * 2.0 * centres.T
  net.output.bias[...] = -scale * jnp.sum(centres**2, axis=1)
  fitted = learn.from_module(net)
  phi = apply_cluster_map(fitted, x)
  np.testing.assert_array_equal(np.asarray(phi),
                                np.asarray(jax.nn.one_hot(result.assignment, 3)))
  rng = np.random.default_rng(0)
  psi = rng.uniform(size=(3, 5))
  cost = rng.uniform(1, 10, size=5)
  lambdas = np.linspace(0, 0.2, 9)
  soft = routing.route(phi, psi, cost, lambdas).choice
  hard = routing.route(result.assignment, psi, cost, lambdas).choice
  np.testing.assert_array_equal(np.asarray(soft), np.asarray(hard))
  np.testing.assert_array_equal(
      np.asarray(learned_map_predicted_loss(fitted, x, psi)),
      psi[np.asarray(result.assignment)])


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("hidden,batch_norm", [((), False), ((16,), True)])
def test_fit_learns_two_blobs(hidden, batch_norm):
  x, errors, psi, label = blobs(jax.random.key(0), n=192, d=6, m=4)
  x, errors, psi = (a.astype(jnp.float32) for a in (x, errors, psi))
  fit = fit_cluster_map(jax.random.key(1), x, errors, psi, hidden=hidden,
                        batch_norm=batch_norm, batch_size=32, epochs=8,
                        momentum=0.9)
  history = np.asarray(fit.loss_history)
  config = ClusterMapConfig.of(fit)
  assert history.shape == (8,) and config.num_clusters == 2 and config.dim == 6
  # The loss of the true assignment is (about) the best achievable; the fit
  # must close most of the gap it starts with.
  best = float(cluster_map_loss(jax.nn.one_hot(label, 2, dtype=x.dtype), psi,
                                errors))
  assert np.all(np.diff(history) < 0)
  assert history[-1] - best < 0.3 * (history[0] - best)
  phi = apply_cluster_map(fit, x)
  assert phi.dtype == jnp.float32
  assert float(jnp.mean(jnp.argmax(phi, axis=1) == label)) >= 0.95
  # Inference mode: a prompt's row does not depend on the rest of the batch.
  np.testing.assert_allclose(np.asarray(apply_cluster_map(fit, x[3:4])),
                             np.asarray(phi[3:4]), rtol=1e-5, atol=1e-6)
  gamma = learned_map_predicted_loss(fit, x, psi)
  np.testing.assert_allclose(np.asarray(gamma), np.asarray(phi @ psi),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("low", [jnp.bfloat16, jnp.float16])
def test_low_precision_weights_train_like_float32(low):
  """bfloat16 / float16 weights train from float32 copies: finite even for
  an LLM that is always wrong (gamma near 1, where 1 - eps rounds to 1 in
  16 bits) and with weights Adam never moves (0 / 0 in float16)."""
  x, errors, psi, label = blobs(jax.random.key(0), n=192, d=6, m=4)
  x, errors, psi = (a.astype(jnp.float32) for a in (x, errors, psi))
  errors = errors.at[:, 0].set(1.0)
  psi = psi.at[:, 0].set(1.0)
  kw = dict(hidden=(16,), batch_size=32, epochs=8, momentum=0.9)
  wide = fit_cluster_map(jax.random.key(1), x, errors, psi, **kw)
  fit = fit_cluster_map(jax.random.key(1), x, errors, psi, dtype=low, **kw)
  leaves = jax.tree.leaves(fit.params)
  assert {leaf.dtype for leaf in leaves} == {jnp.dtype(low)}
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
  history = np.asarray(fit.loss_history, np.float64)
  # (Not monotone near the minimum: 16-bit forward passes round.)
  assert np.isfinite(history).all() and history[-1] < 0.8 * history[0]
  # Its own initial draws (made in 16 bits), but the minimum float32 finds.
  assert history[-1] == pytest.approx(float(wide.loss_history[-1]), rel=0.05)
  phi = apply_cluster_map(fit, x.astype(low))
  assert float(jnp.mean(jnp.argmax(phi, axis=1) == label)) >= 0.95


def small_problem(seed, dtype=np.float64, n=40):
  x, errors, psi, _ = blobs(jax.random.key(seed), n=n, d=4, m=3)
  mask = jax.random.uniform(jax.random.key(seed + 100), errors.shape) < 0.8
  return x.astype(dtype), errors.astype(dtype), psi.astype(dtype), mask


SMALL = dict(hidden=(8,), batch_size=16, epochs=2)


def test_loss_jit_matches_eager(dtype):
  phi, psi, errors, mask = loss_problem(dtype=dtype, seed=4)
  jitted = jax.jit(cluster_map_loss)(phi, psi, errors, mask)
  with jax.disable_jit():
    eager = cluster_map_loss(phi, psi, errors, mask)
  np.testing.assert_allclose(float(jitted), float(eager), rtol=RTOL[dtype])


def test_fit_jit_matches_eager():
  # float64 only: op-by-op execution compiles every primitive once per
  # dtype, about 8 s a dtype on two cores.
  x, errors, psi, mask = small_problem(0, np.float64, n=16)   # 2 steps
  args = (jax.random.key(5), x, errors, psi)
  kwargs = dict(mask=mask, hidden=(8,), batch_size=8, epochs=1)
  jitted = fit_cluster_map(*args, **kwargs)
  jit_phi = apply_cluster_map(jitted, x)
  with jax.disable_jit():
    eager = fit_cluster_map(*args, **kwargs)
    eager_phi = apply_cluster_map(eager, x)
  allclose_trees(jitted, eager, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(np.asarray(jit_phi), np.asarray(eager_phi),
                             rtol=1e-10, atol=1e-12)


def test_vmapped_fit_matches_separate_fits():
  problems = [small_problem(seed) for seed in range(3)]
  x, errors, psi, mask = (jnp.stack(a) for a in zip(*problems))
  keys = jax.random.split(jax.random.key(7), 3)

  def fit(key, x, errors, psi, mask):
    return fit_cluster_map(key, x, errors, psi, mask=mask, **SMALL)

  batched = jax.vmap(fit)(keys, x, errors, psi, mask)
  assert batched.loss_history.shape == (3, 2)
  phi = jax.vmap(apply_cluster_map)(batched, x)
  for t in range(3):
    single = fit(keys[t], x[t], errors[t], psi[t], mask[t])
    allclose_trees(jax.tree.map(lambda a, t=t: a[t], batched), single,
                   rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(phi[t]),
                               np.asarray(apply_cluster_map(single, x[t])),
                               rtol=1e-9, atol=1e-12)


def test_same_key_same_fit_and_batch_clamp():
  x, errors, psi, mask = small_problem(0)
  first = fit_cluster_map(jax.random.key(3), x, errors, psi, mask=mask, **SMALL)
  again = fit_cluster_map(jax.random.key(3), x, errors, psi, mask=mask, **SMALL)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = fit_cluster_map(jax.random.key(4), x, errors, psi, mask=mask, **SMALL)
  assert not np.array_equal(np.asarray(first.loss_history),
                            np.asarray(other.loss_history))
  # A batch larger than n is clamped to n: one full-batch step per epoch.
  big = fit_cluster_map(jax.random.key(3), x, errors, psi, mask=mask,
                        hidden=(8,), batch_size=1000, epochs=2)
  full = fit_cluster_map(jax.random.key(3), x, errors, psi, mask=mask,
                         hidden=(8,), batch_size=len(x), epochs=2)
  for a, b in zip(jax.tree.leaves(big), jax.tree.leaves(full), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_checkpoint_selection_keeps_the_best_epoch():
  """With ``select`` the kept map is the best epoch's (weights and running
  averages): the same as a fit stopped after that epoch; each epoch's area
  is the public deferral-curve area of that epoch's Phi Psi."""
  x, errors, psi, mask = small_problem(1, n=96)
  val_x, val_errors, _, val_mask = small_problem(2, n=24)
  models = np.array([0, 2], np.int32)
  cost = np.array([1.0, 4.0])
  select = CheckpointSelection(val_x, val_errors[:, models], cost, models,
                               val_mask[:, models])
  kw = dict(mask=mask, hidden=(8,), batch_size=16, momentum=0.5,
            learning_rate=0.05)
  fit = fit_cluster_map(jax.random.key(8), x, errors, psi, epochs=5,
                        select=select, **kw)
  areas = np.asarray(fit.validation_area)
  best = int(fit.best_epoch)
  assert best == int(np.argmax(areas)) and len(set(areas.tolist())) > 1
  weights = np.all(select.mask, axis=1)
  for e in sorted({best, 0 if best else 1, 4}):
    short = fit_cluster_map(jax.random.key(8), x, errors, psi, epochs=e + 1, **kw)
    assert int(short.best_epoch) == e and np.isnan(short.validation_area).all()
    gamma = learned_map_predicted_loss(short, val_x, psi)[:, models]
    curve = metrics.deferral_curve(
        gamma, np.where(select.mask, select.loss, 0.0), cost, weights=weights)
    np.testing.assert_allclose(areas[e], metrics.deferral_metrics(curve).area,
                               rtol=1e-9)
    if e == best:
      # The same arithmetic, but in another program (a loop of e + 1 epochs,
      # which XLA may unroll and fuse differently), so equal to rounding.
      np.testing.assert_allclose(apply_cluster_map(short, x),
                                 apply_cluster_map(fit, x), rtol=1e-12)
  # Scoring epochs changes the program, not the training: equal to rounding.
  np.testing.assert_allclose(short.loss_history, fit.loss_history, rtol=1e-12)
  with pytest.raises(ValueError, match=r"select.models must lie in \[0, 3\)"):
    checked(fit_cluster_map)(jax.random.key(8), x, errors, psi, epochs=1,
                             select=select._replace(models=np.array([0, 3])),
                             **kw)


# ------------------------------------------------------------- bad input


def test_bad_input_names_the_argument():
  x, errors, psi, mask = small_problem(0, np.float32, n=12)
  key = jax.random.key(0)

  def fit(fn=fit_cluster_map, **changes):
    kwargs = dict(key=key, embeddings=x, errors=errors, psi=psi, hidden=(4,),
                  batch_size=4, epochs=1)
    kwargs.update(changes)
    return fn(kwargs.pop("key"), kwargs.pop("embeddings"),
              kwargs.pop("errors"), kwargs.pop("psi"), **kwargs)

  with pytest.raises(ValueError, match="embeddings"):
    fit(embeddings=x[:-1])
  with pytest.raises(ValueError, match="embeddings"):
    fit(embeddings=x[0])
  with pytest.raises(ValueError, match="psi"):
    fit(psi=psi[:, :-1])
  with pytest.raises(ValueError, match="mask"):
    fit(mask=mask[:, :-1])
  with pytest.raises(ValueError, match="errors must lie in"):
    fit(checked(fit_cluster_map), errors=errors + 2.0)
  with pytest.raises(ValueError, match="cluster_mask must have shape"):
    fit(cluster_mask=np.ones(3, bool))
  with pytest.raises(ValueError, match="batch_size"):
    fit(batch_size=0)
  with pytest.raises(ValueError, match="batch_size"):
    fit(batch_size=1)   # BatchNorm needs two prompts
  with pytest.raises(ValueError, match="key"):
    fit(key=0)
  with pytest.raises(ValueError, match="epochs"):
    fit(epochs=0)
  with pytest.raises(ValueError, match="hidden"):
    fit(hidden=(4, 0))
  with pytest.raises(ValueError, match="learning_rate must be positive"):
    fit(checked(fit_cluster_map), learning_rate=-1.0)
  with pytest.raises(ValueError, match="learning_rate must be a numeric 0-d"):
    fit(learning_rate=np.ones(2))
  with pytest.raises(ValueError, match="momentum"):
    fit(momentum=1.0)

  phi = jnp.full((12, 2), 0.5, jnp.float32)
  with pytest.raises(ValueError, match="psi"):
    cluster_map_loss(phi, psi[:1], errors)
  with pytest.raises(ValueError, match="errors"):
    cluster_map_loss(phi, psi, errors[:-1])
  with pytest.raises(ValueError, match="eps"):
    checked(cluster_map_loss)(phi, psi, errors, eps=0.7)

  with pytest.raises(ValueError, match="num_clusters"):
    ClusterMap(4, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dim"):
    ClusterMap(0, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="x"):
    ClusterMap(4, 2, rngs=nnx.Rngs(0))(x[:, :3])
  net = ClusterMap(4, 2, hidden=(), batch_norm=False, rngs=nnx.Rngs(0))
  fitted = learn.from_module(net)
  # K of the pool's Psi must match the map's num_clusters.
  with pytest.raises(ValueError, match="psi"):
    learned_map_predicted_loss(fitted, x, jnp.ones((3, 5)))
  with pytest.raises(ValueError, match="x"):
    apply_cluster_map(fitted, x[:, :3])


def test_padded_clusters_train_like_a_map_without_them():
  """A map with K_max slots of which K are active is the map with K slots:
  padding gets probability 0 and no gradient, so from the same initial
  weights the active weights follow the same Adam steps."""
  x, errors, psi, mask = small_problem(3, np.float64, n=48)
  k_max = 4
  padded_psi = np.vstack([psi, np.full((k_max - 2, psi.shape[1]), 0.5)])
  cluster_mask = np.arange(k_max) < 2
  config = ClusterMapConfig(4, k_max, (8,), True, 0.9, jnp.float64)
  module = config.build(jax.random.key(0))
  module.cluster_mask[...] = jnp.asarray(cluster_mask)
  small = ClusterMapConfig(4, 2, (8,), True, 0.9, jnp.float64).build(
      jax.random.key(1))
  # The small map starts from the padded map's active weights.
  for name in ("input_norm", "dense", "norms"):
    nnx.update(getattr(small, name), nnx.state(getattr(module, name)))
  small.output.kernel[...] = module.output.kernel[...][:, :2]
  small.output.bias[...] = module.output.bias[...][:2]

  def fit(model, psi):
    def batch_loss(m, rows):
      phi = m(x[rows], use_running_average=False)
      return cluster_map_loss(phi, psi, errors[rows], mask[rows])
    return learn.fit_model(
        jax.random.key(2), model, batch_loss=batch_loss, predict=None,
        num_rows=48, batch_size=16, epochs=3, learning_rate=0.01,
        dtype=jnp.float64)

  padded, plain = fit(module, padded_psi), fit(small, psi)
  np.testing.assert_allclose(padded.loss_history, plain.loss_history,
                             rtol=1e-10)
  phi_padded = apply_cluster_map(padded, x)
  np.testing.assert_array_equal(np.asarray(phi_padded)[:, 2:], 0.0)
  np.testing.assert_allclose(np.asarray(phi_padded)[:, :2],
                             np.asarray(apply_cluster_map(plain, x)),
                             rtol=1e-9, atol=1e-12)
  np.testing.assert_array_equal(
      np.asarray(padded.params["output"]["kernel"])[:, 2:],
      np.asarray(module.output.kernel[...])[:, 2:])
