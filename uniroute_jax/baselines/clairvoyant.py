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
over epochs of shuffled mini-batches (jittable and ``jax.vmap``-able over
trials). Given a :class:`CheckpointSelection`, the parameters kept are those
after the epoch with the largest deferral-curve area on held-out prompts
(the paper's "best checkpoint on S_val").
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from uniroute_jax import _training
from uniroute_jax import _validation as check
from uniroute_jax._training import CheckpointSelection
from uniroute_jax.types import Array

_HIGHEST = jax.lax.Precision.HIGHEST


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
    self.dim = check.positive_int("dim", dim)
    self.num_models = check.positive_int("num_models", num_models)
    self.hidden = check.widths("hidden", hidden)
    self.activation = _check_activation(activation)
    widths = (self.dim,) + self.hidden + (self.num_models,)
    self.layers = nnx.List([
        nnx.Linear(a, b, use_bias=bool(use_bias), dtype=dtype,
                   param_dtype=param_dtype, precision=_HIGHEST, rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:])])

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
    return self.layers[-1](h)

  def __call__(self, x) -> Array:
    return jax.nn.sigmoid(self.logits(x))


class FittedLossPredictor(NamedTuple):
  """A trained :class:`LossPredictor`: its graph, weights and history.

  A pytree of arrays (the graph definition has none), so it passes through
  ``jax.jit`` and ``jax.vmap``. ``nnx.merge(graphdef, params)`` rebuilds the
  module.

  Attributes:
    graphdef: the ``nnx.GraphDef`` of the module (static).
    params: ``nnx.State`` of the kept weights.
    loss_history: [epochs] mean mini-batch training loss of each epoch.
    validation_area: [epochs] the checkpoint area after each epoch (NaN
      without a :class:`CheckpointSelection`).
    best_epoch: [] index of the kept epoch (the last one without selection).
  """

  graphdef: Any
  params: Any
  loss_history: Array
  validation_area: Array
  best_epoch: Array

  @property
  def num_models(self) -> int:
    """m, the LLMs the predictor has an output for."""
    layers = self.params["layers"]
    return int(layers[len(layers) - 1]["kernel"].shape[-1])

  @property
  def dim(self) -> int:
    """D, the embedding size it was fitted on."""
    return int(self.params["layers"][0]["kernel"].shape[-2])


class _Config(NamedTuple):
  """What fixes the module's structure (hashable: a static jit argument)."""

  dim: int
  num_models: int
  hidden: tuple[int, ...]
  activation: str
  use_bias: bool
  dtype: Any


def _build(config: _Config, key) -> LossPredictor:
  return LossPredictor(config.dim, config.num_models, hidden=config.hidden,
                       activation=config.activation, use_bias=config.use_bias,
                       dtype=config.dtype, param_dtype=config.dtype,
                       rngs=nnx.Rngs(params=key))


def _graphdef(config: _Config):
  return _training.graphdef(_build, config, nnx.Param)


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
  dtype = check.compute_dtype(logits, errors)
  logits = check.array("logits", logits, ndim=2, dtype=dtype, shape_doc="[n, m]")
  errors = check.array("errors", errors, ndim=2, dtype=dtype, shape_doc="[n, m]")
  if errors.shape != logits.shape:
    raise ValueError(f"errors must have the shape of logits {logits.shape}, "
                     f"got {errors.shape}")
  mask = check.bool_mask("mask", mask, logits.shape)
  check.in_range("errors", errors, 0.0, 1.0, where=mask)
  return _loss(logits, errors, mask)


def _loss(logits, errors, mask):
  # Zero the missing labels first: a NaN would leak into the gradient.
  e = jnp.where(mask, errors, 0)
  per_entry = optax.sigmoid_binary_cross_entropy(logits, e)
  observed = jnp.sum(mask, dtype=logits.dtype)
  return jnp.sum(jnp.where(mask, per_entry, 0)) / jnp.maximum(observed, 1)


