"""The data flags the commands share: a dataset in any supported format
(its text embedded when no embeddings are given), its labels, and
embeddings files of prompts to route."""

from __future__ import annotations

import argparse
import warnings
from typing import Any, NamedTuple

from uniroute_jax.cli import common, encoding

FORMATS = ("routerbench", "embedllm", "long", "synthetic")
SYNTHETIC_PROMPTS, SYNTHETIC_LLMS = 5000, 12

# The formats each data flag applies to; any other use is an error.
FORMAT_FLAGS = {
    "--data": ("routerbench", "embedllm", "long"),
    "--embeddings": ("routerbench", "embedllm", "long"),
    "--costs": ("embedllm", "long"),
    "--cost-column": ("long",), "--score-column": ("long",),
    "--prompt-column": ("long",), "--model-column": ("long",),
    "--text-column": ("long",),
    "--prompts": ("synthetic",), "--llms": ("synthetic",),
}

_WHY_NOT = {
    ("--costs", "routerbench"): "its CSVs hold a cost for every prompt",
}


def add_data_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--format", choices=FORMATS, required=True,
                 help="layout of --data")
  p.add_argument("--data", metavar="PATH",
                 help="RouterBench CSV file or folder; EmbedLLM folder; "
                      "long-format CSV/Parquet (not for synthetic)")
  p.add_argument("--embeddings", metavar="FILE",
                 help="prompt embeddings (.npy in prompt order, or .npz with "
                      "ids); default: the one beside the data, or for "
                      "--format long the prompts' text embedded with the "
                      "built-in encoder")
  p.add_argument("--costs", metavar="FILE",
                 help="per-LLM costs CSV (model_name and a number); embedllm "
                      "and long only")
  p.add_argument("--cost-column", metavar="NAME",
                 help="long only: the column of per-row costs (instead of "
                      "--costs)")
  p.add_argument("--score-column", metavar="NAME",
                 help="long only: the column of scores in [0, 1], empty or "
                      "nan where missing (default: the first of score, "
                      "correct, label)")
  p.add_argument("--prompt-column", metavar="NAME",
                 help="long only: the column of prompt ids (default prompt_id)")
  p.add_argument("--model-column", metavar="NAME",
                 help="long only: the column of LLM names (default model)")
  p.add_argument("--text-column", metavar="NAME",
                 help="long only, without --embeddings: the column of prompt "
                      "text to embed (default: the prompt column)")
  p.add_argument("--prompts", type=common.positive_int, default=None,
                 help=f"synthetic only: number of prompts (default "
                      f"{SYNTHETIC_PROMPTS})")
  p.add_argument("--llms", type=common.positive_int, default=None,
                 help=f"synthetic only: number of LLMs (default "
                      f"{SYNTHETIC_LLMS})")


def check_data_flags(args) -> None:
  """Fails when a data flag does not apply to ``--format``."""
  for flag, formats in FORMAT_FLAGS.items():
    if getattr(args, flag[2:].replace("-", "_"), None) is None:
      continue
    if args.format not in formats:
      why = _WHY_NOT.get((flag, args.format))
      raise ValueError(
          f"{flag} does not apply to --format {args.format}"
          + (f": {why}" if why else
             f" (only to --format {' or '.join(formats)})"))
  if args.format != "synthetic" and not args.data:
    raise ValueError(f"--data is required with --format {args.format}")
  embeds_text = args.format == "long" and args.embeddings is None
  if getattr(args, "text_column", None) is not None and not embeds_text:
    raise ValueError("--text-column applies only when the text is embedded "
                     "(--format long without --embeddings)")
  given = encoding.given_encoder_flags(args)
  if given and not embeds_text:
    raise ValueError(f"{given[0]} applies only when prompt text is embedded "
                     "(--format long without --embeddings)")


def data_source(args) -> str:
  """The flag that gave the data, as a message names it: ``--data PATH``,
  or for generated data the flags that sized it."""
  if args.format == "synthetic":
    return (f"--format synthetic (--prompts "
            f"{args.prompts or SYNTHETIC_PROMPTS}, --llms "
            f"{args.llms or SYNTHETIC_LLMS})")
  return f"--data {args.data}"


class Loaded(NamedTuple):
  """A dataset and the identity of the encoder of its embeddings (None
  when unknown)."""

  data: Any
  embedder: dict | None


