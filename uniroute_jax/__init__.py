"""uniroute_jax: universal LLM routing (UniRoute, arXiv 2502.08773) in JAX.

The pipeline, one module a step: ``clustering`` clusters training prompts,
``features`` turns each LLM's validation errors into a per-cluster feature
vector Psi, ``routing`` sends each prompt to argmin gamma + lambda * cost,
``metrics`` scores the resulting deferral curve. ``cluster_map`` learns a
soft map Phi(x) (trained by the shared ``learn`` stack), ``baselines`` holds
the paper's comparison routers, ``maps`` and ``router`` make a routable
object of a map and a pool (saved by ``io``), ``protocol`` runs the
paper's evaluation, and ``fitting`` fits a router to a pool one has, its
map and K chosen on held-out prompts. ``risk`` measures a router's excess
risk over the per-prompt oracle and splits it into estimation and
approximation. ``checks`` says how arguments are checked; ``threads`` runs
compiled calls from several host threads.
"""

import importlib
from typing import Any

# Submodules and names are imported on first use (PEP 562), so that
# importing the package, as the command line does before it can catch
# Ctrl-C or print a usage error, does not import JAX.
_SUBMODULES = ("baselines", "blocks", "checks", "cli", "cluster_map",
               "clustering", "data", "encoder", "features", "fitting", "io", "learn",
               "maps",
               "metrics", "protocol", "report", "risk", "router", "routing",
               "threads", "types")
_NAMES = {
    "uniroute_jax.baselines": (
        "LossPredictor", "ParetoHull", "fit_matrix_factorization", "fit_mlp",
        "knn_predicted_loss", "knn_predicted_loss_grid",
        "knn_predicted_loss_grid_from_lists", "neighbor_lists", "predict_loss",
        "zero_router_curve", "zero_router_hull", "zero_router_route"),
    "uniroute_jax.checks": ("checked",),
    "uniroute_jax.cluster_map": (
        "ClusterMap", "ClusterMapConfig", "apply_cluster_map",
        "cluster_map_loss", "fit_cluster_map", "learned_map_predicted_loss"),
    "uniroute_jax.clustering": (
        "Assignment", "KMeansResult", "assign_clusters", "kmeans",
        "kmeans_plusplus"),
    "uniroute_jax.data": (
        "load_embedllm", "load_embeddings", "load_long", "load_routerbench",
        "make_synthetic", "missing_labels", "read_prompts"),
    "uniroute_jax.features": ("ClusterErrors", "ClusterPosterior",
                              "beta_quantile", "cluster_errors",
                              "cluster_posterior", "labelling_ranks"),
    "uniroute_jax.fitting": ("FitReport", "FittedRouter", "fit_router"),
    "uniroute_jax.learn": ("CheckpointSelection", "FittedModel"),
    "uniroute_jax.maps": ("CentroidMap", "ClusterMapping", "LearnedMap"),
    "uniroute_jax.metrics": (
        "DeferralCurve", "DeferralMetrics", "Envelope", "curve_from_points",
        "deferral_curve", "deferral_metrics", "labelled_area", "upper_envelope"),
    "uniroute_jax.protocol": ("evaluate",),
    "uniroute_jax.risk": (
        "AreaDecomposition", "ExcessDecomposition", "ExcessRisk",
        "ImpurityBound", "NeighborhoodError", "area_decomposition",
        "excess_decomposition", "excess_risk", "impurity_bound",
        "impurity_bounds", "neighborhood_error"),
    "uniroute_jax.router": ("Representatives", "Router"),
    "uniroute_jax.routing": (
        "OperatingPoint", "RoutingResult", "SwitchPath", "choose_models",
        "operating_point", "predicted_loss", "route", "switch_path"),
    "uniroute_jax.types": ("RoutingData",),
}
_MODULE_OF = {name: module for module, names in _NAMES.items()
              for name in names}


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    value = importlib.import_module(f"uniroute_jax.{name}")
  elif name in _MODULE_OF:
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
  else:
    raise AttributeError(f"module 'uniroute_jax' has no attribute {name!r}")
  globals()[name] = value   # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


__version__ = "0.2.0"

__all__ = [
    "Assignment", "CentroidMap", "CheckpointSelection", "ClusterErrors",
    "ClusterMap", "ClusterMapConfig", "ClusterMapping", "DeferralCurve",
    "DeferralMetrics", "Envelope", "FittedModel", "KMeansResult", "LearnedMap",
    "LossPredictor", "ParetoHull", "Router", "RoutingData", "RoutingResult",
    "SwitchPath", "apply_cluster_map", "assign_clusters", "baselines",
    "checked", "checks", "choose_models", "cluster_errors", "cluster_map_loss",
    "curve_from_points", "deferral_curve", "deferral_metrics", "evaluate",
    "fit_cluster_map", "fit_matrix_factorization", "fit_mlp", "io",
    "kmeans", "kmeans_plusplus", "knn_predicted_loss", "knn_predicted_loss_grid",
    "knn_predicted_loss_grid_from_lists", "labelled_area", "learn",
    "learned_map_predicted_loss", "load_embedllm", "load_embeddings",
    "load_long", "load_routerbench", "make_synthetic", "maps", "metrics",
    "missing_labels", "neighbor_lists", "predict_loss", "predicted_loss",
    "read_prompts", "encoder", "FitReport", "FittedRouter", "fit_router",
    "fitting", "Representatives", "OperatingPoint", "operating_point",
    "protocol", "report", "route", "router", "switch_path", "upper_envelope",
    "zero_router_curve", "zero_router_hull", "zero_router_route",
    "risk", "AreaDecomposition", "ExcessDecomposition", "ExcessRisk",
    "ImpurityBound", "NeighborhoodError", "area_decomposition",
    "excess_decomposition", "excess_risk", "impurity_bound", "impurity_bounds",
    "neighborhood_error", "ClusterPosterior", "beta_quantile",
    "cluster_posterior", "labelling_ranks",
]