def fit_mlp(key, embeddings, errors, *, mask=None,
            hidden: Sequence[int] = (100, 100), learning_rate=1e-3,
            batch_size: int = 64, epochs: int = 30,
            select: CheckpointSelection | None = None, dtype=None
            ) -> FittedLossPredictor:
  """Trains the clairvoyant MLP: one predicted loss per LLM of the pool.

  The paper's settings are the defaults: two ReLU layers of 100, Adam 1e-3,
  batch 64, 30 epochs, best checkpoint by validation area (pass ``select``).

  Args:
    key: a ``jax.random.key``: initial weights and mini-batch orders.
    embeddings: [n, D] training prompts.
    errors: [n, m] each LLM's loss on them, in [0, 1].
    mask: optional [n, m] bool, False where a label is missing.
    hidden: hidden widths (static).
    learning_rate: Adam step size (traced).
    batch_size: prompts per step (static), clamped to n; each epoch drops
      the n mod batch_size prompts a fresh permutation leaves over.
    epochs: passes over the prompts (static).
    select: held-out prompts to keep the best epoch on; None keeps the last.
    dtype: weight and compute dtype; default the inputs' (at least float32).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 4))
    >>> e = (x[:, :2] > 0).astype(jnp.float32)          # 2 LLMs
    >>> fit = fit_mlp(jax.random.key(1), x, e, hidden=(8,), epochs=3)
    >>> predict_loss(fit, x).shape
    (64, 2)
  """
  return _fit_checked(key, embeddings, errors, mask=mask, hidden=hidden,
                      activation="relu", use_bias=True,
                      learning_rate=learning_rate, batch_size=batch_size,
                      epochs=epochs, select=select, dtype=dtype)


def fit_matrix_factorization(key, embeddings, errors, *, rank: int, mask=None,
                             learning_rate=1e-3, batch_size: int = 64,
                             epochs: int = 30,
                             select: CheckpointSelection | None = None,
                             dtype=None) -> FittedLossPredictor:
  """Trains the clairvoyant matrix factorisation sigmoid(phi(x)^T A B).

  A is [D, rank], B is [rank, m]; no biases. Training as :func:`fit_mlp`
  (Adam, batch 64, 30 epochs, best checkpoint with ``select``); the paper
  chooses ``rank`` like K, by validation area over a grid.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (64, 4))
    >>> e = (x[:, :3] > 0).astype(jnp.float32)
    >>> fit = fit_matrix_factorization(jax.random.key(1), x, e, rank=2, epochs=3)
    >>> predict_loss(fit, x).shape
    (64, 3)
  """
  return _fit_checked(key, embeddings, errors, mask=mask,
                      hidden=(check.positive_int("rank", rank),),
                      activation="linear", use_bias=False,
                      learning_rate=learning_rate, batch_size=batch_size,
                      epochs=epochs, select=select, dtype=dtype)


def _fit_checked(key, embeddings, errors, *, mask, hidden, activation, use_bias,
                 learning_rate, batch_size, epochs, select, dtype):
  dtype = check.float_dtype(dtype, embeddings, errors)
  fit = _training.check_fit_inputs(
      key, embeddings, errors, mask=mask, dtype=dtype,
      learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
      select=select)
  (n, d), m = fit.embeddings.shape, fit.errors.shape[1]
  if n < 1 or d < 1 or m < 1:
    raise ValueError(f"embeddings [n, D] and errors [n, m] must be non-empty, "
                     f"got {fit.embeddings.shape} and {fit.errors.shape}")
  config = _Config(d, m, check.widths("hidden", hidden), activation,
                   bool(use_bias), dtype)
  params, history, areas, best = _fit(
      key, fit.embeddings, fit.errors, fit.mask, fit.learning_rate, fit.select,
      config=config, batch_size=fit.batch_size, epochs=fit.epochs)
  return FittedLossPredictor(_graphdef(config), params, history, areas, best)


@functools.partial(jax.jit, static_argnames=("config", "batch_size", "epochs"))
def _fit(key, x, errors, mask, learning_rate, select, *, config: _Config,
         batch_size: int, epochs: int):
  init_key, order_key = jax.random.split(key)
  graphdef, params = nnx.split(_build(config, init_key), nnx.Param)
  optimizer = optax.adam(learning_rate)

  def loss_fn(params, rows):
    logits = nnx.merge(graphdef, params).logits(x[rows])
    return _loss(logits, errors[rows], mask[rows])

  def step(carry, rows):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, rows)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return _training.train(
      order_key, params, optimizer.init(params), step, num_rows=x.shape[0],
      batch_size=batch_size, epochs=epochs, dtype=x.dtype, select=select,
      predict=functools.partial(_predict, graphdef))


def predict_loss(fitted: FittedLossPredictor, x) -> Array:
  """[n, m] predicted loss of each LLM of the pool on the prompts ``x``."""
  dtype = check.compute_dtype(x, fitted.params["layers"][0]["kernel"])
  x = check.array("x", x, ndim=2, dtype=dtype, shape_doc="[n, D]")
  if x.shape[1] != fitted.dim:
    raise ValueError(f"x must have {fitted.dim} columns (the embedding size "
                     f"the predictor was fitted on), got shape {x.shape}")
  return _predict(fitted.graphdef, fitted.params, x)


@functools.partial(jax.jit, static_argnums=0)
def _predict(graphdef, params, x):
  return nnx.merge(graphdef, params)(x)


def _check_activation(activation) -> str:
  if activation not in ("relu", "linear"):
    raise ValueError(f"activation must be 'relu' or 'linear', got {activation!r}")
  return activation
