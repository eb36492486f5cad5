"""Onboarding an LLM: milliseconds per new LLM, and no recompilation.

A router keeps its representative prompts and their memberships, so a new
LLM joins by averaging its labels per cluster (``Router.onboard``). Side by
side, for R representative prompts (K clusters, d = 384):

  (a) ``Router.onboard`` from the stored memberships (host checks included);
  (b) ``Router.add_models`` from the representatives' embeddings (every
      prompt assigned to its nearest centroid again);
  (c) the NumPy a user would write: ``np.bincount`` per-cluster sums and
      counts of the labels over the stored memberships;
  (d) refitting the router from scratch (k-means on the training prompts,
      then every LLM's Psi): what a router that cannot onboard must do.

(a), (b) and (c) are checked to give the same Psi. The number of
compilations during the timed calls of (a) is counted and must be 0: a new
LLM, new labels and a new cost are values, not shapes.

Run from the repository root:

  python benchmarks/onboarding.py
  python benchmarks/onboarding.py --out benchmarks/results/onboarding.md
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

try:
  from benchmarks import _machine
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine

import uniroute_jax as ur


def _compiles():
  """A counter of XLA compilations (backend compile events)."""
  count = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  return count


def _numpy_psi(membership, loss, mask, k):
  psi = np.empty((k, loss.shape[1]))
  for j in range(loss.shape[1]):
    labelled = mask[:, j]
    sums = np.bincount(membership[labelled], weights=loss[labelled, j],
                       minlength=k)
    counts = np.bincount(membership[labelled], minlength=k)
    overall = loss[labelled, j].mean()
    psi[:, j] = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
  return psi


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--representatives", type=int, nargs="+",
                      default=[1000, 5000, 20000])
  parser.add_argument("--clusters", type=int, default=50)
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--train", type=int, default=20000,
                      help="training prompts of the refit in (d)")
  parser.add_argument("--llms", type=int, default=10,
                      help="LLMs already in the pool")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  k, d = args.clusters, args.dim
  centres = rng.normal(size=(k, d)).astype(np.float32)
  x_train = (centres[rng.integers(0, k, args.train)]
             + rng.normal(size=(args.train, d)).astype(np.float32))
  compiles = _compiles()
  base = ur.Router.from_kmeans(jax.random.key(0), x_train, num_clusters=k)
  rows, failures = [], 0
  for n in args.representatives:
    x_rep = (centres[rng.integers(0, k, n)]
             + rng.normal(size=(n, d)).astype(np.float32))
    loss = (rng.random((n, args.llms + 1)) < 0.4).astype(np.float32)
    mask = rng.random((n, args.llms + 1)) < 0.9
    cost = rng.uniform(0.1, 2.0, args.llms + 1).astype(np.float32)
    router = base.with_representatives(x_rep).onboard(
        [f"llm{j}" for j in range(args.llms)], loss[:, :-1], cost[:-1],
        mask=mask[:, :-1])
    new_loss, new_mask, new_cost = loss[:, -1:], mask[:, -1:], cost[-1:]

    def onboard(scale=1.0):
      return router.onboard(["new"], new_loss, new_cost * scale,
                            mask=new_mask).psi

    onboard()                       # compiles once for this R
    before = compiles[0]
    scales = iter(np.linspace(1.0, 2.0, args.repeats + 1))
    t_onboard, psi_a = _machine.best_time(lambda: onboard(next(scales)),
                                          args.repeats, jax.block_until_ready)
    recompiled = compiles[0] - before
    add = lambda: router.add_models(["new"], x_rep, new_loss, new_cost,
                                    mask=new_mask).psi
    add()
    t_add, psi_b = _machine.best_time(add, args.repeats, jax.block_until_ready)
    membership = np.asarray(router.representatives.membership)
    t_numpy, psi_c = _machine.best_time(
        lambda: _numpy_psi(membership, new_loss, new_mask, k), args.repeats)

    def refit():
      fresh = ur.Router.from_kmeans(jax.random.key(1), x_train, num_clusters=k)
      return fresh.add_models([f"llm{j}" for j in range(args.llms + 1)], x_rep,
                              loss, cost, mask=mask).psi

    refit()
    t_refit, _ = _machine.best_time(refit, max(1, args.repeats // 10),
                                    jax.block_until_ready)
    same = (np.allclose(np.asarray(psi_a)[:, -1], psi_c[:, 0], atol=1e-6)
            and np.allclose(np.asarray(psi_b)[:, -1], psi_c[:, 0], atol=1e-6))
    failures += (not same) + (recompiled != 0)
    rows.append((n, f"{t_onboard * 1e3:.2f}", f"{t_add * 1e3:.2f}",
                 f"{t_numpy * 1e3:.2f}", f"{t_refit * 1e3:.0f}",
                 f"{t_add / t_onboard:.1f}x", f"{t_refit / t_onboard:.0f}x",
                 recompiled, "yes" if same else "NO"))
    print(rows[-1], flush=True)
  lines = [
      "# Onboarding an LLM",
      "",
      f"K = {k} clusters, d = {d}, {args.llms} LLMs already in the pool; "
      f"the refit clusters {args.train} training prompts. Best of "
      f"{args.repeats} calls (the refit: of {max(1, args.repeats // 10)}); "
      "each onboarding call passes a new cost, so only values change.",
      "",
      _machine.table(
          ["representatives", "(a) onboard ms", "(b) add_models ms",
           "(c) NumPy ms", "(d) refit ms", "(b)/(a)", "(d)/(a)",
           "compiles in (a)", "same Psi"], rows),
  ]
  _machine.finish("benchmarks/onboarding.py", argv, lines, args.out)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
