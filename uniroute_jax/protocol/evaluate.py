"""The paper's evaluation in one call: splits, every method on every trial,
mean curves and sign tests."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np

from uniroute_jax import checks
from uniroute_jax.protocol.methods import DEFAULT_METHODS, Method, as_methods
from uniroute_jax.protocol.running import (PoolPoints, check_excess_lambdas,
                                           run_trials)
from uniroute_jax.protocol.splits import Split, make_trials
from uniroute_jax.protocol.statistics import MethodSummary, summarise
from uniroute_jax.protocol.trials import scored_test_prompts
from uniroute_jax.types import RoutingData


class Evaluation(NamedTuple):
  """Everything :func:`evaluate` measured.

  Attributes:
    methods: {name: MethodSummary}, in the order evaluated.
    best: the best non-reference method's name (None when there is none).
    splits: the trials' :class:`~uniroute_jax.protocol.Split`.
    alpha: level of the sign tests.
    pool: the test LLMs' own points per trial.
    excess_lambdas: [L] the lambdas (relative-cost units) of every
      method's excess risks.
    scored_test_prompts: [T] the test prompts each trial scores, those
      labelled for every test LLM (:func:`scored_test_prompts`).
  """

  methods: dict[str, MethodSummary]
  best: str | None
  splits: Split
  alpha: float
  pool: PoolPoints
  excess_lambdas: np.ndarray
  scored_test_prompts: np.ndarray


def evaluate(key, data: RoutingData, *, num_trials: int = 10,
             methods: Sequence[Method | str] = DEFAULT_METHODS,
             val_frac=0.1, test_frac=0.3, test_model_frac=1 / 3,
             fixed_pool: bool = False, curve_points: int = 1001, alpha: float = 0.01,
             batch_size: int = 8, excess_lambdas=None,
             on_progress: Callable[[int, int], None] | None = None,
             mesh: jax.sharding.Mesh | None = None) -> Evaluation:
  """The paper's evaluation: many random trials, unseen test LLMs, mean curves.

  Args:
    key: a ``jax.random.key``: splits and every method's randomness derive
      from it.
    data: the dataset (validated here, on the host).
    num_trials: independent trials (the paper uses 400).
    methods: method values (e.g. ``KMeansRouter(clusters=(6,))``) or
      built-in names (:data:`~uniroute_jax.protocol.BUILT_IN`); each
      method's own options (candidate grids, shrinkage, training) are its
      fields, with their defaults in one place, the method's class.
    val_frac, test_frac: prompt fractions (the rest trains); the paper uses
      0.1 / 0.3, and 0.01 validation for RouterBench.
    test_model_frac: fraction of LLMs held out as the unseen test pool.
    fixed_pool: route among every LLM of the data instead, each seen in
      training (see :func:`~uniroute_jax.protocol.make_trials`).
    curve_points: size of the relative-cost grid of the mean curves.
    alpha: level of the sign tests.
    batch_size: trials per compiled call (memory grows with it).
    excess_lambdas: lambdas, in relative-cost units, at which every trial's
      excess risk over the per-prompt oracle is measured (and, for cluster
      routers, split into estimation and approximation); default
      :data:`~uniroute_jax.protocol.EXCESS_LAMBDAS`.
    on_progress: called with (trials done, trials in all) after each batch.
    mesh: optional one-axis device mesh to split each batch's trials over
      (see :func:`~uniroute_jax.protocol.run_trials`).
  """
  checks.prng_key("key", key)
  data.validate(labelled_models=True)
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
  excess_lambdas = check_excess_lambdas(excess_lambdas, np.float64)
  methods = as_methods(methods)
  split_key, run_key = jax.random.split(key)
  splits = make_trials(split_key, num_trials, data.num_prompts, data.num_models,
                       val_frac=val_frac, test_frac=test_frac,
                       test_model_frac=test_model_frac,
                       fixed_pool=fixed_pool)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  # Resolve (and so check) every method before any work.
  methods = tuple(m.resolve(n_train, n_val) for m in methods)
  data = data._replace(embeddings=np.asarray(data.embeddings),
                       loss=np.asarray(data.loss), mask=np.asarray(data.mask),
                       cost=np.asarray(data.cost))
  results, pool = run_trials(run_key, data, splits, methods=methods,
                             curve_points=curve_points, batch_size=batch_size,
                             excess_lambdas=excess_lambdas,
                             on_progress=on_progress, mesh=mesh)
  summaries, best = summarise(results, methods, alpha=alpha)
  return Evaluation(summaries, best, splits, alpha, pool, excess_lambdas,
                    scored_test_prompts(data.mask, splits))
