"""The paper's protocol on MMLU-Pro: compile time, run time, trials per second.

Two measurements, side by side on the same trials:

1. uniroute_jax: ``protocol.run_trials`` with ZeroRouter, K-NN and UniRoute
   (K-means), K and k chosen per trial from the App. F.1 grids (8
   candidates each). The first batch's wall time (tracing and compiling
   included) is reported apart from the rest.
2. The loop a user would write with NumPy and scikit-learn: per trial,
   ``sklearn.cluster.KMeans`` per candidate K, ``NearestNeighbors`` for
   K-NN, and the exact deferral curve of the routing rule in NumPy.

Correctness: with K and k fixed and the k-means fits started from the same
centroids, both give the same per-trial areas (checked; exit 1 otherwise).

A floor beside them: each method's matrix-multiply FLOPs per trial, counted
in its traced program, at the fastest matmul rate measured on the machine;
no schedule of the same arithmetic runs faster.

  python benchmarks/protocol.py --out benchmarks/results/protocol.md
  python benchmarks/protocol.py --trials 400 --baseline-trials 8
  python benchmarks/protocol.py --all-methods     # learned maps, clairvoyant bounds
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
  from benchmarks import _machine
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine

from uniroute_jax import clustering, protocol

FAST = ("zero", "knn", "kmeans")
EVERY = ("zero", "knn", "kmeans", "kmeans_matched", "learned_map",
         "learned_map_linear", "mlp", "matfac")


# ------------------------------------------------- the NumPy / sklearn loop


def numpy_curve_area(gamma, truth, paid, rank_cost, weights):
  """Area of the exact deferral curve of argmin gamma + lambda * cost.

  Each prompt walks down the lower convex hull of its (cost, gamma) points;
  every switch is an event (lambda, change of cost, change of loss), and the
  curve is the running sums in lambda order, made monotone and integrated
  over relative cost in [0, 1].
  """
  n, m = gamma.shape
  rows = np.arange(n)
  cost = np.broadcast_to(rank_cost, gamma.shape)
  paid = np.broadcast_to(paid, gamma.shape)
  order = np.lexsort((cost, gamma), axis=1)[:, 0]   # min gamma, cheaper on ties
  current, lam = order.copy(), np.zeros(n)
  events = []
  for _ in range(m - 1):
    c_cur, g_cur = cost[rows, current][:, None], gamma[rows, current][:, None]
    cheaper = cost < c_cur
    gap = np.where(cheaper, c_cur - cost, 1.0)
    breakeven = np.where(cheaper, np.maximum((gamma - g_cur) / gap, lam[:, None]),
                         np.inf)
    key = np.lexsort((cost, breakeven), axis=1)[:, 0]
    nxt_lam = breakeven[rows, key]
    moves = np.isfinite(nxt_lam)
    nxt = np.where(moves, key, current)
    events.append((nxt_lam, weights * (paid[rows, nxt] - paid[rows, current]),
                   weights * (truth[rows, nxt] - truth[rows, current])))
    current, lam = nxt, np.where(moves, nxt_lam, lam)
  total = weights.sum()
  start_cost = (weights * paid[rows, order]).sum() / total
  start_loss = (weights * truth[rows, order]).sum() / total
  lam, d_cost, d_loss = (np.concatenate(part) for part in zip(*events))
  sort = np.argsort(lam, kind="stable")
  lam = lam[sort]
  cost_curve = start_cost + np.cumsum(d_cost[sort]) / total
  loss_curve = start_loss + np.cumsum(d_loss[sort]) / total
  last = np.append(lam[1:] != lam[:-1], True) & np.isfinite(lam)
  x = np.concatenate([[start_cost], cost_curve[last]])
  y = 1 - np.concatenate([[start_loss], loss_curve[last]])
  max_cost = (weights[:, None] * paid).sum(0).max() / total
  x = x / max_cost
  keep = np.lexsort((-y, x))
  x, y = x[keep], y[keep]
  best = np.maximum.accumulate(y)
  on = np.concatenate([[True], y[1:] > best[:-1]])
  x, y = x[on], y[on]
  x1 = np.minimum(np.append(x, 1.0), 1.0)
  area = y[0] * x1[0] + np.sum((x1[1:] - x1[:-1]) * (y + np.append(y[1:], y[-1])) / 2
                                * (np.arange(len(y)) < len(y) - 1)) + (
                                    y[-1] * max(1.0 - x1[len(y) - 1], 0.0))
  return float(area)


def _validation_area(gamma, trial):
  mask = trial["val_train_mask"]
  w = mask.all(axis=1).astype(float)
  cost = trial["val_train_cost"]
  rank = cost.mean(0) if cost.ndim == 2 else cost
  return numpy_curve_area(gamma, np.where(mask, trial["val_train_loss"], 0.0),
                          cost, rank, w)


def _psi(clusters, loss, mask, k):
  onehot = np.eye(k)[clusters]
  counts = onehot.T @ mask
  sums = onehot.T @ np.where(mask, loss, 0.0)
  overall = np.where(mask.sum(0) > 0, np.where(mask, loss, 0).sum(0)
                     / np.maximum(mask.sum(0), 1), 1.0)
  return np.where(counts > 0, sums / np.maximum(counts, 1), overall[None])


def numpy_trial(trial, grid_k, grid_nn, *, seed, init=None):
  """ZeroRouter, K-NN and UniRoute (K-means) on one trial: their areas."""
  from sklearn.cluster import KMeans
  from sklearn.neighbors import NearestNeighbors
  test_w, test_loss = trial["test_weights"], trial["test_loss"]
  test_cost, route_cost = trial["test_cost"], trial["test_route_cost"]

  def test_area(gamma):
    return numpy_curve_area(gamma, test_loss, test_cost, route_cost, test_w)

  out = {}
  # ZeroRouter: the hull of (cost, mean validation loss) is K-means with K = 1.
  mean = _psi(np.zeros(len(trial["val_emb"]), int), trial["val_test_loss"],
              trial["val_test_mask"], 1)
  points = np.broadcast_to(mean, test_loss.shape)
  out["zero"] = numpy_curve_area(points, test_loss, test_cost, route_cost, test_w)
  # K-NN: one search with the largest k, prefix means for the others.
  def knn(query, reference, loss, mask, ks):
    search = NearestNeighbors(n_neighbors=max(ks), metric="cosine",
                              algorithm="brute").fit(reference)
    _, nearest = search.kneighbors(query)
    sums = np.cumsum(np.where(mask, loss, 0.0)[nearest], axis=1)
    counts = np.cumsum(mask[nearest], axis=1)
    overall = np.where(mask, loss, 0).sum(0) / np.maximum(mask.sum(0), 1)
    return [np.where(counts[:, k - 1] > 0, sums[:, k - 1]
                     / np.maximum(counts[:, k - 1], 1), overall) for k in ks]
  areas = [_validation_area(g, trial) for g in knn(
      trial["val_emb"], trial["train_emb"], trial["train_loss"],
      trial["train_mask"], grid_nn)]
  best = int(np.argmax(areas))
  gamma = knn(trial["test_emb"], trial["val_emb"], trial["val_test_loss"],
              trial["val_test_mask"], (grid_nn[best],))[0]
  out["knn"] = test_area(gamma)
  # UniRoute (K-means): sklearn's Lloyd per candidate K.
  best_area, best_gamma = -np.inf, None
  for i, k in enumerate(grid_k):
    fit = KMeans(k, init="k-means++" if init is None else init[i], n_init=1,
                 max_iter=100, tol=1e-4, algorithm="lloyd",
                 random_state=seed + i).fit(trial["train_emb"])
    val = fit.predict(trial["val_emb"])
    train_psi = _psi(fit.labels_, trial["train_loss"], trial["train_mask"], k)
    area = _validation_area(train_psi[val], trial)
    if area > best_area:
      test_psi = _psi(val, trial["val_test_loss"], trial["val_test_mask"], k)
      best_area, best_gamma = area, test_psi[fit.predict(trial["test_emb"])]
  out["kmeans"] = test_area(best_gamma)
  return out


def host_trial(arrays, split):
  trial = protocol.gather_trial(arrays, split)
  return {name: np.asarray(value, np.float64 if np.issubdtype(
      np.asarray(value).dtype, np.floating) else None)
          for name, value in trial._asdict().items()}


# ---------------------------------------------------------------- the run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=400)
  parser.add_argument("--baseline-trials", type=int, default=8,
                      help="trials the NumPy / scikit-learn loop runs (timed "
                           "per trial; it is slow)")
  parser.add_argument("--check-trials", type=int, default=4,
                      help="trials with fixed K and k on which both must "
                           "give the same areas")
  parser.add_argument("--all-methods", type=int, default=0, metavar="T",
                      help="also time every method (learned maps, clairvoyant "
                           "bounds) on T trials, scaled to --trials")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  data = _machine.load_mmlu_pro()
  if data is None:
    return 0
  splits = protocol.make_trials(jax.random.key(0), args.trials, data.num_prompts,
                                data.num_models)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  grid_k = protocol.default_cluster_grid(n_train, n_val)
  grid_nn = protocol.default_neighbor_grid(n_train, n_val)
  lines = ["# The protocol on MMLU-Pro: uniroute_jax against a NumPy + "
           "scikit-learn loop", "",
           f"{data.num_prompts} prompts x {data.num_models} LLMs; per trial "
           f"{n_train} / {n_val} / {splits.test.shape[1]} train / validation / "
           f"test prompts, {splits.train_models.shape[1]} training and "
           f"{splits.test_models.shape[1]} unseen test LLMs. Candidates K "
           f"{list(grid_k)}, k {list(grid_nn)}, chosen per trial on the "
           f"training LLMs (App. F.1).", ""]

  def timed_run(methods, trials):
    part = protocol.Split(*(p[:trials] for p in splits))
    first = protocol.Split(*(p[:args.batch_size] for p in splits))
    start = time.perf_counter()
    protocol.run_trials(jax.random.key(1), data, first, methods=methods,
                        batch_size=args.batch_size)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    results, _ = protocol.run_trials(jax.random.key(1), data, part,
                                     methods=methods, batch_size=args.batch_size)
    return first_s, time.perf_counter() - start, results

  # K-NN's neighbour lists: found once per run, whatever the trials.
  knn_method = protocol.KNN().resolve(n_train, n_val)
  list_length = knn_method.neighbor_list_length(data.num_prompts, n_train)
  protocol.dataset_arrays(data, neighbor_list_length=list_length)  # compiles
  start = time.perf_counter()
  listed = protocol.dataset_arrays(data, neighbor_list_length=list_length)
  jax.block_until_ready(listed.neighbors)
  lists_s = time.perf_counter() - start
  # Trial 0 with its K-NN lists, for the breakdown and the floor.
  listed_trial = jax.jit(protocol.gather_trial)(
      listed, protocol.Split(*(jnp.asarray(p[0]) for p in splits)))

  print(f"uniroute_jax: {args.trials} trials of {', '.join(FAST)}", flush=True)
  first_s, run_s, _ = timed_run(FAST, args.trials)
  # A trial's share of the run, K-NN's lists (found once per run) apart;
  # the first call's time less the lists and one compiled batch's run.
  per_trial = max(run_s - lists_s, 0.0) / args.trials
  compile_s = max(first_s - lists_s - per_trial * args.batch_size, 0.0)
  print(f"  compile ~{compile_s:.1f} s, run {run_s:.1f} s", flush=True)

  print(f"NumPy + scikit-learn: {args.baseline_trials} trials", flush=True)
  arrays = protocol.dataset_arrays(data)
  start = time.perf_counter()
  for t in range(args.baseline_trials):
    trial = host_trial(arrays, protocol.Split(*(p[t] for p in splits)))
    numpy_trial(trial, grid_k, grid_nn, seed=t)
  baseline_per_trial = (time.perf_counter() - start) / args.baseline_trials
  print(f"  {baseline_per_trial:.2f} s per trial", flush=True)

  # Correctness: fixed K and k, k-means started from the same centroids.
  fixed_k, fixed_nn = 10, 61
  methods = (protocol.ZeroRouter(), protocol.KNN(neighbors=(fixed_nn,)),
             protocol.KMeansRouter(clusters=(fixed_k,)))
  check = protocol.Split(*(p[:args.check_trials] for p in splits))
  ours, _ = protocol.run_trials(jax.random.key(1), data, check, methods=methods)
  worst = 0.0
  for t in range(args.check_trials):
    trial = host_trial(arrays, protocol.Split(*(p[t] for p in splits)))
    # Our k-means from our k-means++ seeding; sklearn's Lloyd from the same
    # seeding reaches the same fixed point.
    key = protocol.running.method_key(jax.random.fold_in(jax.random.key(1), t),
                                      methods[2])
    ref = numpy_trial(trial, (fixed_k,), (fixed_nn,), seed=t,
                      init=[np.asarray(_plusplus_start(key, trial, fixed_k))])
    for name in FAST:
      worst = max(worst, abs(ref[name] - float(ours[name].area[t])))
  ok = worst < 2e-3
  print(f"  largest area difference, fixed K and k: {worst:.2e}"
        f" ({'ok' if ok else 'MISMATCH'})", flush=True)

  ratio = baseline_per_trial / per_trial
  lines += [
      "## ZeroRouter + K-NN + UniRoute (K-means), K and k chosen per trial", "",
      _machine.table(
          ["", "first batch (compile + run)", "compile (about)", "run",
           "trials / s", "s / trial"],
          [["uniroute_jax", f"{first_s:.1f} s", f"{compile_s:.1f} s",
            f"{run_s:.1f} s for {args.trials} trials (lists included)",
            f"{1 / per_trial:.2f}", f"{per_trial:.3f}"],
           ["NumPy + scikit-learn loop", "", "",
            f"{baseline_per_trial * args.baseline_trials:.1f} s for "
            f"{args.baseline_trials} trials", f"{1 / baseline_per_trial:.2f}",
            f"{baseline_per_trial:.3f}"]]),
      f"Ratio (loop time / uniroute_jax time, per trial): {ratio:.1f}x. "
      f"400 trials: uniroute_jax {first_s + per_trial * (400 - args.batch_size):.0f} s "
      f"including compilation; the loop about {baseline_per_trial * 400:.0f} s.",
      "",
      f"Correctness: with K = {fixed_k} and k = {fixed_nn} fixed and the k-means "
      f"fits started from the same centroids, the per-trial areas of the "
      f"three routers agree to {worst:.1e} over {args.check_trials} trials.",
      "",
      f"The run includes, once, K-NN's lists of every prompt's {list_length} "
      f"nearest prompts ({lists_s:.1f} s), which every trial's search reads.",
      ""]
  parts, lloyd_flops = breakdown(data, splits, grid_k, grid_nn, list_length,
                                 lists_s, listed_trial)
  lines += parts
  if args.all_methods:
    trials = min(args.all_methods, args.trials)
    rows = []
    for name in EVERY:
      print(f"uniroute_jax: {trials} trials of {name}", flush=True)
      first_one, run_one, _ = timed_run((name,), trials)
      method = protocol.BUILT_IN[name].resolve(n_train, n_val)
      once, per = 0.0, run_one / trials
      more = min(2 * trials, args.trials)
      if method.neighbor_list_length(data.num_prompts, n_train) and more > trials:
        # Its lists are found once per run: what more trials add is the
        # trials' own time.
        _, run_more, _ = timed_run((name,), more)
        per = max(run_more - run_one, 0.0) / (more - trials)
        once = max(run_one - per * trials, 0.0)
      rows.append([method.title, f"{first_one:.1f} s",
                   f"{once:.1f} s" if once else "", f"{per:.3f}",
                   f"{(once + per * args.trials) / 60:.1f} min"])
    once_total = sum(float(r[2][:-2]) for r in rows if r[2])
    total = sum(float(r[3]) for r in rows)
    rows.append(["every method", "", f"{once_total:.1f} s", f"{total:.3f}",
                 f"{(once_total + total * args.trials) / 60:.1f} min"])
    lines += [f"## Every method, one at a time ({trials} trials each, scaled)", "",
              _machine.table(["method", "first batch (compile + run)",
                              "once per run", "s / trial",
                              f"{args.trials} trials"], rows), ""]
  lines += floor(listed_trial, n_train, n_val, lloyd_flops, args.trials)
  _machine.finish("benchmarks/protocol.py", argv, lines, args.out)
  return 0 if ok else 1


def floor(trial, n_train, n_val, lloyd_flops, trials) -> list[str]:
  """What each method's matmuls alone would take at this machine's peak
  matmul rate: a floor under any schedule of the same arithmetic.

  ``trial`` is trial 0 with K-NN's lists; ``lloyd_flops`` the FLOPs of its
  k-means fits' Lloyd iterations (from :func:`breakdown`)."""
  big, step = matmul_rate(2048, 2048, 2048), matmul_rate(64, 384, 1024)
  rate = max(big, step)
  rows, fast_flops, every_flops = [], 0, 0
  for name in EVERY:
    method = protocol.BUILT_IN[name].resolve(n_train, n_val)
    jaxpr = jax.make_jaxpr(method.run)(trial, jax.random.key(0)).jaxpr
    fixed, per_loop = fixed_loop_flops(jaxpr)
    lloyd = lloyd_flops if per_loop else 0
    total = fixed + lloyd
    every_flops += total
    fast_flops += total if name in FAST else 0
    rows.append([method.title, f"{fixed / 1e9:.1f}",
                 f"{lloyd / 1e9:.1f}" if lloyd else "",
                 f"{total / rate:.3f}", f"{total * trials / rate / 60:.1f} min"])
  for title, flops in (("ZeroRouter + K-NN + UniRoute (K-means)", fast_flops),
                       ("every method", every_flops)):
    rows.append([title, "", "", f"{flops / rate:.3f}",
                 f"{flops * trials / rate / 60:.1f} min"])
  return [
      "## The matmuls' floor", "",
      "Matrix-multiply FLOPs of one trial (trial 0), counted in each method's "
      "traced program: fixed-length loops (training steps) by "
      "their length; k-means' Lloyd iterations by trial 0's counts of the "
      f"unpadded fits above (each method that clusters fits the same "
      f"{len(protocol.default_cluster_grid(n_train, n_val))} K); of the "
      "branches of a choice (a `cond`, or what runs on this platform) the "
      "cheapest, so k-means++'s steps, each behind a choice that skips "
      "unused slots, count nothing; K-NN reads the shared lists (whose one-time cost is left "
      "out). At the fastest float32 matmul rate measured here, "
      f"{rate / 1e9:.0f} GFLOP/s (the better of a [2048, 2048] product, "
      f"{big / 1e9:.0f}, and a training step's first product, {step / 1e9:.0f}: "
      "[64, 384] x [384, 1024], 64 prompts through eight maps of 128 units; "
      "both on every core), they alone take:", "",
      _machine.table(["method", "GFLOP, fixed loops", "GFLOP, Lloyd",
                      "s / trial at peak", f"{trials} trials at peak"], rows),
      ""]


