"""Prompt text to embeddings: the built-in all-MiniLM-L6-v2 encoder in JAX."""

from uniroute_jax.encoder.cache import EmbeddingCache, default_cache_path
from uniroute_jax.encoder.minilm import BertConfig, encode, load_weights
from uniroute_jax.encoder.text import (NAME, TRUNCATION_SIDES, EmbedderId,
                                       MiniLM, default_model_dir, embedder_id)

__all__ = ["BertConfig", "EmbedderId", "EmbeddingCache", "MiniLM", "NAME",
           "TRUNCATION_SIDES", "default_cache_path", "default_model_dir",
           "embedder_id", "encode", "load_weights"]
