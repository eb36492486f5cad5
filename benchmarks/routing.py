"""Routing throughput: prompts routed per second by uniroute_jax.route vs NumPy.

Routes n prompts over a grid of lambdas (argmin_m gamma_m(x) + lambda c_m)
in several ways, side by side:

  (a) uniroute_jax.route with hard clusters (int32 [n]) and per-LLM costs [m]:
      the fast path, which decides once per cluster and gathers;
  (a') the same call inside the user's own jax.jit, keeping only ``choice``
      (no eager value checks, and XLA drops the unused [n, m] predicted loss);
  (b) uniroute_jax.route with soft memberships [n, k] (softmax of random
      logits): the general path, gamma = membership @ psi, then an argmin per
      prompt and lambda;
  (c) the NumPy a user would write: gamma = psi[assignment], scores =
      gamma[None] + lambdas[:, None, None] * cost, argmin over LLMs, in row
      chunks (one row per chunk size given in --numpy-chunks);
  (d) the pipeline from embeddings: assign_clusters of [n, d] embeddings to k
      centroids, then route (and assign_clusters alone, for reference).

(a), (b) fed one-hot memberships, and (c) are checked to choose identical
LLMs for every prompt and lambda; any disagreement is reported with the
float64 scores of both choices, and makes the exit status 1.

Run from the repository root:

  python benchmarks/routing.py                      # n=1M, k=100, m=100, 32 lambdas
  python benchmarks/routing.py --n 5000 --embed-n 5000
  python benchmarks/routing.py --out benchmarks/results/routing.md
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
  from benchmarks import _machine
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine

import uniroute_jax

# The general path falls back to this many prompts when n would not fit.
_SOFT_FALLBACK_N = 100_000


def make_problem(n, k, m, num_lambdas, seed):
  """Per-cluster losses, costs, a lambda grid and hard cluster assignments."""
  rng = np.random.default_rng(seed)
  psi = rng.random((k, m), dtype=np.float32)
  # Costs spread over three decades, like LLM price lists.
  cost = (10.0 ** rng.uniform(-2.0, 1.0, m)).astype(np.float32)
  # 0 (quality only) up to a lambda at which the cheapest LLM wins nearly all.
  lambdas = np.concatenate(
      [[0.0], np.geomspace(1e-3, 10.0, num_lambdas - 1)]).astype(np.float32)
  assignment = rng.integers(0, k, n, dtype=np.int32)
  return psi, cost, lambdas[:num_lambdas], assignment


def soft_membership(n, k, seed):
  """[n, k] cluster probabilities: softmax of Gaussian logits, float32."""
  rng = np.random.default_rng(seed + 1)
  logits = 2.0 * rng.standard_normal((n, k), dtype=np.float32)
  logits -= logits.max(axis=1, keepdims=True)
  np.exp(logits, out=logits)
  logits /= logits.sum(axis=1, keepdims=True)
  return logits


def embeddings_near(centroids, assignment, seed):
  """Embeddings scattered around the centroids of their clusters, float32."""
  rng = np.random.default_rng(seed + 2)
  x = rng.standard_normal((assignment.shape[0], centroids.shape[1]),
                          dtype=np.float32)
  x *= 0.5
  x += centroids[assignment]
  return x


def numpy_route(assignment, psi, cost, lambdas, chunk):
  """[L, n] argmin_m psi[a_i, m] + lambda c_m, ``chunk`` prompts at a time."""
  n = assignment.shape[0]
  out = np.empty((lambdas.shape[0], n), np.int32)
  lam_cost = lambdas[:, None, None] * cost[None, None, :]
  for start in range(0, n, chunk):
    gamma = psi[assignment[start:start + chunk]]
    scores = gamma[None] + lam_cost
    out[:, start:start + chunk] = scores.argmin(axis=-1)
  return out


def _available_bytes() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def soft_peak_bytes(n, k, m, num_lambdas) -> tuple[int, str]:
  """Predicted memory of the general path at n prompts, and how it was found.

  Asks XLA for the compiled program's buffer sizes (no data needed); if
  that fails, falls back to the [L, n, m] float32 scores that a vmap over
  lambdas materialises.
  """
  try:
    from uniroute_jax import routing as routing_module
    spec = jax.ShapeDtypeStruct
    compiled = jax.jit(lambda c, p, cost, lam, pool: routing_module.route(
        c, p, cost, lam, pool_mask=pool)).lower(
        spec((n, k), jnp.float32), spec((k, m), jnp.float32),
        spec((m,), jnp.float32), spec((num_lambdas,), jnp.float32),
        spec((m,), jnp.bool_)).compile()
    mem = compiled.memory_analysis()
    total = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
             + mem.output_size_in_bytes)
    return total, (f"XLA memory analysis: {mem.temp_size_in_bytes / 2**30:.2f} "
                   f"GiB temporaries + arguments and outputs")
  except Exception:  # noqa: BLE001 - only an estimate is needed
    return num_lambdas * n * m * 4, "estimate: L * n * m float32 scores"


def check_same(name, got, ref, gamma64, cost64, lambdas64):
  """Compares [L, n] choices with the reference; returns lines describing it."""
  got, ref = np.asarray(got), np.asarray(ref)
  bad = np.argwhere(got != ref)
  if not len(bad):
    return True, [f"{name}: identical to (c) on all {got.size:,} "
                  "(lambda, prompt) pairs."]
  lam_i, row = bad[:, 0], bad[:, 1]
  g, r = got[lam_i, row], ref[lam_i, row]
  score_got = gamma64[row, g] + lambdas64[lam_i] * cost64[g]
  score_ref = gamma64[row, r] + lambdas64[lam_i] * cost64[r]
  excess = score_got - score_ref
  # Within a few float32 ulps the two are a rounding tie; beyond, a wrong pick.
  tie = np.abs(excess) <= 4 * np.finfo(np.float32).eps * np.maximum(
      np.abs(score_ref), 1.0)
  worse = ~tie & (excess > 0)
  values, counts = np.unique(g[worse], return_counts=True)
  common = ", ".join(f"LLM {v}: {c:,}" for v, c in
                     sorted(zip(values, counts), key=lambda t: -t[1])[:5])
  lines = [
      f"**{name}: {len(bad):,} of {got.size:,} (lambda, prompt) pairs differ "
      f"from (c).** {int(tie.sum()):,} are rounding ties (scores within 4 "
      f"float32 ulps); {int(worse.sum()):,} pick an LLM whose float64 score is "
      f"worse by up to {excess[worse].max() if worse.any() else 0:.3g} "
      f"(median {np.median(excess[worse]) if worse.any() else 0:.3g}); "
      f"{int((~tie & (excess < 0)).sum()):,} pick a better one than NumPy.",
  ]
  if worse.any():
    lines[0] += (f" The worse picks choose {common}; affected lambda indices: "
                 f"{sorted(set(lam_i[worse].tolist()))}.")
  return False, lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=1_000_000, help="prompts")
  parser.add_argument("--k", type=int, default=100, help="clusters")
  parser.add_argument("--m", type=int, default=100, help="LLMs")
  parser.add_argument("--lambdas", type=int, default=32,
                      help="size of the lambda grid")
  parser.add_argument("--soft-n", type=int, default=None,
                      help="prompts for the soft path (b); default: n, or "
                           f"{_SOFT_FALLBACK_N:,} when n would not fit in "
                           "half the available memory")
  parser.add_argument("--embed-n", type=int, default=None,
                      help="prompts for the embedding pipeline (d); "
                           "default: n")
  parser.add_argument("--d", type=int, default=384, help="embedding size")
  parser.add_argument("--numpy-chunks", default="50000,2048",
                      help="comma-separated row chunk sizes for (c)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs per method; the best is reported")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="also write the report as Markdown here")
  args = parser.parse_args(argv)

  n, k, m, num_l = args.n, args.k, args.m, args.lambdas
  embed_n = args.embed_n or n
  chunks = [int(c) for c in args.numpy_chunks.split(",") if c.strip()]
  notes = []

  peak, how = soft_peak_bytes(n, k, m, num_l)
  avail = _available_bytes()
  if args.soft_n is not None:
    soft_n = args.soft_n
  elif avail is not None and peak > avail // 2:
    soft_n = min(n, _SOFT_FALLBACK_N)
    notes.append(
        f"(b) runs at n={soft_n:,}, not {n:,}: at {n:,} prompts the general "
        f"path would need {peak / 2**30:.1f} GiB ({how}), more than half of "
        f"the {avail / 2**30:.1f} GiB available.")
  else:
    soft_n = n
  if embed_n != n:
    notes.append(f"(d) runs at n={embed_n:,} embeddings (set by --embed-n).")

  print("making data ...", flush=True)
  psi, cost, lambdas, assignment = make_problem(n, k, m, num_l, args.seed)
  soft = soft_membership(soft_n, k, args.seed)
  rng = np.random.default_rng(args.seed + 3)
  centroids = rng.standard_normal((k, args.d), dtype=np.float32)
  embed = embeddings_near(centroids, assignment[:embed_n], args.seed)

  # Inputs live on the device before timing starts, as they would in a JAX
  # program; passing NumPy arrays would add a host copy to every call.
  psi_j, cost_j, lam_j = map(jax.device_put, (psi, cost, lambdas))
  assign_j = jax.device_put(assignment)
  soft_j = jax.device_put(soft)
  embed_j, cent_j = jax.device_put(embed), jax.device_put(centroids)
  block = jax.block_until_ready
  results = []  # (label, prompts, seconds)

  def timed_jax(label, prompts, fn):
    print(f"running {label} ...", flush=True)
    start = time.perf_counter()
    block(fn())
    first = time.perf_counter() - start
    seconds, out = _machine.best_time(fn, args.repeats, block)
    results.append((label, prompts, seconds))
    notes.append(f"{label}: first call (compile + run) {first:.2f} s.")
    return out

  out_a = timed_jax("(a) route, hard clusters", n,
                    lambda: uniroute_jax.route(assign_j, psi_j, cost_j, lam_j))

  choice_only = jax.jit(
      lambda a, p, c, lam: uniroute_jax.route(a, p, c, lam).choice)
  out_a2 = timed_jax("(a') route in user jit, choice only", n,
                     lambda: choice_only(assign_j, psi_j, cost_j, lam_j))

  out_b = timed_jax("(b) route, soft memberships", soft_n,
                    lambda: uniroute_jax.route(soft_j, psi_j, cost_j, lam_j))
  del out_b, soft_j, soft

  numpy_results = []
  out_c = None
  for chunk in chunks:
    label = f"(c) NumPy, {chunk:,}-row chunks"
    print(f"running {label} ...", flush=True)
    seconds, out = _machine.best_time(
        lambda: numpy_route(assignment, psi, cost, lambdas, chunk),
        args.repeats)
    results.append((label, n, seconds))
    numpy_results.append((label, seconds))
    if out_c is None:
      out_c = out
    elif not np.array_equal(out, out_c):
      notes.append(f"{label} differs from the first NumPy variant (!)")

  timed_jax("(d) assign_clusters only", embed_n,
            lambda: uniroute_jax.assign_clusters(embed_j, cent_j).cluster)

  def pipeline():
    cluster = uniroute_jax.assign_clusters(embed_j, cent_j).cluster
    return uniroute_jax.route(cluster, psi_j, cost_j, lam_j).choice

  out_d = timed_jax("(d) assign_clusters + route", embed_n, pipeline)

  # ---- correctness: every method against the NumPy reference (c)
  print("checking choices ...", flush=True)
  gamma64 = psi.astype(np.float64)[assignment]
  cost64, lam64 = cost.astype(np.float64), lambdas.astype(np.float64)
  checks = []
  checks.append(check_same("(a) hard clusters", out_a.choice, out_c,
                           gamma64, cost64, lam64))
  checks.append(check_same("(a') in user jit", out_a2, out_c,
                           gamma64, cost64, lam64))
  del out_a, out_a2
  one_hot = jax.nn.one_hot(assign_j[:soft_n], k, dtype=jnp.float32)
  out_b1 = uniroute_jax.route(one_hot, psi_j, cost_j, lam_j).choice
  checks.append(check_same(
      f"(b) soft path fed one-hot memberships (first {soft_n:,} prompts)",
      out_b1, out_c[:, :soft_n], gamma64[:soft_n], cost64, lam64))
  del out_b1, one_hot
  # The pipeline's clusters come from the embeddings, so compare it with
  # NumPy routing of those same clusters.
  cluster_d = np.asarray(
      uniroute_jax.assign_clusters(embed_j, cent_j).cluster)
  # And the clusters themselves, on a sample, against float64 NumPy.
  sample = min(embed_n, 20_000)
  diff = (embed[:sample, None, :].astype(np.float64)
          - centroids[None].astype(np.float64))
  nearest = np.einsum("ijk,ijk->ij", diff, diff).argmin(axis=1)
  agree = int((nearest == cluster_d[:sample]).sum())
  checks.append((agree == sample, [
      f"(d) assign_clusters: {agree:,} of the first {sample:,} embeddings get "
      "the same cluster as a float64 NumPy nearest-centroid search."]))
  del diff
  ref_d = numpy_route(cluster_d, psi, cost, lambdas, chunks[-1])
  checks.append(check_same(
      "(d) pipeline", out_d, ref_d,
      psi.astype(np.float64)[cluster_d], cost64, lam64))
  all_same = all(ok for ok, _ in checks)

  # ---- report
  base_label, base_seconds = min(numpy_results, key=lambda t: t[1])
  base_rate = n / base_seconds
  rows = []
  for label, prompts, seconds in results:
    rate = prompts / seconds
    rows.append([label, f"{prompts:,}", f"{seconds:.4g}", f"{rate:,.0f}",
                 f"{rate / base_rate:.2f}x"])
  _machine.finish("benchmarks/routing.py", argv, [
      "# Routing throughput: uniroute_jax.route vs NumPy",
      "",
      f"n={n:,} prompts, k={k} clusters, m={m} LLMs, {num_l} lambdas "
      f"(0 and a geometric grid 1e-3 .. 10), float32; psi ~ U(0, 1), costs "
      f"log-uniform in [0.01, 10]; seed {args.seed}. (d) uses d={args.d} "
      "embeddings.",
      f"Times: best of {args.repeats} runs, wall clock (time.perf_counter); "
      "JAX inputs already on the device, a warm-up (compiling) call first, "
      "block_until_ready inside the timing. Every method produces the full "
      f"[{num_l}, n] choice array. \"vs NumPy\" is prompts/s over the "
      f"fastest NumPy variant ({base_label}).",
      "",
      _machine.table(["method", "prompts", "seconds", "prompts/s",
                      "vs NumPy"], rows),
      "## Correctness",
      "",
      *[f"- {line}" for _, lines in checks for line in lines],
      "",
      "## Notes",
      "",
      *[f"- {note}" for note in notes],
      "",
  ], args.out)
  return 0 if all_same else 1


if __name__ == "__main__":
  sys.exit(main())
