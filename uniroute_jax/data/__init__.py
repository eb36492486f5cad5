"""Data sources; each returns a :class:`uniroute_jax.types.RoutingData`.

Loaders never drop a prompt, model or label: a label that is absent from the
source stays in the data with ``mask`` False. :func:`missing_labels` reports
how many there are per model.
"""

import numpy as np

from uniroute_jax.data.embedllm import load_embedllm
from uniroute_jax.data.embeddings import (embedder_of, load_embeddings,
                                          read_embeddings)
from uniroute_jax.data.long import load_long
from uniroute_jax.data.prompts import read_prompts
from uniroute_jax.data.routerbench import load_routerbench
from uniroute_jax.data.synthetic import make_synthetic

__all__ = ["embedder_of", "load_embedllm", "load_embeddings", "load_long", "load_routerbench",
           "make_synthetic", "missing_labels", "read_embeddings", "read_prompts"]


def missing_labels(data) -> dict[str, int]:
  """Number of missing labels (``mask`` False) of each model, by model name.

  Args:
    data: a :class:`uniroute_jax.types.RoutingData`.

  Returns:
    ``{model name: count}`` for every model, zeros included, in model order.
  """
  missing = (~np.asarray(data.mask, bool)).sum(axis=0)
  return {name: int(k) for name, k in zip(data.model_names, missing)}
