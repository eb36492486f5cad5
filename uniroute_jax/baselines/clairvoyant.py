"""Clairvoyant upper bounds: loss predictors trained on every LLM's labels.

Both predict each LLM's loss on a prompt from its embedding, with one output
per LLM of a fixed pool, and are trained on that pool's labels (section 7 of
the paper):

- MLP: embedding -> two ReLU layers of 100 -> one logit per LLM;
- matrix factorisation: logit = phi(x)^T A B, A in R^{D x d}, B in R^{d x M}.

The predicted loss is the sigmoid of the logit. They are NOT dynamic
routers: an LLM unseen in training has no output, so the test LLMs' labels
on the training prompts must be known. Reported beside UniRoute they bound
what a router trained with full knowledge of the pool achieves.

The fit is Adam on the masked binary cross-entropy, one jitted ``lax.scan``
over epochs of shuffled mini-batches (the library's one training stack in
``learn``; jittable and ``jax.vmap``-able over trials). Given a :class:`CheckpointSelection`, the parameters kept are those
after the epoch with the largest deferral-curve area on held-out prompts
(the paper's "best checkpoint on S_val").
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from uniroute_jax import checks
from uniroute_jax.learn import models, training
from uniroute_jax.learn.models import FittedModel, Mask
from uniroute_jax.learn.training import CheckpointSelection
from uniroute_jax.types import PRECISION, Array


class LossPredictor(nnx.Module):
  """x [n, d] -> [n, m] predicted loss of each LLM of a fixed pool.

  Dense layers of the ``hidden`` widths, each followed by ``activation``,
  then Dense(m) and a sigmoid. ``hidden=(d,)``, ``activation="linear"`` and
  ``use_bias=False`` is matrix factorisation: sigmoid(x A B).

  Args:
    dim: D, the embedding size.
    num_models: m, the LLMs of the pool (one output each).
    hidden: hidden widths (the depth is its length).
    activation: "relu" or "linear".
    use_bias: whether the Dense layers have biases.
    rngs: ``nnx.Rngs`` for the kernels (the ``params`` stream).
    dtype, param_dtype: compute and weight dtypes.

  Attributes:
    hidden_mask: a :class:`~uniroute_jax.learn.Mask` over the last hidden
      layer's units, all True unless set: a False unit is padding, so a
      factorisation of rank r_max with r units active is one of rank r.

  Examples:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> mlp = LossPredictor(4, 3, hidden=(8,), rngs=nnx.Rngs(0))
    >>> mlp(jnp.ones((2, 4))).shape
    (2, 3)
  """

  def __init__(self, dim: int, num_models: int, *,
               hidden: Sequence[int] = (100, 100), activation: str = "relu",
               use_bias: bool = True, rngs: nnx.Rngs, dtype=None,
               param_dtype=jnp.float32):
    self.dim = checks.positive_int("dim", dim)
    self.num_models = checks.positive_int("num_models", num_models)
    self.hidden = checks.widths("hidden", hidden)
    self.activation = _check_activation(activation)
    widths = (self.dim,) + self.hidden + (self.num_models,)
    self.layers = nnx.List([
        nnx.Linear(a, b, use_bias=bool(use_bias), dtype=dtype,
                   param_dtype=param_dtype, precision=PRECISION, rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:])])
    self.hidden_mask = Mask(jnp.ones(self.hidden[-1:], bool))

  def logits(self, x) -> Array:
    """[n, m] logits of the predicted loss."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"x must be a [n, {self.dim}] array, got shape {x.shape}")
    h = x
    for layer in self.layers[:-1]:
      h = layer(h)
      if self.activation == "relu":
        h = jax.nn.relu(h)
    if self.hidden:
      h = jnp.where(self.hidden_mask[...], h, 0.0)
    return self.layers[-1](h)

  def __call__(self, x) -> Array:
    return jax.nn.sigmoid(self.logits(x))


class LossPredictorConfig(NamedTuple):
  """What fixes a :class:`LossPredictor`'s structure (hashable)."""

  dim: int
  num_models: int
  hidden: tuple[int, ...] = (100, 100)
  activation: str = "relu"
  use_bias: bool = True
  dtype: Any = jnp.float32

  def build(self, key) -> LossPredictor:
    return LossPredictor(self.dim, self.num_models, hidden=self.hidden,
                         activation=self.activation, use_bias=self.use_bias,
                         dtype=self.dtype, param_dtype=self.dtype,
                         rngs=nnx.Rngs(params=key))


