"""Baselines of the paper: ZeroRouter, K-NN and the clairvoyant upper bounds."""

from uniroute_jax.baselines.clairvoyant import (
    LossPredictor, LossPredictorConfig, fit_matrix_factorization, fit_mlp,
    predict_loss, predictor_loss)
from uniroute_jax.baselines.knn import (
    knn_predicted_loss, knn_predicted_loss_grid,
    knn_predicted_loss_grid_from_lists, neighbor_lists)
from uniroute_jax.baselines.zero_router import (
    ParetoHull, zero_router_curve, zero_router_hull, zero_router_route)

__all__ = ["LossPredictor", "LossPredictorConfig", "ParetoHull",
           "fit_matrix_factorization", "fit_mlp", "knn_predicted_loss",
           "knn_predicted_loss_grid", "knn_predicted_loss_grid_from_lists",
           "neighbor_lists", "predict_loss", "predictor_loss",
           "zero_router_curve", "zero_router_hull", "zero_router_route"]
