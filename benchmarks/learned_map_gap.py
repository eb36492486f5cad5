"""Why does UniRoute (LearnedMap) not overtake K-NN on MMLU-Pro? Variants.

Every variant runs on the same trials (MMLU-Pro, EmbedLLM layout: 27 LLMs,
a third unseen, 10% validation prompts) with K chosen per trial on the
training LLMs (App. F.1). Each changes one thing about the learned map:
its capacity, which labels build the training LLMs' Psi, early stopping,
shrinkage of small clusters, and soft vs hard Psi for the test LLMs. The
table gives the mean area, its 95% interval and the exact sign test of the
per-trial areas against K-NN and against UniRoute (K-means).

  python benchmarks/learned_map_gap.py --trials 24 --out benchmarks/results/learned_map_gap_mmlu_pro.md
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import numpy as np

try:
  from benchmarks import _machine
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine

from uniroute_jax import protocol

LM = protocol.LearnedMapRouter
KM = protocol.KMeansRouter
# (label, router): every variant is a method value with its own options.
VARIANTS = (
    ("K-NN", protocol.KNN()),
    ("UniRoute (K-means)", KM()),
    ("UniRoute (K-means), Psi shrunk (2 prompts)", KM(prior_strength=2.0)),
    ("LearnedMap, the paper's (5 epochs)", LM()),
    ("  + best epoch on validation area", LM(select_epoch=True)),
    ("  20 epochs, best epoch", LM(epochs=20, select_epoch=True)),
    ("  single softmax-dense layer", LM(hidden=(), batch_norm=False)),
    ("  wider map, Dense(512) x 2", LM(hidden=(512, 512))),
    ("  training LLMs' Psi from validation labels", LM(train_psi_from="val")),
    ("  soft Psi for the test LLMs", LM(soft_psi=True)),
    ("  Psi shrunk (2 prompts)", LM(prior_strength=2.0)),
    ("  val Psi + soft Psi + best epoch",
     LM(train_psi_from="val", soft_psi=True, select_epoch=True)),
    # Follow-ups on the single softmax-dense layer (--only single).
    ("single layer, 20 epochs, best epoch",
     LM(hidden=(), batch_norm=False, epochs=20, select_epoch=True)),
    ("single layer, soft Psi", LM(hidden=(), batch_norm=False, soft_psi=True)),
    ("single layer, Psi shrunk (2 prompts)",
     LM(hidden=(), batch_norm=False, prior_strength=2.0)),
    ("single layer, lr 1e-3, 20 epochs, best epoch",
     LM(hidden=(), batch_norm=False, epochs=20, learning_rate=1e-3,
        select_epoch=True)),
)
REFERENCE_ROWS = 2  # K-NN and K-means: always run, the rows others are tested against


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=24)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--only", default="",
                      help="run only the variants whose label contains this "
                           "text (and the K-NN and K-means reference rows)")
  parser.add_argument("--out", help="also write the report as Markdown here")
  args = parser.parse_args(argv)
  data = _machine.load_mmlu_pro()
  if data is None:
    return 1
  split_key, run_key = jax.random.split(jax.random.key(args.seed))
  splits = protocol.make_trials(split_key, args.trials, data.num_prompts,
                                data.num_models)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  grid_k = protocol.default_cluster_grid(n_train, n_val)
  grid_nn = protocol.default_neighbor_grid(n_train, n_val)
  results = []
  variants = [v for i, v in enumerate(VARIANTS)
              if i < REFERENCE_ROWS or args.only.lower() in v[0].lower()]
  for label, method in variants:
    start = time.perf_counter()
    out, _ = protocol.run_trials(run_key, data, splits, methods=(method,))
    seconds = time.perf_counter() - start
    r = out[method.name]
    print(f"{label}: {np.mean(r.area):.4f} ({seconds:.0f} s)", flush=True)
    results.append((label, method, r, seconds))

  knn, kmeans = results[0][2].area, results[1][2].area
  rows = []
  for label, method, r, seconds in results:
    t = r.area.shape[0]
    mean = float(np.mean(r.area))
    half = 1.96 * float(np.std(r.area, ddof=1)) / math.sqrt(t) if t > 1 else math.nan

    def versus(other):
      test = protocol.sign_test(r.area, other)
      return f"{test.wins}-{test.losses} (p={test.p_value:.2g})"

    hyper = method.hyperparameter
    chosen = f"{hyper}={int(np.median(r.chosen))}" if hyper else ""
    rows.append([label, f"{mean:.4f}", f"[{mean - half:.4f}, {mean + half:.4f}]",
                 "" if r is results[0][2] else versus(knn),
                 "" if r is results[1][2] else versus(kmeans), chosen,
                 f"{seconds:.0f}"])
  lines = [
      f"# UniRoute (LearnedMap) variants on MMLU-Pro: {args.trials} trials", "",
      f"{n_train} / {n_val} / {splits.test.shape[1]} train / validation / test "
      f"prompts, {splits.train_models.shape[1]} training and "
      f"{splits.test_models.shape[1]} unseen test LLMs per trial; the same "
      f"trials (seed {args.seed}) for every row; K from "
      f"{list(grid_k)}, k from {list(grid_nn)}, chosen "
      "per trial on the training LLMs. The LearnedMap rows change one thing "
      "each about the paper's map (BatchNorm, Dense(128)-BatchNorm-ReLU x 2, "
      "Dense(K), softmax; Adam 5e-3, batch 64, 5 epochs; Psi of the training "
      "LLMs from their training labels; the test LLMs' Psi from the "
      "validation prompts' nearest centroid). Sign tests: per-trial wins-"
      "losses of the row against K-NN and against UniRoute (K-means).", "",
      _machine.table(["router", "Area", "95% CI", "vs K-NN", "vs K-means",
                      "chosen", "seconds"], rows),
  ]
  _machine.finish("benchmarks/learned_map_gap.py", argv, lines, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