def predictor_loss(logits, errors, mask=None) -> Array:
  """Mean binary cross-entropy of sigmoid(logits) against the labels.

  Args:
    logits: [n, m] predicted-loss logits.
    errors: [n, m] labels in [0, 1] (1 = wrong); unobserved entries may hold
      anything, NaN included.
    mask: optional [n, m] bool, False where a label is missing.

  Returns:
    [] the mean over observed entries; 0 when none is observed.

  Examples:
    >>> import jax.numpy as jnp
    >>> logits = jnp.zeros((1, 2), jnp.float32)
    >>> predictor_loss(logits, jnp.array([[0.0, 1.0]], jnp.float32))   # log 2
    Array(0.6931472, dtype=float32)
  """
  logits = checks.float_array("logits", logits, ndim=2, shape_doc="[n, m]")
  errors = checks.float_array("errors", errors, ndim=2, shape_doc="[n, m]")
  if errors.shape != logits.shape:
    raise ValueError(f"errors must have the shape of logits {logits.shape}, "
                     f"got {errors.shape}")
  mask = checks.mask("mask", mask, logits.shape)
  return _loss_kernel(logits, errors, mask,
                      dtype=checks.compute_dtype(logits, errors))


@checks.kernel(static_argnames=("dtype",))
def _loss_kernel(logits, errors, mask, *, dtype):
  logits, errors = logits.astype(dtype), errors.astype(dtype)
  mask = jnp.ones(errors.shape, bool) if mask is None else mask.astype(bool)
  checks.require(jnp.all(jnp.where(mask, (errors >= 0) & (errors <= 1), True)),
                 "predictor_loss: errors must lie in [0, 1] where labelled")
  return _loss(logits, errors, mask)


def _loss(logits, errors, mask):
  # Zero the missing labels first: a NaN would leak into the gradient.
  e = jnp.where(mask, errors, 0)
  per_entry = optax.sigmoid_binary_cross_entropy(logits, e)
  observed = jnp.sum(mask, dtype=logits.dtype)
  return jnp.sum(jnp.where(mask, per_entry, 0)) / jnp.maximum(observed, 1)


_DEFAULT_LEARNING_RATE = 1e-3


def fit_mlp(key, embeddings, errors, *, mask=None,
            hidden: Sequence[int] = (100, 100), learning_rate=None,
            batch_size: int = 64, epochs: int = 30,
            select: CheckpointSelection | None = None, dtype=None
            ) -> FittedModel:
  """Trains the clairvoyant MLP: one predicted loss per LLM of the pool.

  The paper's settings are the defaults: two ReLU layers of 100, Adam 1e-3,
  batch 64, 30 epochs, best checkpoint by validation area (pass ``select``).

  Args:
    key: a ``jax.random.key``: initial weights and mini-batch orders.
    embeddings: [n, D] training prompts.
    errors: [n, m] each LLM's loss on them, in [0, 1].
    mask: optional [n, m] bool, False where a label is missing.
    hidden: hidden widths (static).
    learning_rate: Adam step size (traced; default 1e-3).
    batch_size: prompts per step (static), clamped to n; each epoch drops
      the n mod batch_size prompts a fresh permutation leaves over.
    epochs: passes over the prompts (static).
    select: held-out prompts to keep the best epoch on; None keeps the last.
    dtype: weight and compute dtype; default the inputs' (at least float32).

  Returns:
    A :class:`~uniroute_jax.learn.FittedModel` holding a
    :class:`LossPredictor`, for :func:`predict_loss`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 4))
    >>> e = (x[:, :2] > 0).astype(jnp.float32)          # 2 LLMs
    >>> fit = fit_mlp(jax.random.key(1), x, e, hidden=(8,), epochs=3)
    >>> predict_loss(fit, x).shape
    (64, 2)
  """
  return _fit_checked(key, embeddings, errors, mask=mask, hidden=hidden,
                      activation="relu", use_bias=True, active_rank=None,
                      learning_rate=learning_rate, batch_size=batch_size,
                      epochs=epochs, select=select, dtype=dtype)


