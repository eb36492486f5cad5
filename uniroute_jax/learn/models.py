"""A fitted NNX model as a pytree of arrays, and the Adam fit every model shares.

A model is described by a configuration: a hashable NamedTuple of what
fixes its structure (sizes, depth, dtype) with a ``build(key)`` method that
returns the ``nnx.Module``. Its graph definition is built once per
configuration, abstractly (:func:`graphdef`), so that a fitted model is just
arrays: :class:`FittedModel` passes through ``jax.jit`` and ``jax.vmap``
(a vmapped fit gives every array a leading trial axis) and is saved as
plain arrays.

Variables of a model come in three kinds: ``nnx.Param`` (trained),
``nnx.BatchStat`` (running averages, updated by training-mode calls) and
:class:`Mask` (fixed during training: which output or hidden units are
padding, so that one compiled program serves every candidate size).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from uniroute_jax.learn import training
from uniroute_jax.types import Array


class Mask(nnx.Variable):
  """A boolean array of a module that training leaves alone (padding units)."""


class ModelConfig(Protocol):
  """What fixes a model's structure: hashable, with a ``build(key)``."""

  def build(self, key) -> nnx.Module: ...


class FittedModel(NamedTuple):
  """A trained NNX module, split into its static graph and its arrays.

  A pytree whose only leaves are arrays (the graph definition has none).
  ``module`` rebuilds the ``nnx.Module``.

  Attributes:
    graphdef: the ``nnx.GraphDef`` of the module (static).
    params: ``nnx.State`` of the ``nnx.Param`` weights (the kept epoch's).
    state: ``nnx.State`` of every other variable: BatchNorm running
      averages and :class:`Mask` arrays (empty when there are none).
    loss_history: [epochs] mean training loss of each epoch: the mean of its
      mini-batch losses, each taken before that step's update (training
      mode).
    validation_area: [epochs] the checkpoint-selection area after each
      epoch (NaN when the fit had no selection).
    best_epoch: [] int32 index of the kept epoch (the last without
      selection).
  """

  graphdef: Any
  params: Any
  state: Any
  loss_history: Array
  validation_area: Array
  best_epoch: Array

  @property
  def module(self) -> nnx.Module:
    """The trained ``nnx.Module`` (a fresh copy)."""
    return nnx.merge(self.graphdef, self.params, self.state)

  @property
  def param_dtype(self):
    """The dtype of the weights."""
    return jax.tree.leaves(self.params)[0].dtype


@functools.lru_cache(maxsize=256)
def graphdef(config: ModelConfig):
  """The ``nnx.GraphDef`` of ``config.build(key)``, built abstractly once."""
  abstract = nnx.eval_shape(lambda: config.build(jax.random.key(0)))
  return nnx.split(abstract, nnx.Param, ...)[0]


def model_state(config: ModelConfig):
  """(params, state) of ``config`` as abstract ``jax.ShapeDtypeStruct``s:
  the arrays a saved model must provide."""
  abstract = nnx.eval_shape(lambda: config.build(jax.random.key(0)))
  _, params, state = nnx.split(abstract, nnx.Param, ...)
  return params, state


def fit_model(key, model: nnx.Module, *, batch_loss: Callable,
              predict: Callable, num_rows: int, batch_size: int, epochs: int,
              learning_rate, dtype, select=None) -> FittedModel:
  """Adam on ``batch_loss`` over shuffled mini-batches: traceable, for use
  inside a model's jitted fit.

  Args:
    key: the key of the mini-batch orders.
    model: the freshly built module (its initial weights and masks).
    batch_loss: (module, rows [batch_size] int) -> [] loss; the module is in
      training mode (BatchNorm uses and updates batch statistics).
    predict: (module, embeddings [v, D]) -> [v, m] predicted loss, in
      inference mode; used to score checkpoints on ``select``.
    num_rows, batch_size, epochs: static sizes (see
      :func:`~uniroute_jax.learn.training.shuffled_epochs`).
    learning_rate: Adam's step size (traced).
    dtype: dtype of the recorded areas.
    select: optional :class:`~uniroute_jax.learn.CheckpointSelection`.

  Returns:
    A :class:`FittedModel` holding the kept epoch's variables.
  """
  graph, params, state = nnx.split(model, nnx.Param, ...)
  # Weights of fewer than 32 bits (bfloat16, float16) train from float32
  # copies and are rounded for each step's forward pass: in float16 Adam's
  # epsilon (1e-8) is 0 and a never-updated weight gets 0 / 0, and in
  # either small updates would vanish in the rounding.
  stored = jax.tree.map(lambda p: p.dtype, params)
  params = jax.tree.map(lambda p: p.astype(jnp.promote_types(p.dtype,
                                                             jnp.float32)),
                        params)

  def as_stored(params):
    return jax.tree.map(lambda p, d: p.astype(d), params, stored)

  optimizer = optax.adam(learning_rate)

  def step(carry, rows):
    (params, state), opt_state = carry

    def loss_fn(params):
      # Fresh Variables at this trace level: a training-mode call writes the
      # running averages into them, which the carried ones do not allow.
      module = nnx.merge(graph, as_stored(params), state, copy=True)
      value = batch_loss(module, rows)
      return value, nnx.state(module, nnx.Not(nnx.Param))

    (value, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return ((optax.apply_updates(params, updates), new_state), opt_state), value

  def predict_kept(kept, embeddings):
    params, state = kept
    return predict(nnx.merge(graph, as_stored(params), state), embeddings)

  (params, state), history, areas, best_epoch = training.train(
      key, (params, state), optimizer.init(params), step, num_rows=num_rows,
      batch_size=batch_size, epochs=epochs, dtype=dtype, select=select,
      predict=predict_kept)
  return FittedModel(graph, as_stored(params), state, history, areas,
                     best_epoch)


def from_module(module: nnx.Module) -> FittedModel:
  """A module built (or set) by hand as a :class:`FittedModel`, with an
  empty training history, e.g. to route with a map whose weights come from
  elsewhere."""
  graph, params, state = nnx.split(module, nnx.Param, ...)
  leaf = jax.tree.leaves(params)[0]
  empty = jnp.zeros((0,), leaf.dtype)
  return FittedModel(graph, params, state, empty, empty,
                     jnp.zeros((), jnp.int32))


def check_fitted(name: str, fitted, module_type: type) -> FittedModel:
  """``fitted`` is one (not vmapped) :class:`FittedModel` of ``module_type``."""
  if not isinstance(fitted, FittedModel):
    raise ValueError(f"{name} must be a FittedModel, got {type(fitted).__name__}")
  try:
    module = fitted.module
  except Exception as err:  # noqa: BLE001 - any failure means "not a model"
    raise ValueError(f"{name} is not a valid fitted model: {err}") from None
  if not isinstance(module, module_type):
    raise ValueError(f"{name} must hold a {module_type.__name__}, got "
                     f"{type(module).__name__}")
  if jnp.ndim(fitted.best_epoch) != 0:
    raise ValueError(
        f"{name} has a leading batch axis (a vmapped fit); take one fit, "
        f"e.g. jax.tree.map(lambda a: a[i], {name})")
  return fitted
