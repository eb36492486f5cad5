"""The built-in encoder on the command line: its flags, and prompt text
turned into embeddings through the on-disk cache."""

from __future__ import annotations

import argparse
import os
import sys

from uniroute_jax.cli import common

DEFAULT_TRUNCATION, DEFAULT_MAX_LENGTH, DEFAULT_BATCH_SIZE = "tail", 256, 64


def add_encoder_arguments(p: argparse.ArgumentParser, *, from_router=False
                          ) -> None:
  """--truncation, --max-length, --batch-size, --cache / --no-cache.

  Unset settings stay None, so that a command can tell whether they were
  given; with ``from_router`` they default to those the router records
  (prompts must be embedded as the router's were)."""
  p.add_argument("--truncation", choices=("tail", "head"), default=None,
                 help="which end of a long prompt to keep ("
                      + ("default: the router's" if from_router else
                         f"default {DEFAULT_TRUNCATION}: its last word "
                         "pieces, where the question is") + ")")
  p.add_argument("--max-length", type=common.positive_int, default=None,
                 help="tokens per prompt, at most 512 ("
                      + ("default: the router's" if from_router else
                         f"default {DEFAULT_MAX_LENGTH}") + ")")
  p.add_argument("--batch-size", type=common.positive_int, default=None,
                 help="prompts per device call when embedding (default 64)")
  cache = p.add_mutually_exclusive_group()
  cache.add_argument("--cache", metavar="FILE", default=None,
                     help="embedding cache keyed by text and encoder settings "
                          "(default: embeddings.sqlite under $UNIROUTE_CACHE "
                          "or the user's cache folder)")
  cache.add_argument("--no-cache", action="store_true",
                     help="embed every prompt anew and store nothing")


ENCODER_FLAGS = ("--truncation", "--max-length", "--batch-size", "--cache",
                 "--no-cache")


def given_encoder_flags(args) -> list[str]:
  """The encoder flags the user set."""
  return [flag for flag in ENCODER_FLAGS
          if getattr(args, flag[2:].replace("-", "_"), None) not in (None, False)]


def check_encoder_arguments(args, *, others: dict[str, str]) -> None:
  """Fails before any work on an unusable --max-length or --cache; the cache
  must not be any of ``others`` ({flag: path}, the inputs and outputs)."""
  if args.max_length is not None and not 3 <= args.max_length <= 512:
    raise ValueError(f"--max-length must be from 3 ([CLS], one word piece, "
                     f"[SEP]) to 512 (the model's positions), got "
                     f"{args.max_length}")
  if args.cache is None:
    return
  cache = common.real_path(args.cache)
  for flag, path in others.items():
    if path is not None and cache == common.real_path(path):
      raise ValueError(f"--cache and {flag} name the same file {args.cache}")
  if os.path.isdir(args.cache):
    raise ValueError(f"--cache: {args.cache} is a folder; name a file")
  folder = os.path.dirname(cache)
  if not os.path.isdir(folder):
    raise ValueError(f"--cache: the folder {os.path.dirname(args.cache)} does "
                     "not exist")
  from uniroute_jax.encoder.cache import is_cache_file
  if os.path.isfile(args.cache) and not is_cache_file(args.cache):
    raise ValueError(f"--cache: {args.cache} is not an embedding cache (an "
                     "SQLite file of its own); name another file")


class TextEmbedder:
  """``embed(texts) -> [n, 384]`` with the built-in MiniLM, through the cache
  unless --no-cache; ``identity`` is what a router records of it."""

  def __init__(self, args, *, truncation=None, max_length=None):
    from uniroute_jax import encoder as encoders
    self._args = args
    self._settings = dict(
        truncation=truncation or args.truncation or DEFAULT_TRUNCATION,
        max_length=max_length or args.max_length or DEFAULT_MAX_LENGTH,
        batch_size=args.batch_size or DEFAULT_BATCH_SIZE)
    self._encoder = None
    # Known before the model loads: only the weights are hashed.
    self.identity = encoders.embedder_id(
        truncation=self._settings["truncation"],
        max_length=self._settings["max_length"])._asdict()
    self.hits = 0

  def _loaded(self):
    if self._encoder is None:
      from uniroute_jax import encoder as encoders
      print("  loading the encoder ...", file=sys.stderr, flush=True)
      self._encoder = encoders.MiniLM(**self._settings)
    return self._encoder

  def __call__(self, texts):
    from uniroute_jax import encoder as encoders
    texts = list(texts)
    print(f"  embedding {len(texts)} prompt(s) ...", file=sys.stderr,
          flush=True)
    progress = common.progress_printer(
        "prompts", quiet_up_to=self._settings["batch_size"])
    embed = lambda fresh: self._loaded()(fresh, on_progress=progress)
    if self._args.no_cache:
      return embed(texts)
    with encoders.EmbeddingCache(self._args.cache) as cache:
      vectors, hits = cache.embed(embed, self.identity, texts)
    self.hits += hits
    return vectors

  def describe(self) -> str:
    return (f"{self.identity['name']}, {self.identity['truncation']} "
            f"truncation at {self.identity['max_length']} tokens")

