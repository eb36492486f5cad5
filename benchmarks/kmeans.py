"""Lloyd k-means: uniroute_jax.kmeans against scikit-learn (and faiss, ott-jax).

Every method gets the same float32 data, the same initial centroids and the
same iteration budget, with the tolerance at 0 so each runs exactly --iters
Lloyd updates unless its assignment stops changing. The iteration counts each
method actually ran are printed and checked: timings are only comparable when
they agree.

Run from the repository root:

  python benchmarks/kmeans.py                       # n=100k, d=384, k=100
  python benchmarks/kmeans.py --n 5000 --d 32 --k 10 --iters 5
  python benchmarks/kmeans.py --out benchmarks/results/kmeans.md

Times are the best of --repeats runs (JAX after a compiling warm-up call).
The exit status is 1 when the iteration counts disagree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

try:
  from benchmarks import _machine
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine

import uniroute_jax


def make_data(n: int, d: int, k: int, seed: int):
  """A Gaussian mixture with k components and k initial centroids drawn from it.

  The components overlap (centre spread 0.5 against unit noise), so Lloyd's
  iterations keep moving points for many updates instead of converging in a
  few, and every method really runs the whole budget.
  """
  rng = np.random.default_rng(seed)
  proportions = rng.dirichlet(np.full(k, 2.0))
  component = rng.choice(k, size=n, p=proportions)
  centres = 0.5 * rng.standard_normal((k, d), dtype=np.float32)
  x = rng.standard_normal((n, d), dtype=np.float32)
  x += centres[component]
  init = x[rng.choice(n, size=k, replace=False)].copy()
  return x, init


def inertia_of(x, centroids, labels) -> float:
  """Sum of squared distances to the assigned centroids, in float64."""
  diff = x.astype(np.float64) - centroids.astype(np.float64)[labels]
  return float(np.einsum("ij,ij->", diff, diff))


def run_uniroute(x, init, iters, repeats):
  xj, cj = jax.device_put(x), jax.device_put(init)

  def fit():
    return uniroute_jax.kmeans(None, xj, init=cj, max_iter=iters, tol=0.0)

  start = time.perf_counter()
  jax.block_until_ready(fit())
  first = time.perf_counter() - start
  seconds, res = _machine.best_time(fit, repeats, jax.block_until_ready)
  return dict(seconds=seconds, inertia=float(res.inertia),
              iterations=int(res.num_iterations),
              labels=np.asarray(res.assignment),
              note=f"first call (compile + run) {first:.2f} s")


def run_sklearn(x, init, iters, repeats):
  from sklearn.cluster import KMeans

  def fit():
    return KMeans(n_clusters=init.shape[0], init=init, n_init=1,
                  max_iter=iters, tol=0.0, algorithm="lloyd").fit(x)

  seconds, km = _machine.best_time(fit, repeats)
  return dict(seconds=seconds, inertia=float(km.inertia_),
              iterations=int(km.n_iter_), labels=km.labels_)


# Set on some machines so that older OpenBLAS builds pick a safe kernel; they
# also slow a current one, so scikit-learn is measured both ways.
_BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _blas_kernel() -> str:
  try:
    from threadpoolctl import threadpool_info
  except ImportError:
    return "unknown"
  kernels = {i.get("architecture") for i in threadpool_info()
             if i.get("user_api") == "blas"}
  return ", ".join(sorted(k for k in kernels if k)) or "unknown"


def run_sklearn_native_blas(x, init, iters, repeats):
  """scikit-learn in a child process with the OpenBLAS overrides removed."""
  if not any(v in os.environ for v in _BLAS_OVERRIDES):
    return dict(skip="no OpenBLAS override is set: the row above is native")
  env = {k: v for k, v in os.environ.items() if k not in _BLAS_OVERRIDES}
  with tempfile.TemporaryDirectory() as tmp:
    data, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
    np.savez(data, x=x, init=init)
    subprocess.run([sys.executable, os.path.abspath(__file__), "--sklearn-child",
                    data, out, "--iters", str(iters), "--repeats", str(repeats)],
                   env=env, check=True)
    with np.load(out) as r:
      return dict(seconds=float(r["seconds"]), inertia=float(r["inertia"]),
                  iterations=int(r["iterations"]), labels=r["labels"],
                  note=f"OpenBLAS kernel in the child process: {r['kernel']}")


def _sklearn_child(data: str, out: str, iters: int, repeats: int) -> int:
  with np.load(data) as d:
    r = run_sklearn(d["x"], d["init"], iters, repeats)
  np.savez(out, kernel=_blas_kernel(), **r)
  return 0


def run_faiss(x, init, iters, repeats):
  import faiss  # ImportError is handled by the caller
  n, d = x.shape

  def fit():
    # faiss subsamples to 256 points per centroid by default; the comparison
    # needs every point in every iteration.
    km = faiss.Kmeans(d, init.shape[0], niter=iters, max_points_per_centroid=n,
                      min_points_per_centroid=1)
    km.train(x, init_centroids=init)
    # The others end with a final assignment; so must faiss.
    _, labels = km.assign(x)
    return km, labels

  seconds, (km, labels) = _machine.best_time(fit, repeats)
  return dict(seconds=seconds, inertia=inertia_of(x, km.centroids, labels),
              iterations=len(km.obj), labels=labels,
              note=f"faiss {faiss.__version__}, omp threads "
                   f"{faiss.omp_get_max_threads()}; time includes assign()")


def run_ott(x, init, iters, repeats):
  import ott  # ImportError is handled by the caller
  from ott.tools import k_means as ott_k_means
  k = init.shape[0]

  @jax.jit
  def fit_jit(xx, cc):
    return ott_k_means.k_means(xx, k, init=lambda geom, k_, rng: cc, n_init=1,
                               tol=0.0, max_iterations=iters)

  xj, cj = jax.device_put(x), jax.device_put(init)

  def fit():
    return fit_jit(xj, cj)

  jax.block_until_ready(fit())
  seconds, out = _machine.best_time(fit, repeats, jax.block_until_ready)
  return dict(seconds=seconds, inertia=float(out.error),
              iterations=int(out.iteration),
              labels=np.asarray(out.assignment),
              note=f"ott-jax {ott.__version__}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=100_000, help="points")
  parser.add_argument("--d", type=int, default=384, help="dimensions")
  parser.add_argument("--k", type=int, default=100, help="clusters")
  parser.add_argument("--iters", type=int, default=20,
                      help="Lloyd iterations (max_iter of every method)")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed runs per method; the best is reported")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="also write the report as Markdown here")
  parser.add_argument("--sklearn-child", nargs=2, metavar=("IN", "OUT"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.sklearn_child:
    return _sklearn_child(*args.sklearn_child, args.iters, args.repeats)

  x, init = make_data(args.n, args.d, args.k, args.seed)
  methods = [("uniroute_jax.kmeans", run_uniroute),
             ("scikit-learn KMeans (lloyd)", run_sklearn),
             ("scikit-learn, native OpenBLAS kernel", run_sklearn_native_blas),
             ("faiss.Kmeans", run_faiss),
             ("ott-jax k_means", run_ott)]
  results = {}
  for name, fn in methods:
    print(f"running {name} ...", flush=True)
    try:
      results[name] = fn(x, init, args.iters, args.repeats)
    except ImportError:
      results[name] = None
      print(f"  {name}: not installed")
    except Exception as err:  # noqa: BLE001 - an optional method must not end the run
      results[name] = dict(error=f"{type(err).__name__}: {err}")
      print(f"  {name}: failed: {results[name]['error']}")

  sk = results["scikit-learn KMeans (lloyd)"]
  rows, notes, counts = [], [], {}
  for name, _ in methods:
    r = results[name]
    if r is None:
      rows.append([name, "not installed", "", "", "", "", ""])
      continue
    if "skip" in r:
      rows.append([name, "n/a", "", "", "", "", ""])
      notes.append(f"{name}: {r['skip']}")
      continue
    if "error" in r:
      rows.append([name, "failed", "", "", "", "", ""])
      notes.append(f"{name} failed: {r['error']}")
      continue
    counts[name] = r["iterations"]
    rows.append([
        name, f"{r['seconds']:.4g}", f"{sk['seconds'] / r['seconds']:.2f}x",
        f"{r['inertia']:.6e}",
        f"{(r['inertia'] - sk['inertia']) / sk['inertia']:+.2e}",
        r["iterations"],
        f"{100 * np.mean(r['labels'] == sk['labels']):.2f}%"])
    if r.get("note"):
      notes.append(f"{name}: {r['note']}")
  if sk is not None and "seconds" in sk:
    notes.append(f"scikit-learn KMeans (lloyd) ran with OpenBLAS kernel "
                 f"{_blas_kernel()}, under this environment's settings.")

  fair = len(set(counts.values())) == 1
  if fair:
    notes.insert(0, f"Iteration counts agree: every method ran "
                    f"{next(iter(counts.values()))} Lloyd updates "
                    f"(budget {args.iters}).")
  else:
    notes.insert(0, "**WARNING: iteration counts differ "
                    f"({counts}); the timings are not comparable.**")

  _machine.finish("benchmarks/kmeans.py", argv, [
      "# k-means: uniroute_jax vs scikit-learn",
      "",
      f"n={args.n:,}, d={args.d}, k={args.k}, {args.iters} Lloyd iterations "
      f"(tol=0), float32; data: seeded Gaussian mixture (seed {args.seed}); "
      "the same initial centroids (k rows of the data) for every method.",
      f"Times: best of {args.repeats} runs, wall clock (time.perf_counter); "
      "JAX after a compiling warm-up call, with block_until_ready. "
      "\"vs sklearn\" is sklearn time / method time (>1: faster than "
      "scikit-learn). Inertia difference and label agreement are relative to "
      "scikit-learn's result.",
      "",
      _machine.table(["method", "seconds", "vs sklearn", "inertia",
                      "inertia rel. diff", "iterations", "labels = sklearn"],
                     rows),
      *[f"- {note}" for note in notes],
      "",
  ], args.out)
  return 0 if fair else 1


if __name__ == "__main__":
  sys.exit(main())