def fit_matrix_factorization(key, embeddings, errors, *, rank: int, mask=None,
                             active_rank=None, learning_rate=None,
                             batch_size: int = 64, epochs: int = 30,
                             select: CheckpointSelection | None = None,
                             dtype=None) -> FittedModel:
  """Trains the clairvoyant matrix factorisation sigmoid(phi(x)^T A B).

  A is [D, rank], B is [rank, m]; no biases. Training as :func:`fit_mlp`
  (Adam, batch 64, 30 epochs, best checkpoint with ``select``); the paper
  chooses ``rank`` like K, by validation area over a grid.

  Args:
    rank: the width d of the factorisation (static).
    active_rank: optional traced int in [1, rank]: only that many units of
      the factorisation are used, the rest are padding, so one compiled fit
      serves every candidate rank. B's initial scale is that of a rank
      ``active_rank`` factorisation.
    Other arguments as :func:`fit_mlp`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 4))
    >>> e = (x[:, :3] > 0).astype(jnp.float32)
    >>> fit = fit_matrix_factorization(jax.random.key(1), x, e, rank=2, epochs=3)
    >>> predict_loss(fit, x).shape
    (64, 3)
  """
  if active_rank is not None:
    checks.integer_array("active_rank", active_rank, ndim=0,
                         shape_doc="(a scalar)")
  return _fit_checked(key, embeddings, errors, mask=mask,
                      hidden=(checks.positive_int("rank", rank),),
                      activation="linear", use_bias=False,
                      active_rank=active_rank, learning_rate=learning_rate,
                      batch_size=batch_size, epochs=epochs, select=select,
                      dtype=dtype)


def _fit_checked(key, embeddings, errors, *, mask, hidden, activation, use_bias,
                 active_rank, learning_rate, batch_size, epochs, select, dtype):
  dtype = checks.float_dtype(dtype, embeddings, errors)
  fit = training.check_fit_inputs(
      key, embeddings, errors, mask=mask, learning_rate=learning_rate,
      batch_size=batch_size, epochs=epochs, select=select)
  d, m = fit.embeddings.shape[1], fit.errors.shape[1]
  config = LossPredictorConfig(d, m, checks.widths("hidden", hidden), activation,
                               bool(use_bias), dtype)
  return _fit(key, fit.embeddings, fit.errors, fit.mask, active_rank,
              fit.learning_rate, fit.select, config=config,
              batch_size=fit.batch_size, epochs=fit.epochs)


@checks.kernel(static_argnames=("config", "batch_size", "epochs"))
def _fit(key, x, errors, mask, active_rank, learning_rate, select, *,
         config: LossPredictorConfig, batch_size: int, epochs: int):
  dtype = config.dtype
  x, errors = x.astype(dtype), errors.astype(dtype)
  mask = jnp.ones(errors.shape, bool) if mask is None else mask.astype(bool)
  learning_rate = jnp.asarray(
      _DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate, dtype)
  training.require_fit_values(x, errors, mask, learning_rate, "fit")
  if select is not None:
    select = training.require_selection(
        jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(
            a.dtype, jnp.floating) else a, select), config.num_models, "fit")
  init_key, order_key = jax.random.split(key)
  model = config.build(init_key)
  if active_rank is not None:
    _pad_rank(model, active_rank)

  def batch_loss(module, rows):
    return _loss(module.logits(x[rows]), errors[rows], mask[rows])

  return models.fit_model(
      order_key, model, batch_loss=batch_loss, predict=lambda module, e: module(e),
      num_rows=x.shape[0], batch_size=batch_size, epochs=epochs,
      learning_rate=learning_rate, dtype=dtype, select=select)


def _pad_rank(model: LossPredictor, active_rank) -> None:
  """Keeps the first ``active_rank`` units of the last hidden layer and
  scales the output kernel to the initial spread of a layer with that many
  inputs (LeCun normal: std 1 / sqrt(fan in))."""
  width = model.hidden[-1]
  checks.require((active_rank >= 1) & (active_rank <= width),
                 f"fit_matrix_factorization: active_rank must lie in [1, {width}]")
  active = jnp.clip(jnp.asarray(active_rank), 1, width)
  model.hidden_mask[...] = jnp.arange(width) < active
  out = model.layers[-1].kernel
  scale = jnp.sqrt(width / active.astype(out[...].dtype))
  out[...] = out[...] * scale


def predict_loss(fitted: FittedModel, x) -> Array:
  """[n, m] predicted loss of each LLM of the pool on the prompts ``x``."""
  fitted = models.check_fitted("fitted", fitted, LossPredictor)
  x = checks.float_array("x", x, ndim=2, shape_doc="[n, D]")
  dim = fitted.params["layers"][0]["kernel"].shape[-2]
  if x.shape[1] != dim:
    raise ValueError(f"x must have {dim} columns (the embedding size the "
                     f"predictor was fitted on), got shape {x.shape}")
  return _predict(fitted, x, dtype=checks.compute_dtype(x, fitted.param_dtype))


@checks.kernel(static_argnames=("dtype",))
def _predict(fitted, x, *, dtype):
  return fitted.module(x.astype(dtype))


def _check_activation(activation) -> str:
  if activation not in ("relu", "linear"):
    raise ValueError(f"activation must be 'relu' or 'linear', got {activation!r}")
  return activation
