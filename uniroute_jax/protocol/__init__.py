"""The evaluation protocol of the paper (section 7, App. F), batched over trials.

One trial: prompts are split into train / validation / test and the LLMs
into a training pool and an unseen test pool. Training prompts carry labels
of the training LLMs only; validation prompts carry labels of both pools;
test prompts with the test LLMs are used only to score the routers. Every
hyper-parameter (K clusters, k neighbours) is chosen per trial from the
training LLMs alone (App. F.1).

The package follows that pipeline, one concept a file:

- ``splits``: which prompts and LLMs each trial uses (:func:`make_trials`);
- ``trials``: the arrays one trial's routers see (:class:`TrialData`) and
  the two scores they are judged by (:func:`validation_area`,
  :func:`test_curve`);
- ``search``: a hyper-parameter search as one traced computation over
  candidates padded to the largest;
- ``methods``: the routers, as values (:class:`KMeansRouter`, ...);
- ``running``: compiled batches of trials, devices, threads
  (:func:`run_trials`);
- ``statistics``: mean curves, intervals, sign tests (:func:`summarise`);
- ``onboarding``: how the Area grows with the prompts a new LLM is run on,
  and which prompts to ask it (:func:`onboarding_curve`);
- ``evaluate``: all of it in one call (:func:`evaluate`).
"""

from uniroute_jax.protocol.evaluate import Evaluation, evaluate
from uniroute_jax.protocol.methods import (
    BUILT_IN, DEFAULT_METHODS, KNN, KMeansRouter, LearnedMapRouter,
    MatrixFactorizationRouter, Method, MethodOutput, MLPRouter, Oracle,
    ZeroRouter, as_method, as_methods, default_cluster_grid,
    default_neighbor_grid, method_dataclass)
from uniroute_jax.protocol.onboarding import (
    OnboardingCurve, SELECTIONS, onboarding_curve)
from uniroute_jax.protocol.running import (
    EXCESS_LAMBDAS, PoolPoints, TrialMetrics, dataset_arrays, run_batch,
    run_trials, trial_mesh)
from uniroute_jax.protocol.search import Best, best_candidate
from uniroute_jax.protocol.splits import (
    Split, make_split, make_trials, model_split_sizes, split_sizes)
from uniroute_jax.protocol.statistics import (
    MethodSummary, SignTest, area_interval, area_tie_tolerance, sign_test,
    summarise)
from uniroute_jax.protocol.trials import (
    DatasetArrays, TrialData, gather_trial, scored_test_prompts, test_curve,
    validation_area)

__all__ = [
    "BUILT_IN", "Best", "DatasetArrays", "DEFAULT_METHODS", "EXCESS_LAMBDAS",
    "Evaluation", "KMeansRouter", "KNN",
    "LearnedMapRouter", "MLPRouter", "MatrixFactorizationRouter", "Method",
    "MethodOutput", "MethodSummary", "OnboardingCurve", "Oracle",
    "SELECTIONS", "onboarding_curve", "PoolPoints", "SignTest",
    "Split", "TrialData", "TrialMetrics", "ZeroRouter", "as_method",
    "as_methods", "best_candidate", "dataset_arrays", "default_cluster_grid",
    "default_neighbor_grid", "evaluate", "gather_trial", "make_split",
    "make_trials", "method_dataclass", "model_split_sizes", "run_batch",
    "run_trials", "scored_test_prompts", "sign_test", "split_sizes",
    "summarise", "test_curve", "area_interval", "area_tie_tolerance",
    "trial_mesh", "validation_area",
]
