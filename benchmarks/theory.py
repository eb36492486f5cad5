"""Theory a user can act on, measured on every dataset.

For each dataset (as in benchmarks/paper_table.py), many protocol trials of:

1. Uncertainty on Psi: UniRoute (K-means) with today's Psi (plain cluster
   means, eq. 13) against the Beta-Binomial posterior mean with an
   empirical-Bayes prior, and against routing on posterior quantiles
   (0.75, 0.9) of it: Area(50%) (low budgets) and Area, with sign tests of
   the per-trial values against today's Psi.
2. The excess-risk decomposition of UniRoute (K-means) and the learned maps:
   the Area lost to the per-prompt oracle, split into estimation (Psi from
   too few labelled prompts) and approximation (the clusters), and the
   per-lambda split at a few trade-offs.
3. Prop. 2's bound against K (k-means of a random subset of prompts, the
   bound estimated with a 10-neighbour smoother), one compiled sweep.

  python benchmarks/theory.py                        # 400 trials each
  python benchmarks/theory.py --trials 20 --out /tmp/theory.md
"""

from __future__ import annotations

import argparse
import os
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

from uniroute_jax import protocol, risk

BASE = "kmeans"
PSI_VARIANTS = (
    protocol.KMeansRouter(),
    protocol.KMeansRouter(name="kmeans_eb", title="K-means, posterior mean "
                          "(empirical Bayes)", empirical_bayes=True),
    protocol.KMeansRouter(name="kmeans_eb_q75", title="K-means, posterior "
                          "0.75-quantile", empirical_bayes=True,
                          psi_quantile=0.75),
    protocol.KMeansRouter(name="kmeans_eb_q90", title="K-means, posterior "
                          "0.9-quantile", empirical_bayes=True,
                          psi_quantile=0.9),
)
MAPS = (protocol.BUILT_IN["learned_map"], protocol.BUILT_IN["learned_map_linear"])
SHOWN_LAMBDAS = (0.0, 0.1, 1.0, 10.0)
BOUND_PROMPTS = 3000
BOUND_CLUSTERS = (1, 2, 3, 5, 8, 13, 20, 30, 50)


def _sign(a, b) -> str:
  t = protocol.sign_test(a, b)
  mark = " *" if t.p_value < 0.01 else ""
  return f"{t.wins}-{t.losses}, p={t.p_value:.2g}{mark}"


def uncertainty_rows(ev):
  base = ev.methods[BASE].trials
  rows = []
  for m in PSI_VARIANTS:
    s = ev.methods[m.name]
    same = m.name == BASE
    rows.append([s.title, f"{s.area50:.4f}", f"{s.area:.4f}",
                 "" if same else _sign(s.trials.area50, base.area50),
                 "" if same else _sign(s.trials.area, base.area)])
  return rows


def decomposition_rows(ev, names):
  lambdas = np.asarray(ev.excess_lambdas)
  index = [int(np.argmin(np.abs(lambdas - lam))) for lam in SHOWN_LAMBDAS]
  rows = []
  for name in names:
    s = ev.methods[name]
    gap = s.area_estimation + s.area_approximation
    share = s.area_estimation / gap if gap > 0 else float("nan")
    per_lambda = " / ".join(f"{s.estimation[i]:.3f}+{s.approximation[i]:.3f}"
                            for i in index)
    rows.append([s.title, f"{s.area:.3f}", f"{gap:.3f}",
                 f"{s.area_estimation:.3f}", f"{s.area_approximation:.3f}",
                 f"{100 * share:.0f}%", per_lambda])
  return rows


def bound_rows(data, seed):
  """Prop. 2's bound per K on a random subset of prompts."""
  rng = np.random.default_rng(seed)
  n = min(BOUND_PROMPTS, data.num_prompts)
  rows = rng.choice(data.num_prompts, n, replace=False)
  x = np.asarray(data.embeddings, np.float32)[rows]
  loss = np.asarray(data.loss, np.float32)[rows]
  mask = np.asarray(data.mask)[rows]
  candidates = np.asarray(BOUND_CLUSTERS, np.int32)
  start = time.perf_counter()
  bounds = np.asarray(risk.impurity_bounds(
      jax.random.key(seed), x, loss, candidates, num_neighbors=10, mask=mask,
      together=1))
  seconds = time.perf_counter() - start
  return [[int(k), f"{b:.3f}"] for k, b in zip(candidates, bounds)], n, seconds


