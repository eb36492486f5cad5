"""Row blocking, so that [n, k] intermediates stay within a memory budget,
and mapping over items in vmapped batches."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Entries of an [n, k] intermediate held at once before rows are blocked.
BLOCK_BUDGET = 1 << 24


def block_size(n: int, k: int, chunk_size: int | None = None) -> int:
  """Rows per block: all of them unless n * k exceeds the budget.

  Blocks are made as even as possible, so padding stays below one row per
  block.
  """
  if chunk_size is not None:
    return max(1, min(int(chunk_size), max(n, 1)))
  if n * k <= BLOCK_BUDGET:
    return max(n, 1)
  num_blocks = math.ceil(n * k / BLOCK_BUDGET)
  return math.ceil(n / num_blocks)


def map_rows(fn, arrays, block: int):
  """``fn`` over row blocks of ``arrays`` (a tuple, leading axis n), re-joined.

  Equal to ``fn(*arrays)`` for row-wise ``fn``; runs blocks one after the
  other with ``lax.map`` when ``block`` is smaller than n.
  """
  n = arrays[0].shape[0]
  if block >= n:
    return fn(*arrays)
  pad = (-n) % block
  padded = tuple(
      jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(
          (n + pad) // block, block, *a.shape[1:]) for a in arrays)
  out = jax.lax.map(lambda blk: fn(*blk), padded)
  return jax.tree.map(lambda o: o.reshape(n + pad, *o.shape[2:])[:n], out)


def map_batched(fn, xs, batch: int):
  """``lax.map`` of ``fn`` over the leading axis of ``xs``, ``batch`` items
  vmapped at a time.

  A batch of 1 visits the items in turn without ``vmap``:
  ``lax.map(batch_size=1)`` would still vmap each item over an axis of one,
  and under ``vmap`` a switch runs every branch and a while loop selects
  between its states on every step.
  """
  return jax.lax.map(fn, xs, batch_size=None if batch == 1 else batch)
