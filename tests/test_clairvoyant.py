"""The clairvoyant upper bounds: MLP and matrix factorisation loss predictors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import RTOL
from uniroute_jax import checked, make_synthetic, metrics, protocol
from uniroute_jax.baselines.clairvoyant import (
    LossPredictor, fit_matrix_factorization, fit_mlp, predict_loss,
    predictor_loss)
from uniroute_jax.learn import CheckpointSelection


def numpy_bce(logits, errors, mask):
  total, count = 0.0, 0
  for i in range(logits.shape[0]):
    for j in range(logits.shape[1]):
      if mask[i, j]:
        p = 1.0 / (1.0 + np.exp(-float(logits[i, j])))
        e = float(errors[i, j])
        total -= e * np.log(p) + (1 - e) * np.log(1 - p)
        count += 1
  return total / max(count, 1)


def numpy_forward(params, x, activation, use_bias):
  """The predictor's forward pass from its raw weight arrays."""
  layers = params["layers"]
  h = np.asarray(x, np.float64)
  for i in range(len(layers)):
    h = h @ np.asarray(layers[i]["kernel"][...], np.float64)
    if use_bias:
      h = h + np.asarray(layers[i]["bias"][...], np.float64)
    if i < len(layers) - 1 and activation == "relu":
      h = np.maximum(h, 0.0)
  return 1.0 / (1.0 + np.exp(-h))


