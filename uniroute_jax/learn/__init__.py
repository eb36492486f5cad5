"""The one training stack of the library's Optax / Flax NNX models.

The learned cluster map (``cluster_map``) and the clairvoyant loss
predictors (``baselines.clairvoyant``) are both a module built from a
hashable configuration and trained by :func:`fit_model`: Adam over shuffled
mini-batches in one ``lax.scan``, with optional checkpoint selection on
held-out prompts (:class:`CheckpointSelection`), returning a
:class:`FittedModel`.
"""

from uniroute_jax.learn.models import (
    FittedModel, Mask, ModelConfig, fit_model, from_module, graphdef, model_state)
from uniroute_jax.learn.training import CheckpointSelection

__all__ = ["CheckpointSelection", "FittedModel", "Mask", "ModelConfig",
           "fit_model", "from_module", "graphdef", "model_state"]
