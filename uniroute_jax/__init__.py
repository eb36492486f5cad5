"""uniroute_jax: universal LLM routing (UniRoute, arXiv 2502.08773) in JAX.

The pipeline, one module a step: ``clustering`` clusters training prompts,
``features`` turns each LLM's validation errors into a per-cluster feature
vector Psi, ``routing`` sends each prompt to argmin gamma + lambda * cost,
``metrics`` scores the resulting deferral curve. ``cluster_map`` learns a
soft map Phi(x) (trained by the shared ``learn`` stack), ``baselines`` holds
the paper's comparison routers, ``maps`` and ``router`` make a routable
object of a map and a pool (saved by ``io``), and ``protocol`` runs the
paper's evaluation. ``checks`` says how arguments are checked.
"""

from uniroute_jax import (baselines, checks, io, learn, maps, metrics, protocol,
                          report, router)
from uniroute_jax.baselines import (
    LossPredictor, ParetoHull, fit_matrix_factorization, fit_mlp,
    knn_predicted_loss, knn_predicted_loss_grid, predict_loss, zero_router_curve,
    zero_router_hull, zero_router_route)
from uniroute_jax.checks import checked
from uniroute_jax.cluster_map import (
    ClusterMap, ClusterMapConfig, apply_cluster_map, cluster_map_loss,
    fit_cluster_map, learned_map_predicted_loss)
from uniroute_jax.clustering import (
    Assignment, KMeansResult, assign_clusters, kmeans, kmeans_plusplus)
from uniroute_jax.data import (
    load_embedllm, load_embeddings, load_long, load_routerbench, make_synthetic,
    missing_labels)
from uniroute_jax.features import ClusterErrors, cluster_errors
from uniroute_jax.learn import CheckpointSelection, FittedModel
from uniroute_jax.maps import CentroidMap, ClusterMapping, LearnedMap
from uniroute_jax.metrics import (
    DeferralCurve, DeferralMetrics, Envelope, curve_from_points, deferral_curve,
    deferral_metrics, labelled_area, upper_envelope)
from uniroute_jax.protocol import evaluate
from uniroute_jax.router import Router
from uniroute_jax.routing import (
    RoutingResult, SwitchPath, choose_models, predicted_loss, route, switch_path)
from uniroute_jax.types import RoutingData

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
    "labelled_area", "learn", "learned_map_predicted_loss", "load_embedllm",
    "load_embeddings", "load_long", "load_routerbench", "make_synthetic",
    "maps", "metrics", "missing_labels", "predict_loss", "predicted_loss",
    "protocol", "report", "route", "router", "switch_path", "upper_envelope",
    "zero_router_curve", "zero_router_hull", "zero_router_route",
]
