"""Hyper-parameter search as one traced computation over candidates.

Every candidate (a number of clusters K, of neighbours k, a rank d) runs
through the same compiled step, padded with masks to a static size
(``kmeans(active_clusters=...)``, ``fit_cluster_map(cluster_mask=...)``,
``fit_matrix_factorization(active_rank=...)``). The program holds one step
(or one per size class) whatever the number of candidates, so compile time
and program size do not grow with the grid, and the candidate values
themselves are traced.

Two ways to visit the candidates, chosen by the method:
- in turn (``together=1``): a ``lax.scan`` keeping the best so far. Right
  for fits that stop at their own iteration count (k-means): each candidate
  pays only for its own iterations. ``sizes`` then lets a small candidate
  run in a smaller padded step: ``lax.switch`` picks, per candidate, the
  smallest of a few static sizes that holds it, and only that branch runs.
- vectorised (``together > 1``): ``together`` candidates at a time through
  one ``vmap``-ed step. Right for fits with a fixed number of steps (the
  learned maps' epochs): one step on a batch of candidates costs little
  more than one on a single candidate when the matrices are small.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax import checks
from uniroute_jax.types import Array


class Best(NamedTuple):
  """The candidate with the largest validation area."""

  area: Array    # []
  gamma: Array   # its predicted loss on the test prompts
  value: Array   # [] int32 its hyper-parameter
  index: Array   # [] int32 its position in the candidates


# Below this many slots a padded k-means step costs about what an unpadded
# one does (it is bound by reading the data, not by the slots), and every
# class is one more branch to compile.
SMALLEST_CLASS = 6


def size_classes(largest: int, count: int = 3, *,
                 smallest: int = SMALLEST_CLASS) -> tuple[int, ...]:
  """Static padded sizes for candidates up to ``largest``: ``largest``,
  then halved up to ``count - 1`` times (rounded up) while at least
  ``smallest``; ascending and distinct."""
  largest = checks.positive_int("largest", largest)
  count = checks.positive_int("count", count)
  smallest = checks.positive_int("smallest", smallest)
  halves = (math.ceil(largest / 2 ** i) for i in range(count))
  return tuple(sorted({largest} | {h for h in halves if h >= smallest}))


def _score(area):
  # A NaN area (e.g. a fit that failed) never beats a real one.
  return jnp.where(jnp.isnan(area), -jnp.inf, area)


def best_candidate(candidates, evaluate: Callable, gamma_shape, dtype, *,
                   together: int = 1, sizes: tuple[int, ...] | None = None
                   ) -> Best:
  """The candidate whose ``evaluate`` gives the largest area.

  Args:
    candidates: [c] int candidate values (traced).
    evaluate: ``(value [], index [], size) -> (validation area [], predicted
      loss on the test prompts gamma_shape)``, where ``size`` is the static
      padded size the step must hold ``value`` in.
    gamma_shape, dtype: of the predicted loss.
    together: candidates evaluated at once (vmapped); 1 visits them in
      turn. Must be 1 when ``sizes`` has more than one entry.
    sizes: ascending static padded sizes, the last at least the largest
      candidate (e.g. :func:`size_classes`); each candidate runs in the
      smallest that holds it. None: ``evaluate`` gets ``size=None`` and
      pads to its own largest.

  Returns:
    The :class:`Best`; ties keep the earlier candidate, and a NaN area
    counts as the smallest (index 0 when every area is NaN).
  """
  candidates = jnp.asarray(candidates, jnp.int32)
  indices = jnp.arange(candidates.shape[0], dtype=jnp.int32)
  together = checks.positive_int("together", together)
  sizes = tuple(sizes) if sizes is not None else (None,)
  if len(sizes) > 1 and together > 1:
    # Under vmap the branch index is batched and every branch would run.
    raise ValueError("best_candidate: sizes with more than one entry need "
                     f"together=1, got together={together}")

  def run(value, index):
    if len(sizes) == 1:
      return evaluate(value, index, sizes[0])
    branch = jnp.minimum(jnp.searchsorted(jnp.asarray(sizes, jnp.int32), value),
                         len(sizes) - 1)
    branches = [lambda v, i, s=s: evaluate(v, i, s) for s in sizes]
    return jax.lax.switch(branch, branches, value, index)

  if together > 1:
    areas, gammas = jax.lax.map(lambda item: run(*item), (candidates, indices),
                                batch_size=together)
    best = jnp.argmax(_score(areas)).astype(jnp.int32)
    return Best(areas[best], gammas[best], candidates[best], best)

  def step(best: Best, item):
    value, index = item
    area, gamma = run(value, index)
    better = (_score(area) > _score(best.area)) | (index == 0)
    return Best(jnp.where(better, area, best.area),
                jnp.where(better, gamma, best.gamma),
                jnp.where(better, value, best.value),
                jnp.where(better, index, best.index)), None

  start = Best(jnp.array(-jnp.inf, dtype), jnp.zeros(gamma_shape, dtype),
               jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
  best, _ = jax.lax.scan(step, start, (candidates, indices))
  return best