def _median_ms(fn, *args, repeats: int = 3) -> float:
  """Median wall time of a jitted ``fn`` after one warm-up call."""
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def breakdown(data, splits, grid_k, grid_nn, list_length, lists_s,
              listed_trial):
  """Where one trial's time goes: the parts of K-NN and of the K-means
  search, each timed alone on trial 0 (K-NN's lists, found once per run,
  took ``lists_s``; ``listed_trial`` is trial 0 with them).

  Returns the report's lines and the FLOPs of the k-means fits' Lloyd
  iterations (:func:`fixed_loop_flops` of one iteration, times the count)."""
  from uniroute_jax.baselines import knn
  arrays = protocol.dataset_arrays(data)
  trial = jax.jit(protocol.gather_trial)(
      arrays, protocol.Split(*(jnp.asarray(p[0]) for p in splits)))
  ks = jnp.asarray(grid_nn, jnp.int32)
  k_max = int(max(grid_nn))
  rows = []
  scores = jnp.matmul(trial.val_emb, trial.train_emb.T)
  rows.append(["K-NN: validation x training similarities",
               f"{_median_ms(lambda q, r: q @ r.T, trial.val_emb, trial.train_emb):.0f}"])
  rows.append([f"K-NN: top_k({k_max}) of them",
               f"{_median_ms(lambda s: jax.lax.top_k(s, k_max), scores):.0f}"])
  grid = lambda t: knn.knn_predicted_loss_grid(
      t.val_emb, t.train_emb, t.train_loss, mask=t.train_mask,
      num_neighbors=ks, max_neighbors=k_max)
  rows.append([f"K-NN: the whole grid search ({len(grid_nn)} k), ranking "
               "the trial's training prompts", f"{_median_ms(grid, trial):.0f}"])
  # As the protocol runs it: from every prompt's nearest prompts, found once.
  rows.append([f"K-NN: every prompt's {list_length} nearest prompts (once for "
               "all trials)", f"{lists_s * 1e3:.0f}"])
  from_lists = lambda t: knn.knn_predicted_loss_grid_from_lists(
      t.val_train_neighbors, t.train_loss, mask=t.train_mask,
      num_neighbors=ks, max_neighbors=k_max)
  rows.append(["K-NN: the grid search from those lists",
               f"{_median_ms(from_lists, listed_trial):.0f}"])
  gammas = jax.jit(grid)(trial)
  rows.append([f"{len(grid_nn)} validation areas (one per candidate)",
               f"{_median_ms(lambda g, t: jax.vmap(lambda x: protocol.validation_area(x, t))(g), gammas, trial):.0f}"])
  rows.append(["K-NN: test prompts, chosen k",
               f"{_median_ms(lambda t, k: knn.knn_predicted_loss(t.test_emb, t.val_emb, t.val_test_loss, mask=t.val_test_mask, num_neighbors=k), trial, jnp.int32(grid_nn[len(grid_nn) // 2])):.0f}"])
  total_fit, total_iter, lloyd_flops = 0.0, 0, 0
  for i, k in enumerate(grid_k):
    key = jax.random.fold_in(jax.random.key(0), i)
    fit = lambda x, key, k=k: clustering.kmeans(key, x, num_clusters=k, max_iter=100)
    ms = _median_ms(fit, trial.train_emb, key)
    iters = int(jax.jit(fit)(trial.train_emb, key).num_iterations)
    # The while loop's body is one Lloyd iteration.
    per_iteration = fixed_loop_flops(jax.make_jaxpr(fit)(trial.train_emb, key).jaxpr)[1]
    total_fit, total_iter = total_fit + ms, total_iter + iters
    lloyd_flops += iters * per_iteration
    rows.append([f"k-means K = {k} ({iters} Lloyd iterations)", f"{ms:.0f}"])
  rows.append([f"k-means, all {len(grid_k)} K ({total_iter} iterations)",
               f"{total_fit:.0f}"])
  return ["## Where one trial's time goes (trial 0, each part alone)", "",
          _machine.table(["part", "ms"], rows), ""], lloyd_flops


