"""How many prompts a new LLM must be run on, on every dataset.

The onboarding curve (protocol.onboarding_curve) of UniRoute (K-means): the
deferral Area on held-out prompts when each unseen LLM's Psi comes from
only s of the validation (representative) prompts, for random prompts and
for prompts spread over the clusters (stratified by cluster size; Neyman:
by size times the error's spread). Sign tests of the per-trial Areas of
each spread order against random prompts at each size, and the number of
random prompts each order's Area is worth.

  python benchmarks/onboarding_curve.py                 # 400 trials each
  python benchmarks/onboarding_curve.py --trials 20 --out /tmp/curve.md
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

try:
  from benchmarks import _machine
  from benchmarks.paper_table import each_dataset
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine
  from paper_table import each_dataset

from uniroute_jax import protocol

SIZES = (10, 25, 50, 100, 200, 400, None)


def _sign(a, b) -> str:
  t = protocol.sign_test(a, b)
  return f"{t.wins}-{t.losses}, p={t.p_value:.2g}" + (" *" if t.p_value < 0.01
                                                      else "")


def _worth(curve, order: int, size_index: int) -> str:
  """How many random prompts give the Area ``order`` reaches with the
  size at ``size_index`` (the mean random curve interpolated linearly in
  log size; '>' the largest size when above it)."""
  target = curve.mean()[order, size_index]
  # The smallest number of random prompts whose curve (made monotone: more
  # prompts can always be ignored) reaches the target.
  random = np.maximum.accumulate(curve.mean()[0])
  sizes = np.asarray(curve.sizes, np.float64)
  if target > random[-1]:
    return f">{int(sizes[-1])}"
  if target <= random[0]:
    return f"<={int(sizes[0])}"
  hi = int(np.argmax(random >= target))
  lo = hi - 1
  frac = (target - random[lo]) / (random[hi] - random[lo])
  worth = np.exp(np.log(sizes[lo]) + frac * (np.log(sizes[hi]) - np.log(sizes[lo])))
  return f"{worth:.0f}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=400)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--datasets", default="synthetic,routerbench,embedllm")
  parser.add_argument("--out", default=None, help="write the Markdown here")
  args = parser.parse_args(argv)
  wanted = [d.strip() for d in args.datasets.split(",")]
  lines = [
      "# How many prompts a new LLM must be run on: onboarding curves",
      "",
      f"{args.trials} protocol trials per dataset (seed {args.seed}). Per "
      "trial: K-means on the training prompts, K chosen on the training LLMs "
      "(App. F.1); each unseen test LLM's Psi from only the first s "
      "validation prompts of an order; the mean deferral Area on the test "
      "prompts [95% interval]. Orders: random; stratified (every cluster in "
      "proportion to its size); Neyman (in proportion to size times the "
      "training LLMs' error spread in the cluster). 'vs random': per-trial "
      "wins-losses and the exact sign test (* p < 0.01); 'worth': the number "
      "of random prompts with the same mean Area.",
      "",
  ]
  for key, title, data, kwargs, _ in each_dataset(wanted, args.seed):
    start = time.perf_counter()
    curve = protocol.onboarding_curve(
        jax.random.key(args.seed), data, sizes=SIZES, num_trials=args.trials,
        on_progress=lambda done, total: print(f"  {done}/{total}", flush=True),
        **kwargs)
    seconds = time.perf_counter() - start
    low, high = curve.interval()
    rows = []
    for i, size in enumerate(curve.sizes):
      label = (f"all ({size})" if size == curve.num_representatives
               else str(int(size)))
      row = [label]
      for o, name in enumerate(curve.selections):
        row.append(f"{curve.mean()[o, i]:.4f} [{low[o, i]:.4f}, {high[o, i]:.4f}]")
      for o in (1, 2):
        row.append(_sign(curve.area[:, o, i], curve.area[:, 0, i]))
        row.append(_worth(curve, o, i))
      rows.append(row)
    by_k = curve.area_by_k.mean(axis=0)[:, 0]
    best_k = ", ".join(f"{int(s)}: K={int(curve.clusters[np.argmax(by_k[:, i])])}"
                       for i, s in enumerate(curve.sizes))
    lines += [
        f"## {title}",
        "",
        f"{data.num_prompts} prompts x {data.num_models} LLMs; "
        f"{curve.num_representatives} validation prompts per trial; candidate "
        f"K {[int(k) for k in curve.clusters]}, median chosen "
        f"K={int(np.median(curve.chosen))}. Wall time {seconds:.0f} s.",
        "",
        _machine.table(["prompts", "random", "stratified", "neyman",
                        "stratified vs random", "stratified worth",
                        "neyman vs random", "neyman worth"], rows),
        "",
        "K with the largest mean Area per size (random prompts; chosen on "
        f"the test prompts, for insight only): {best_k}.",
        "",
    ]
    _machine.finish("benchmarks/onboarding_curve.py", argv, lines, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
