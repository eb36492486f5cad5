"""Hyper-parameter search as one traced computation over candidates.

Every candidate (a number of clusters K, of neighbours k, a rank d) runs
through the same compiled step, padded to the largest candidate with masks
(``kmeans(active_clusters=...)``, ``fit_cluster_map(cluster_mask=...)``,
``fit_matrix_factorization(active_rank=...)``): a ``lax.scan`` over the
candidate values keeps the best so far. The program is one step long
whatever the number of candidates, so compile time and program size do not
grow with the grid, and the candidate values themselves are traced.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax.types import Array


class Best(NamedTuple):
  """The candidate with the largest validation area."""

  area: Array    # []
  gamma: Array   # its predicted loss on the test prompts
  value: Array   # [] int32 its hyper-parameter
  index: Array   # [] int32 its position in the candidates


def best_candidate(candidates, evaluate: Callable, gamma_shape, dtype) -> Best:
  """The candidate whose ``evaluate`` gives the largest area.

  Args:
    candidates: [c] int candidate values (traced).
    evaluate: (candidate value [], its index []) -> (validation area [],
      predicted loss on the test prompts ``gamma_shape``).
    gamma_shape, dtype: of the predicted loss.

  Returns:
    The :class:`Best`; ties (and NaN areas) keep the earlier candidate.
  """
  candidates = jnp.asarray(candidates, jnp.int32)

  def step(best: Best, item):
    value, index = item
    area, gamma = evaluate(value, index)
    better = (area > best.area) | (index == 0)
    return Best(jnp.where(better, area, best.area),
                jnp.where(better, gamma, best.gamma),
                jnp.where(better, value, best.value),
                jnp.where(better, index, best.index)), None

  start = Best(jnp.array(-jnp.inf, dtype), jnp.zeros(gamma_shape, dtype),
               jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
  best, _ = jax.lax.scan(step, start,
                         (candidates, jnp.arange(candidates.shape[0], dtype=jnp.int32)))
  return best