def _bound_text(bound_n: int) -> str:
  return (f"Prop. 2's bound 2 E[max_h Delta] against K (k-means of {bound_n} "
          "random prompts; P(h wrong | x) estimated once, from each prompt's "
          "10 nearest prompts, so every K is measured against the same "
          "estimate). It bounds, for every lambda, the approximation part "
          "less the labels' own noise (the Psi-star rule against the Bayes "
          "rule); K = 1 is ZeroRouter. The smoother's label noise biases it "
          "upward (risk.neighborhood_error): read its fall with K, not its "
          "level.")


def _bounds_only(wanted, args, argv) -> int:
  lines = ["# Prop. 2's bound against K on every dataset", ""]
  for _, title, data, _, _ in each_dataset(wanted, args.seed):
    bounds, bound_n, seconds = bound_rows(data, args.seed)
    lines += [f"## {title}", "",
              f"{data.num_prompts} prompts x {data.num_models} LLMs. "
              f"{_bound_text(bound_n)} Wall time {seconds:.0f} s.", "",
              _machine.table(["K", "bound"], bounds), ""]
  _machine.finish("benchmarks/theory.py", argv, lines, args.out)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=400)
  parser.add_argument("--map-trials", type=int, default=None,
                      help="trials of the learned maps (default --trials)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--datasets", default="synthetic,routerbench,embedllm")
  parser.add_argument("--out", default=None, help="write the Markdown here")
  parser.add_argument("--bounds-only", action="store_true",
                      help="only Prop. 2's bound against K (seconds)")
  args = parser.parse_args(argv)
  wanted = [d.strip() for d in args.datasets.split(",")]
  map_trials = args.map_trials or args.trials
  if args.bounds_only:
    return _bounds_only(wanted, args, argv)
  lines = [
      "# Theory a user can act on: uncertainty on Psi, the excess-risk "
      "decomposition, Prop. 2's bound against K",
      "",
      f"Protocol trials (seed {args.seed}): {args.trials} for the Psi "
      f"variants, {map_trials} for the learned maps. Psi variants are "
      "compared with today's Psi (plain cluster means) by exact two-sided "
      "sign tests of the per-trial Area(50%) and Area (* p < 0.01). The "
      "decomposition: Area lost to the per-prompt oracle = estimation "
      "(Psi-hat from the representative prompts vs Psi-star, the same "
      "clusters' errors on the test prompts) + approximation (Psi-star vs "
      "the oracle); per lambda (relative-cost units) as estimation + "
      "approximation of the excess risk.",
      "",
  ]
  for key, title, data, kwargs, _ in each_dataset(wanted, args.seed):
    progress = lambda done, total: print(f"  {done}/{total}", flush=True)
    start = time.perf_counter()
    ev = protocol.evaluate(jax.random.key(args.seed), data,
                           num_trials=args.trials,
                           methods=PSI_VARIANTS + (protocol.Oracle(),),
                           on_progress=progress, **kwargs)
    psi_seconds = time.perf_counter() - start
    start = time.perf_counter()
    maps = protocol.evaluate(jax.random.key(args.seed), data,
                             num_trials=map_trials, methods=MAPS,
                             on_progress=progress, **kwargs)
    map_seconds = time.perf_counter() - start
    n_train, n_val = ev.splits.train.shape[1], ev.splits.val.shape[1]
    bounds, bound_n, bound_seconds = bound_rows(data, args.seed)
    lines += [
        f"## {title}",
        "",
        f"{data.num_prompts} prompts x {data.num_models} LLMs; per trial "
        f"{n_train} / {n_val} / {ev.splits.test.shape[1]} train / validation "
        f"/ test prompts, {ev.splits.test_models.shape[1]} unseen test LLMs. "
        f"Wall time: {psi_seconds:.0f} s (Psi variants, {args.trials} "
        f"trials), {map_seconds:.0f} s (learned maps, {map_trials} trials), "
        f"{bound_seconds:.0f} s (bounds).",
        "",
        "Uncertainty on Psi (vs today's Psi):",
        "",
        _machine.table(["Psi", "Area(50%)", "Area", "Area(50%) vs today",
                        "Area vs today"], uncertainty_rows(ev)),
        "",
        "Where the Area lost to the oracle goes (means over trials); per "
        "lambda " + ", ".join(str(x) for x in SHOWN_LAMBDAS) + ":",
        "",
        _machine.table(["router", "Area", "gap to oracle", "estimation",
                        "approximation", "estimation share",
                        "excess per lambda (est.+approx.)"],
                       decomposition_rows(ev, [BASE, "kmeans_eb"])
                       + decomposition_rows(maps, [m.name for m in MAPS])),
        "",
        _bound_text(bound_n),
        "",
        _machine.table(["K", "bound"], bounds),
        "",
    ]
    # Each dataset's results are saved as soon as they exist.
    _machine.finish("benchmarks/theory.py", argv, lines, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