def fixed_loop_flops(jaxpr) -> tuple[int, int]:
  """(matmul FLOPs in fixed-length loops, those in while loops' bodies
  counted once) of a closed jaxpr.

  A ``scan`` runs its body ``length`` times, so the training loops of the
  learned maps and the clairvoyant bounds are counted exactly; a
  ``while_loop`` (a k-means fit) stops when it converges, so its body is
  counted apart, once. A ``cond`` or ``switch`` counts its cheapest branch,
  as a floor must (a ``platform_dependent`` choice among them too).
  """
  fixed = once = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      ls, rs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      free = lambda shape, *axes: math.prod(
          n for i, n in enumerate(shape) if i not in set(sum(axes, ())))
      fixed += 2 * free(ls, lc, lb) * free(rs, rc, rb) * math.prod(
          ls[i] for i in lc) * math.prod(ls[i] for i in lb)
    elif name == "scan":
      f, o = fixed_loop_flops(eqn.params["jaxpr"].jaxpr)
      fixed, once = fixed + eqn.params["length"] * f, once + o
    elif name == "while":
      f, o = fixed_loop_flops(eqn.params["body_jaxpr"].jaxpr)
      once += f + o
    elif name == "cond":
      counts = [fixed_loop_flops(b.jaxpr) for b in eqn.params["branches"]]
      fixed += min(c[0] for c in counts)
      once += min(c[1] for c in counts)
    else:
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (tuple, list)) else (param,)):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            f, o = fixed_loop_flops(inner)
            fixed, once = fixed + f, once + o
  return fixed, once


def matmul_rate(rows: int, inner: int, cols: int, repeats: int = 5) -> float:
  """FLOP/s of a [rows, inner] x [inner, cols] float32 matmul here, repeated
  inside one call so that the call's own cost does not count."""
  a = jnp.ones((rows, inner), jnp.float32)
  b = jnp.ones((inner, cols), jnp.float32)
  times = max(1, 2 ** 30 // (2 * rows * inner * cols))

  def many(a, b):
    def one(total, i):
      return total + jnp.sum(jnp.matmul(a + i, b)), None
    return jax.lax.scan(one, 0.0, jnp.arange(times, dtype=jnp.float32))[0]

  ms = _median_ms(many, a, b, repeats=repeats)
  return 2 * rows * inner * cols * times / (ms / 1e3)


def _plusplus_start(key, trial, k):
  """The k-means++ centroids our fit for candidate 0 starts from."""
  x = trial["train_emb"].astype(np.float32)
  return clustering.kmeans_plusplus(jax.random.fold_in(key, 0), x, num_clusters=k)


if __name__ == "__main__":
  sys.exit(main())