def load(args) -> Loaded:
  """The dataset of --format and --data; a long table without --embeddings
  has its prompt text embedded by the built-in encoder (cached)."""
  import jax
  from uniroute_jax import data as loaders
  check_data_flags(args)
  if args.format == "synthetic":
    prompts = args.prompts or SYNTHETIC_PROMPTS
    llms = args.llms or SYNTHETIC_LLMS
    # Embeddings (32 floats a prompt), then loss, mask and the generator's
    # draws: a few [prompts, llms] arrays.
    common.fits_in_memory("--prompts / --llms", f"{prompts} / {llms}",
                          4 * prompts * (32 + 8 * llms),
                          f"{prompts} prompts x {llms} LLMs")
    return Loaded(loaders.make_synthetic(
        jax.random.key(args.seed), num_prompts=prompts, num_models=llms), None)
  if args.format == "routerbench":
    return Loaded(loaders.load_routerbench(args.data,
                                           embeddings=args.embeddings),
                  _recorded_embedder(args.embeddings))
  if args.format == "embedllm":
    return Loaded(loaders.load_embedllm(args.data, embeddings=args.embeddings,
                                        costs=args.costs),
                  _recorded_embedder(args.embeddings))
  columns = {name: getattr(args, name) for name in
             ("prompt_column", "model_column", "score_column", "cost_column",
              "text_column")
             if getattr(args, name) is not None}
  if args.embeddings is not None:
    return Loaded(loaders.load_long(args.data, embeddings=args.embeddings,
                                    costs=args.costs, **columns),
                  _recorded_embedder(args.embeddings))
  encoding.check_encoder_arguments(
      args, others={"--data": args.data, **common.output_flags(args)})
  embedder = encoding.TextEmbedder(args)
  return Loaded(loaders.load_long(args.data, embeddings=embedder,
                                  costs=args.costs, **columns),
                embedder.identity)


def _recorded_embedder(path) -> dict | None:
  if path is None:
    return None
  from uniroute_jax.data import embedder_of
  return embedder_of(path)


def labels(args, data) -> dict[str, int]:
  """The missing labels of each LLM that has some; an LLM without any label
  is an error (nothing could represent it)."""
  import numpy as np
  from uniroute_jax.data import missing_labels
  missing = missing_labels(data)
  unlabelled = [name for name, count in missing.items()
                if count == data.num_prompts]
  if unlabelled:
    where = f"--data {args.data}" if args.data else "the data"
    raise ValueError(
        f"{where}: LLM {unlabelled[0]!r} has no label at all"
        + (f" (nor have {len(unlabelled) - 1} other LLM(s))"
           if len(unlabelled) > 1 else "")
        + "; label some of its prompts or remove it")
  nobody = int(np.sum(~np.asarray(data.mask, bool).any(axis=1)))
  if nobody and args.format != "synthetic":   # the user's own data only
    warnings.warn(
        f"{nobody} of {data.num_prompts} prompts have no label from any LLM: "
        "they shape the clusters but measure no LLM, also where they land "
        "among the representative or held-out prompts; leave them out of "
        "the data unless that is meant")
  return {name: count for name, count in missing.items() if count}


def print_missing(missing: dict[str, int]) -> None:
  if missing:
    listed = ", ".join(f"{name} {count}" for name, count in missing.items())
    print(f"Missing labels (masked, never guessed): {listed}")


def warn_uncovered_clusters(router) -> None:
  """Warns (once) when some LLM's labels miss some clusters: there its Psi
  is its overall error, not a measurement."""
  import numpy as np
  counts = np.asarray(router.counts)
  k = router.num_clusters
  covered = {name: int(np.sum(counts[:, j] > 0))
             for j, name in enumerate(router.models)
             if not np.isnan(counts[:, j]).any()}
  short = {name: c for name, c in covered.items() if c < k}
  if short:
    worst = min(short, key=short.get)
    warnings.warn(
        f"{len(short)} LLM(s) have labelled prompts in only some of the {k} "
        f"clusters (fewest: {worst!r}, in {short[worst]}); in the others "
        "their Psi is their overall error: set fewer --clusters or label "
        "more prompts")


def read_embedded_prompts(path: str):
  """(prompt ids, [n, d] embeddings) of an embeddings file, no pickle; a file
  without ids numbers its rows from 0."""
  import numpy as np
  from uniroute_jax.data import read_embeddings
  ids, matrix = read_embeddings(path)
  # Row numbers as text, as a text file's prompts are numbered.
  return (np.arange(matrix.shape[0]).astype(str) if ids is None else ids), matrix
