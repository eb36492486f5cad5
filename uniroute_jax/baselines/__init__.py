"""Baselines of the paper: ZeroRouter, K-NN (and, later, the clairvoyant ones)."""

from uniroute_jax.baselines.knn import knn_predicted_loss, knn_predicted_loss_grid
from uniroute_jax.baselines.zero_router import (
    ParetoHull, zero_router_curve, zero_router_hull, zero_router_route)

__all__ = ["ParetoHull", "knn_predicted_loss", "knn_predicted_loss_grid",
           "zero_router_curve",
           "zero_router_hull", "zero_router_route"]
