"""The mini-batch loop the library's Optax-trained models share.

Each epoch visits the rows in a fresh random order in ``rows // batch_size``
full mini-batches and drops the remainder (a new permutation drops different
rows next epoch), so the number of steps is fixed by the shapes and a whole
fit is one ``lax.scan``: jittable, and ``jax.vmap``-able over trials. Epoch
e's order comes from ``fold_in(key, e)``, so a fit of e epochs is exactly the
first e epochs of a longer one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Hashable

import jax
import jax.numpy as jnp
from flax import nnx


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


def keep_if(better, candidate: Any, current: Any) -> Any:
  """``candidate`` where the scalar ``better`` holds, else ``current`` (pytrees)."""
  return jax.tree.map(lambda a, b: jnp.where(better, a, b), candidate, current)


@functools.lru_cache(maxsize=128)
def graphdef(build: Callable, config: Hashable, *filters):
  """The ``nnx.GraphDef`` of ``build(config, key)``, built abstractly once.

  ``filters`` are the variable types the module is split by (e.g.
  ``nnx.Param, nnx.BatchStat``), in the order its fit splits it.
  """
  abstract = nnx.eval_shape(lambda: build(config, jax.random.key(0)))
  return nnx.split(abstract, *filters)[0]