def learnable(seed=0, n=192, d=6, m=4, dtype=np.float64):
  """Labels from a fixed linear model: an MLP can learn them."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  w = rng.normal(size=(d, m)) * 2
  errors = (rng.random((n, m)) < 1 / (1 + np.exp(-x @ w))).astype(dtype)
  return x.astype(dtype), errors


def selection(x, errors, m, seed=1):
  rng = np.random.default_rng(seed)
  models = np.array([0, m - 1], np.int32)
  cost = np.array([1.0, 5.0])
  mask = rng.random((x.shape[0], 2)) < 0.9
  return CheckpointSelection(x, errors[:, models], cost, models, mask)


def test_loss_matches_numpy(dtype, mode):
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(7, 5)) * 4).astype(dtype)
  errors = np.where(rng.random((7, 5)) < 0.5, rng.integers(0, 2, (7, 5)),
                    rng.random((7, 5))).astype(dtype)
  mask = rng.random((7, 5)) < 0.7
  errors[~mask] = np.nan  # unobserved entries may hold anything
  got = predictor_loss(logits, errors, mask)
  assert got.dtype == dtype
  np.testing.assert_allclose(got, numpy_bce(logits, errors, mask),
                             rtol=RTOL[dtype] * 10)
  # Masking a label is removing it: a fully masked row adds nothing.
  keep = mask.any(axis=1)
  np.testing.assert_allclose(predictor_loss(logits[keep], errors[keep], mask[keep]),
                             got, rtol=RTOL[dtype])


@pytest.mark.parametrize("hidden, activation, use_bias",
                         [((5, 3), "relu", True), ((2,), "linear", False)])
def test_forward_matches_numpy(hidden, activation, use_bias, dtype):
  model = LossPredictor(6, 4, hidden=hidden, activation=activation,
                        use_bias=use_bias, rngs=nnx.Rngs(0), param_dtype=dtype)
  x = np.random.default_rng(2).normal(size=(9, 6)).astype(dtype)
  params = nnx.state(model, nnx.Param)
  np.testing.assert_allclose(model(x), numpy_forward(params, x, activation, use_bias),
                             rtol=RTOL[dtype] * 10, atol=1e-7)


def test_matrix_factorization_is_x_a_b():
  x, errors = learnable()
  fit = fit_matrix_factorization(jax.random.key(0), x, errors, rank=3, epochs=2)
  layers = fit.params["layers"]
  a, b = np.asarray(layers[0]["kernel"][...]), np.asarray(layers[1]["kernel"][...])
  assert a.shape == (6, 3) and b.shape == (3, 4)
  assert fit.module.dim == 6 and fit.module.num_models == 4
  assert "bias" not in layers[0] and "bias" not in layers[1]
  np.testing.assert_allclose(predict_loss(fit, x), 1 / (1 + np.exp(-x @ a @ b)),
                             rtol=1e-10)


def test_padded_rank_trains_like_a_smaller_factorisation():
  """A factorisation of rank 5 with 2 active units is one of rank 2: the
  padding units stay at their initial values and, from the same active
  weights (B scaled to a rank-2 layer's spread), the fit is the same."""
  x, errors = learnable(n=64)
  from uniroute_jax.baselines.clairvoyant import LossPredictorConfig, _pad_rank
  from uniroute_jax.learn import fit_model
  big = LossPredictorConfig(6, 4, (5,), "linear", False, jnp.float64).build(
      jax.random.key(0))
  _pad_rank(big, 2)
  small = LossPredictorConfig(6, 4, (2,), "linear", False, jnp.float64).build(
      jax.random.key(1))
  small.layers[0].kernel[...] = big.layers[0].kernel[...][:, :2]
  small.layers[1].kernel[...] = big.layers[1].kernel[...][:2]
  b0 = np.asarray(big.layers[1].kernel[...])

  xj, ej = jnp.asarray(x), jnp.asarray(errors)

  def fit(model):
    def batch_loss(m, rows):
      return predictor_loss(m.logits(xj[rows]), ej[rows])
    return fit_model(jax.random.key(2), model, batch_loss=batch_loss,
                     predict=None, num_rows=64, batch_size=16, epochs=3,
                     learning_rate=0.01, dtype=jnp.float64)

  padded, plain = fit(big), fit(small)
  np.testing.assert_allclose(padded.loss_history, plain.loss_history, rtol=1e-10)
  np.testing.assert_allclose(predict_loss(padded, x), predict_loss(plain, x),
                             rtol=1e-9)
  np.testing.assert_array_equal(
      np.asarray(padded.params["layers"][1]["kernel"])[2:], b0[2:])
  # The public fit with active_rank uses the same padding.
  fitted = fit_matrix_factorization(jax.random.key(3), x, errors, rank=5,
                                    active_rank=jnp.asarray(2), epochs=2)
  np.testing.assert_array_equal(np.asarray(fitted.state["hidden_mask"][...]),
                                [True, True, False, False, False])


def test_gradients_match_finite_differences():
  x, errors = learnable(n=12)
  mask = np.random.default_rng(3).random(errors.shape) < 0.8
  model = LossPredictor(6, 4, hidden=(5,), rngs=nnx.Rngs(1), param_dtype=np.float64)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  flat, unravel = jax.flatten_util.ravel_pytree(params)

  def loss(flat):
    return predictor_loss(nnx.merge(graphdef, unravel(flat), rest).logits(x),
                          errors, mask)

  grad = jax.grad(loss)(flat)
  rng = np.random.default_rng(4)
  for _ in range(5):
    direction = rng.normal(size=flat.shape)
    h = 1e-6
    numeric = (loss(flat + h * direction) - loss(flat - h * direction)) / (2 * h)
    np.testing.assert_allclose(grad @ direction, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fit", ["mlp", "matfac"])
def test_fit_learns(fit, dtype):
  x, errors = learnable(dtype=dtype)
  kw = dict(epochs=40, learning_rate=1e-2, batch_size=32)
  if fit == "mlp":
    out = fit_mlp(jax.random.key(0), x, errors, hidden=(16,), **kw)
  else:
    out = fit_matrix_factorization(jax.random.key(0), x, errors, rank=4, **kw)
  assert out.loss_history.dtype == dtype
  assert out.loss_history[-1] < 0.8 * out.loss_history[0]
  # Better than predicting each LLM's mean error rate.
  rate = errors.mean(0, keepdims=True)
  baseline = numpy_bce(np.log(rate / (1 - rate)) * np.ones_like(errors), errors,
                       np.ones(errors.shape, bool))
  predicted = np.clip(np.asarray(predict_loss(out, x), np.float64), 1e-12, 1 - 1e-12)
  assert numpy_bce(np.log(predicted / (1 - predicted)), errors,
                   np.ones(errors.shape, bool)) < 0.8 * baseline


def test_checkpoint_selection_keeps_the_best_epoch():
  """The kept weights are those of the best epoch; each epoch's area is the
  public deferral-curve area of that epoch's predictions; a fit of e epochs
  is the first e epochs of a longer one."""
  x, errors = learnable()
  val_x, val_errors = learnable(seed=5, n=40)
  select = selection(val_x, val_errors, 4)
  kw = dict(hidden=(8,), learning_rate=3e-2, batch_size=16)
  fit = fit_mlp(jax.random.key(1), x, errors, epochs=4, select=select, **kw)
  areas = np.asarray(fit.validation_area)
  assert int(fit.best_epoch) == int(np.argmax(areas))
  assert len(set(areas.tolist())) > 1  # the choice is not trivial
  w = np.all(select.mask, axis=1)
  best = int(fit.best_epoch)
  for e in sorted({best, 0 if best else 1, 3}):
    short = fit_mlp(jax.random.key(1), x, errors, epochs=e + 1, **kw)
    assert np.isnan(short.validation_area).all() and int(short.best_epoch) == e
    gamma = predict_loss(short, val_x)[:, select.models]
    curve = metrics.deferral_curve(gamma, np.where(select.mask, select.loss, 0.0),
                                   select.cost, weights=w)
    np.testing.assert_allclose(areas[e], metrics.deferral_metrics(curve).area,
                               rtol=1e-9)
    if e == best:
      # The same arithmetic, but in another program (a loop of e + 1 epochs,
      # which XLA may unroll and fuse differently), so equal to rounding.
      np.testing.assert_allclose(predict_loss(short, x), predict_loss(fit, x),
                                 rtol=1e-12)
  # Scoring epochs changes the program, not the training: equal to rounding.
  np.testing.assert_allclose(short.loss_history, fit.loss_history, rtol=1e-12)


def test_masked_labels_may_hold_anything():
  x, errors = learnable(n=64)
  mask = np.random.default_rng(6).random(errors.shape) < 0.7
  a = fit_mlp(jax.random.key(2), x, np.where(mask, errors, np.nan), mask=mask,
              hidden=(8,), epochs=3)
  b = fit_mlp(jax.random.key(2), x, np.where(mask, errors, 0.0), mask=mask,
              hidden=(8,), epochs=3)
  np.testing.assert_array_equal(predict_loss(a, x), predict_loss(b, x))
  assert np.all(np.isfinite(a.loss_history))


@pytest.mark.slow
def test_fit_jit_matches_eager():
  x, errors = learnable(n=32)
  select = selection(*learnable(seed=7, n=8), 4)
  kw = dict(hidden=(8,), epochs=2, batch_size=16, select=select)
  jitted = fit_mlp(jax.random.key(3), x, errors, **kw)
  with jax.disable_jit():
    eager = fit_mlp(jax.random.key(3), x, errors, **kw)
  np.testing.assert_allclose(predict_loss(jitted, x), predict_loss(eager, x),
                             rtol=1e-9)
  np.testing.assert_allclose(jitted.validation_area, eager.validation_area, rtol=1e-9)


def test_vmapped_fits_match_separate_fits():
  x, errors = learnable(n=64)
  keys = jax.random.split(jax.random.key(4), 3)
  xs = np.stack([x, x[::-1], x * 0.5])

  def one(key, x):
    fit = fit_matrix_factorization(key, x, errors, rank=2, epochs=2, batch_size=16)
    return predict_loss(fit, x)

  batched = jax.vmap(one)(keys, xs)
  for t in range(3):
    np.testing.assert_allclose(batched[t], one(keys[t], xs[t]), rtol=1e-9)


def test_bad_input_names_the_argument():
  x, errors = learnable(n=16)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="key must be a single"):
    fit_mlp(0, x, errors)
  with pytest.raises(ValueError, match="errors must lie in"):
    checked(fit_mlp)(key, x, errors + 1)
  with pytest.raises(ValueError, match="number of prompts"):
    fit_mlp(key, x[:5], errors)
  with pytest.raises(ValueError, match="rank must be a positive integer"):
    fit_matrix_factorization(key, x, errors, rank=0)
  with pytest.raises(ValueError, match="learning_rate must be positive"):
    checked(fit_mlp)(key, x, errors, learning_rate=-1.0)
  with pytest.raises(ValueError, match="select must be a CheckpointSelection"):
    fit_mlp(key, x, errors, select=(x, errors))
  good = selection(x, errors, 4)
  with pytest.raises(ValueError, match=r"select.models must lie in \[0, 4\)"):
    checked(fit_mlp)(key, x, errors, select=good._replace(models=np.array([0, 4])))
  with pytest.raises(ValueError, match="select.embeddings must have shape"):
    fit_mlp(key, x, errors, select=good._replace(embeddings=x[:, :2]))
  with pytest.raises(ValueError, match="select.mask must leave"):
    checked(fit_mlp)(key, x, errors,
                     select=good._replace(mask=np.zeros((16, 2), bool)))
  fit = fit_mlp(key, x, errors, epochs=1)
  with pytest.raises(ValueError, match="x must have 6 columns"):
    predict_loss(fit, x[:, :3])
  with pytest.raises(ValueError, match="activation must be"):
    LossPredictor(3, 2, activation="tanh", rngs=nnx.Rngs(0))


# ------------------------------------------------------------ the protocol


@pytest.fixture(scope="module")
def small():
  return make_synthetic(jax.random.key(3), num_prompts=700, num_models=7, dim=12)


def test_protocol_mlp_is_the_documented_fit(small):
  """The protocol's MLP equals a fit assembled by hand from the split:
  training prompts with every LLM's labels, best epoch on the validation
  prompts with the test LLMs, scored on the test prompts."""
  split = protocol.make_split(jax.random.key(12), small.num_prompts, small.num_models)
  arrays = protocol.dataset_arrays(small)
  trial = protocol.gather_trial(arrays, split)
  key = jax.random.key(13)
  out = protocol.MLPRouter(epochs=4).run(trial, key)

  e, loss, mask = small.embeddings, small.loss, small.mask
  val, test, unseen = split.val, split.test, split.test_models
  select = CheckpointSelection(e[val], loss[val][:, unseen], small.cost[unseen],
                               unseen, mask[val][:, unseen])
  fit = fit_mlp(key, e[split.train], loss[split.train], mask=mask[split.train],
                epochs=4, select=select)
  assert int(out.chosen) == int(fit.best_epoch) + 1
  test_mask = mask[test][:, unseen]
  curve = metrics.deferral_curve(
      predict_loss(fit, e[test])[:, unseen],
      np.where(test_mask, loss[test][:, unseen], 0), small.cost[unseen],
      weights=test_mask.all(axis=1))
  np.testing.assert_allclose(metrics.deferral_metrics(out.curve).area,
                             metrics.deferral_metrics(curve).area, rtol=1e-9)


@pytest.mark.slow
def test_clairvoyant_methods_in_an_evaluation(small):
  methods = (protocol.KMeansRouter(clusters=(3, 5)), protocol.MLPRouter(epochs=3),
             protocol.MatrixFactorizationRouter(ranks=(3, 5), epochs=3),
             protocol.Oracle())
  ev = protocol.evaluate(jax.random.key(14), small, num_trials=2, curve_points=101,
                         methods=methods)
  assert ev.best == "kmeans"  # upper bounds are never the best method
  for name in ("mlp", "matfac"):
    s = ev.methods[name]
    assert s.method.clairvoyant and s.method.reference
    assert "clairvoyant" in s.title
    assert s.versus_best is None
    assert np.all(s.trials.area <= ev.methods["oracle"].trials.area + 1e-9)
  assert set(ev.methods["matfac"].trials.chosen.tolist()) <= {3, 5}
  assert set(ev.methods["mlp"].trials.chosen.tolist()) <= {1, 2, 3}
