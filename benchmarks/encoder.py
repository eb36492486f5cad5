"""Sentence embedding speed: the built-in JAX MiniLM vs sentence-transformers.

Embeds the same prompts with all-MiniLM-L6-v2 twice, side by side:

  (a) ``uniroute_jax.encoder.MiniLM`` (JAX, length buckets, tail truncation
      at 256 tokens, 64 prompts a batch);
  (b) sentence-transformers on PyTorch (CPU), set up as the shared data's
      README embeds: ``max_seq_length = 256``, left (tail) truncation, 64 a
      batch, normalised.

Prompts: MMLU-Pro questions (short) and RouterBench prompts (long, most
truncated) from the shared data. Each side embeds every set once to warm
up (JAX compiles one program per length bucket: that time is reported
apart) and is then timed over ``--repeats`` passes; the best pass counts.
The two sides' embeddings are compared (cosine per prompt).

PyTorch is never a dependency of the library: run this in an environment
that has it, e.g.

  pip install torch --index-url https://download.pytorch.org/whl/cpu
  pip install sentence-transformers
  python benchmarks/encoder.py --out benchmarks/results/encoder.md
"""

from __future__ import annotations

import argparse
import ast
import csv
import os
import sys
import time

import numpy as np

try:
  from benchmarks import _machine
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine


def _mmlu_pro(root: str, n: int, rng) -> list[str]:
  with open(os.path.join(root, "mmlu_pro", "question_order.csv"), newline="",
            encoding="utf-8") as f:
    prompts = [row["prompt"] for row in csv.DictReader(f)]
  return [prompts[i] for i in rng.choice(len(prompts), n, replace=False)]


def _routerbench(root: str, n: int, rng) -> list[str]:
  csv.field_size_limit(sys.maxsize)
  folder = os.path.join(root, "routerbench")
  texts = []
  for name in sorted(os.listdir(folder)):
    if name.endswith(".csv"):
      with open(os.path.join(folder, name), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
          texts.append("\n".join(ast.literal_eval(row["prompt"])))
  return [texts[i] for i in rng.choice(len(texts), n, replace=False)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mmlu-pro", type=int, default=2000,
                      help="MMLU-Pro questions to embed")
  parser.add_argument("--routerbench", type=int, default=300,
                      help="RouterBench prompts to embed")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  root = _machine.data_root()
  if root is None:
    print("the shared data (../shared/data or UNIROUTE_DATA) is absent")
    return 2
  try:
    import torch
    from sentence_transformers import SentenceTransformer
  except ImportError:
    print("this benchmark needs PyTorch and sentence-transformers (see the "
          "module docstring); the library itself does not")
    return 2
  from uniroute_jax import threads
  from uniroute_jax.encoder import MiniLM, default_model_dir

  rng = np.random.default_rng(0)
  sets = {"MMLU-Pro": _mmlu_pro(root, args.mmlu_pro, rng),
          "RouterBench": _routerbench(root, args.routerbench, rng)}
  ours = MiniLM(truncation="tail", max_length=256, batch_size=64)
  # The same encoder calling the device from one host thread only.
  ours_one = MiniLM(truncation="tail", max_length=256, batch_size=64,
                    workers=1)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  theirs = SentenceTransformer(default_model_dir(), device="cpu")
  theirs.max_seq_length = 256
  theirs.tokenizer.truncation_side = "left"
  embed_st = lambda texts: theirs.encode(texts, batch_size=64,
                                         normalize_embeddings=True)
  rows, failures = [], 0
  for name, texts in sets.items():
    tokens = ours.tokenize(texts)
    start = time.perf_counter()
    ours(texts)                                  # compiles its buckets
    first = time.perf_counter() - start
    t_ours, a = _machine.best_time(lambda: ours(texts), args.repeats)
    ours_one(texts)
    t_one, _ = _machine.best_time(lambda: ours_one(texts), args.repeats)
    embed_st(texts[:64])
    t_theirs, b = _machine.best_time(lambda: embed_st(texts), args.repeats)
    cos = np.sum(np.asarray(a) * b, axis=1) / (np.linalg.norm(b, axis=1) *
                                               np.linalg.norm(a, axis=1))
    failures += int(cos.min() < 0.999)
    rows.append((name, len(texts), f"{np.median([len(t) for t in tokens]):.0f}",
                 f"{len(texts) / t_ours:.0f} ({len(texts) / t_one:.0f} from "
                 "one thread)",
                 f"{len(texts) / t_theirs:.0f}",
                 f"{t_theirs / t_ours:.2f}x", f"{first - t_ours:.1f}",
                 f"{cos.min():.7f}"))
    print(rows[-1], flush=True)
  lines = [
      "# Sentence embeddings: JAX MiniLM vs sentence-transformers (PyTorch)",
      "",
      "all-MiniLM-L6-v2, tail truncation at 256 tokens, batches of 64, "
      f"best of {args.repeats} passes after a warm-up pass; torch "
      f"{torch.__version__} with {torch.get_num_threads()} threads; the JAX "
      f"encoder calls the device from {threads.workers(None)} host threads "
      "(its default here).",
      "",
      _machine.table(
          ["prompts", "n", "median tokens", "JAX prompts/s",
           "PyTorch prompts/s", "JAX / PyTorch", "JAX compile s",
           "min cosine"], rows),
  ]
  _machine.finish("benchmarks/encoder.py", argv, lines, args.out)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
