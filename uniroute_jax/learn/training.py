"""The mini-batch loop the library's Optax-trained models share, with
checkpoint selection (early stopping) on held-out prompts.

Each epoch visits the rows in a fresh random order in ``rows // batch_size``
full mini-batches and drops the remainder (a new permutation drops different
rows next epoch), so the number of steps is fixed by the shapes and a whole
fit is one ``lax.scan``: jittable, and ``jax.vmap``-able over trials. Epoch
e's order comes from ``fold_in(key, e)``, so a fit of e epochs is exactly the
first e epochs of a longer one.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import checks, metrics


class CheckpointSelection(NamedTuple):
  """Held-out prompts on which a fit keeps its best epoch (early stopping).

  After every epoch the model being fitted predicts every LLM's loss on
  these prompts and routes the ``models`` among themselves (argmin predicted
  loss + lambda * mean cost, every lambda); the parameters with the largest
  deferral-curve area are kept. Only prompts labelled for every one of
  ``models`` are scored.

  Attributes:
    embeddings: [v, D] prompt embeddings.
    loss: [v, p] each routed LLM's loss on them, in [0, 1].
    cost: [p] or [v, p] cost of each routed LLM (per prompt: the curve
      accounts the cost paid; routing ranks by the mean).
    models: [p] int, the column of each routed LLM among the fitted model's
      predicted losses.
    mask: [v, p] bool, False where a label is missing (None: all labelled).
  """

  embeddings: Any
  loss: Any
  cost: Any
  models: Any
  mask: Any = None


def check_selection(select, dim: int, num_models: int) -> CheckpointSelection:
  """``select``'s shapes checked against the fit's embedding size and LLMs."""
  if not isinstance(select, CheckpointSelection):
    raise ValueError(f"select must be a CheckpointSelection, got "
                     f"{type(select).__name__}")
  x = checks.float_array("select.embeddings", select.embeddings, ndim=2,
                         shape_doc="[v, D]")
  loss = checks.float_array("select.loss", select.loss, ndim=2,
                            shape_doc="[v, p]")
  v, p = loss.shape
  if x.shape != (v, dim):
    raise ValueError(f"select.embeddings must have shape {(v, dim)} (a row per "
                     f"select.loss row, the fit's embedding size), got {x.shape}")
  cost = checks.cost("select.cost", select.cost, v, p)
  models = checks.integer_array("select.models", select.models, ndim=1,
                                shape_doc="[p]")
  if models.shape != (p,):
    raise ValueError(f"select.models must be [{p}] integer output columns, got "
                     f"shape {models.shape}")
  mask = checks.mask("select.mask", select.mask, (v, p))
  del num_models   # its range is a value precondition (require_selection)
  return CheckpointSelection(x, loss, cost, models, mask)


def require_selection(select: CheckpointSelection, num_models: int,
                      where: str) -> CheckpointSelection:
  """``select`` in the compute dtype with its value preconditions (checked
  under ``checks.checked``); traceable."""
  mask = (jnp.ones(select.loss.shape, bool) if select.mask is None
          else select.mask.astype(bool))
  checks.require(jnp.all((select.models >= 0) & (select.models < num_models)),
                 f"{where}: select.models must lie in [0, {num_models}), the "
                 f"fitted model's LLMs")
  checks.require(jnp.all(jnp.isfinite(select.embeddings)),
                 f"{where}: select.embeddings must be finite")
  checks.require(jnp.all(jnp.where(mask, (select.loss >= 0) & (select.loss <= 1),
                                   True)),
                 f"{where}: select.loss must lie in [0, 1] where labelled")
  checks.require(jnp.any(jnp.all(mask, axis=1)),
                 f"{where}: select.mask must leave a prompt labelled for "
                 f"every routed LLM")
  return select._replace(mask=mask)


class FitInputs(NamedTuple):
  """The shape-checked arguments every labelled fit of the library takes
  (arrays as given: the fit's kernel casts them)."""

  embeddings: Any       # [n, D]
  errors: Any           # [n, m]
  mask: Any             # [n, m] bool or None
  learning_rate: Any    # [] or None (the fit's default)
  batch_size: int       # clamped to n
  epochs: int
  select: CheckpointSelection | None


def check_fit_inputs(key, embeddings, errors, *, mask, learning_rate,
                     batch_size, epochs, select) -> FitInputs:
  """Checks the shapes of what a fit on labelled prompts is given.

  The key, the [n, D] embeddings and [n, m] labels, the mask, Adam's step
  size (a scalar), the batch size (clamped to n), the epochs and the
  optional checkpoint selection.
  """
  checks.prng_key("key", key)
  x = checks.float_array("embeddings", embeddings, ndim=2, shape_doc="[n, D]")
  errors = checks.float_array("errors", errors, ndim=2, shape_doc="[n, m]")
  (n, d), m = x.shape, errors.shape[1]
  checks.same_size("embeddings", n, "errors", errors.shape[0], "prompts")
  if n < 1 or d < 1 or m < 1:
    raise ValueError(f"embeddings [n, D] and errors [n, m] must be non-empty, "
                     f"got {x.shape} and {errors.shape}")
  mask = checks.mask("mask", mask, errors.shape)
  if learning_rate is not None:
    learning_rate = checks.scalar("learning_rate", learning_rate)
  if select is not None:
    select = check_selection(select, d, m)
  return FitInputs(x, errors, mask, learning_rate,
                   min(checks.positive_int("batch_size", batch_size), n),
                   checks.positive_int("epochs", epochs), select)


def require_fit_values(x, errors, mask, learning_rate, where: str) -> None:
  """The value preconditions of a fit (checked under ``checks.checked``)."""
  checks.require(jnp.all(jnp.isfinite(x)), f"{where}: embeddings must be finite")
  checks.require(jnp.all(jnp.where(mask, (errors >= 0) & (errors <= 1), True)),
                 f"{where}: errors must lie in [0, 1] where labelled")
  checks.require(learning_rate > 0, f"{where}: learning_rate must be positive, "
                 "got {}", learning_rate)


def selection_area(select: CheckpointSelection, predicted_loss):
  """The checkpoint score: area of routing ``select.models`` by their columns
  of ``predicted_loss`` [v, m] on the selection prompts."""
  return metrics.labelled_area(predicted_loss[:, select.models], select.loss,
                               select.mask, select.cost)


def shuffled_epochs(key, carry, step: Callable, *, num_rows: int,
                    batch_size: int, epochs: int,
                    end_of_epoch: Callable | None = None):
  """Runs ``epochs`` shuffled passes of ``step`` over mini-batches of rows.

  Args:
    key: the key of the row orders.
    carry: the training state (a pytree).
    step: (carry, rows [batch_size] int) -> (carry, batch loss []).
    num_rows, batch_size, epochs: static sizes; batch_size <= num_rows.
    end_of_epoch: optional (carry, epoch index) -> (carry, record), run after
      every epoch (e.g. to score and keep a checkpoint).

  Returns:
    (final carry, per-epoch mean batch loss [epochs]) or, with
    ``end_of_epoch``, (final carry, (mean losses, stacked records)).
  """
  steps = num_rows // batch_size

  def epoch(carry, index):
    order = jax.random.permutation(jax.random.fold_in(key, index), num_rows)
    order = order[:steps * batch_size]
    carry, losses = jax.lax.scan(step, carry, order.reshape(steps, batch_size))
    mean_loss = jnp.mean(losses)
    if end_of_epoch is None:
      return carry, mean_loss
    carry, record = end_of_epoch(carry, index)
    return carry, (mean_loss, record)

  return jax.lax.scan(epoch, carry, jnp.arange(epochs, dtype=jnp.int32))


def train(key, state, opt_state, step: Callable, *, num_rows: int,
          batch_size: int, epochs: int, dtype,
          select: CheckpointSelection | None = None,
          predict: Callable | None = None):
  """:func:`shuffled_epochs` that keeps the best epoch's state on ``select``.

  Args:
    key: the key of the row orders.
    state: what is trained and kept (e.g. params, or params and batch
      statistics); ``opt_state``: the optimiser's state (not kept).
    step: ((state, opt_state), rows) -> ((state, opt_state), batch loss).
    num_rows, batch_size, epochs: static sizes.
    dtype: float dtype of the recorded areas.
    select: optional held-out prompts; None keeps the last epoch.
    predict: (state, embeddings [v, D]) -> [v, m] predicted loss of every
      LLM; needed with ``select``.

  Returns:
    (kept state, mean training loss per epoch [epochs], selection area per
    epoch [epochs] (NaN without ``select``), index of the kept epoch []).
    Ties keep the earlier epoch; a NaN area never replaces a checkpoint.
  """

  def run_step(carry, rows):
    trained, kept = carry
    trained, loss = step(trained, rows)
    return (trained, kept), loss

  def end_of_epoch(carry, epoch):
    (state, opt_state), (kept, best_area, best_epoch) = carry
    if select is None:
      return ((state, opt_state), (state, best_area, epoch)), jnp.array(jnp.nan, dtype)
    area = selection_area(select, predict(state, select.embeddings)).astype(dtype)
    better = (area > best_area) | (epoch == 0)
    kept = jax.tree.map(lambda a, b: jnp.where(better, a, b), state, kept)
    return ((state, opt_state), (kept, jnp.where(better, area, best_area),
                                 jnp.where(better, epoch, best_epoch))), area

  start = ((state, opt_state),
           (state, jnp.array(-jnp.inf, dtype), jnp.zeros((), jnp.int32)))
  (_, (kept, _, best_epoch)), (history, areas) = shuffled_epochs(
      key, start, run_step, num_rows=num_rows, batch_size=batch_size,
      epochs=epochs, end_of_epoch=end_of_epoch)
  return kept, history, areas, best_epoch
