"""uniroute_jax: universal LLM routing (UniRoute, arXiv 2502.08773) in JAX.

The pipeline, one module a step: ``kmeans`` clusters training prompts,
``features`` turns each LLM's validation errors into a per-cluster feature
vector Psi, ``routing`` sends each prompt to argmin gamma + lambda * cost,
``metrics`` scores the resulting deferral curve; ``baselines`` holds the
paper's comparison routers and ``protocol`` its evaluation.
"""

from uniroute_jax import baselines, metrics, protocol, report, router
from uniroute_jax.baselines import (
    CheckpointSelection, ParetoHull, fit_matrix_factorization, fit_mlp,
    knn_predicted_loss, knn_predicted_loss_grid, predict_loss, zero_router_curve,
    zero_router_hull, zero_router_route)
from uniroute_jax.data import (
    load_embedllm, load_embeddings, load_long, load_routerbench, make_synthetic,
    missing_labels)
from uniroute_jax.features import ClusterErrors, cluster_errors
from uniroute_jax.cluster_map import (
    ClusterMap, FittedClusterMap, apply_cluster_map, cluster_map_loss,
    fit_cluster_map, learned_map_predicted_loss)
from uniroute_jax.clustering import (
    Assignment, KMeansResult, assign_clusters, kmeans, kmeans_plusplus)
from uniroute_jax.metrics import (
    DeferralCurve, DeferralMetrics, Envelope, curve_from_points, deferral_curve,
    deferral_metrics, upper_envelope)
from uniroute_jax.protocol import evaluate
from uniroute_jax.router import Router
from uniroute_jax.routing import (
    RoutingResult, SwitchPath, choose_models, predicted_loss, route, switch_path)
from uniroute_jax.types import RoutingData

__version__ = "0.1.0"

__all__ = [
    "Assignment", "CheckpointSelection", "ClusterErrors", "ClusterMap", "FittedClusterMap",
    "apply_cluster_map", "cluster_map_loss", "fit_cluster_map",
    "learned_map_predicted_loss", "DeferralCurve", "DeferralMetrics",
    "Envelope", "KMeansResult", "ParetoHull", "RoutingData", "RoutingResult",
    "Router", "SwitchPath", "assign_clusters", "baselines", "choose_models",
    "cluster_errors", "curve_from_points", "fit_matrix_factorization", "fit_mlp", "deferral_curve", "deferral_metrics",
    "evaluate", "load_embedllm", "load_embeddings", "load_long",
    "load_routerbench", "missing_labels", "report",
    "kmeans", "kmeans_plusplus", "knn_predicted_loss", "knn_predicted_loss_grid",
    "make_synthetic", "predict_loss",
    "metrics", "predicted_loss", "protocol", "route", "router", "switch_path",
    "upper_envelope", "zero_router_curve", "zero_router_hull",
    "zero_router_route",
]
