"""Time to train the UniRoute LearnedMap: one trial, and 400 trials at once.

On the shared MMLU-Pro data (EmbedLLM layout, MiniLM embeddings), each trial
holds out its own prompts and LLMs (the protocol's splits: 60% training
prompts, 18 training LLMs). Per trial, k-means on the training prompts gives
the training LLMs' Psi (outside the timed region); the timed part is fitting
the paper's map (BatchNorm, two Dense(128)-BatchNorm-ReLU blocks, Dense(K),
softmax; Adam 5e-3, batch 64, 5 epochs) to the training LLMs' labels, for
one K. The protocol fits one map per candidate K (8 on MMLU-Pro).

Compared side by side:
  - ``fit_cluster_map`` for one trial (compile once, then the best of runs);
  - 400 trials as a Python loop over the jitted single-trial fit;
  - 400 trials vmapped over trials, in batches of ``--batch`` trials;
  - the same network and training in PyTorch (CPU), the framework a user
    would otherwise pick, for one trial (when torch is installed).

  python benchmarks/learned_map_training.py --out benchmarks/results/learned_map_training.md
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

from uniroute_jax import clustering, features, protocol
from uniroute_jax.cluster_map import apply_cluster_map, fit_cluster_map


def trial_inputs(data, splits, num_clusters: int, seed: int):
  """Per trial: training embeddings, the training LLMs' labels, mask and Psi."""
  emb = jnp.asarray(data.embeddings, jnp.float32)
  loss = jnp.asarray(data.loss, jnp.float32)
  mask = jnp.asarray(data.mask)

  @jax.jit
  def one(train, models, key):
    x = emb[train]
    y, m = loss[train][:, models], mask[train][:, models]
    fit = clustering.kmeans(key, x, num_clusters=num_clusters, max_iter=30)
    psi = features.cluster_errors(fit.assignment, y, mask=m,
                                  num_clusters=num_clusters).psi
    return x, y, m, psi

  keys = jax.random.split(jax.random.key(seed), splits.train.shape[0])
  parts = [one(splits.train[t], splits.train_models[t], keys[t])
           for t in range(splits.train.shape[0])]
  return tuple(np.stack([np.asarray(p[i]) for p in parts]) for i in range(4))


def fit_one(key, x, y, m, psi):
  return fit_cluster_map(key, x, y, psi, mask=m)


def run_torch(x, y, m, psi, epochs: int, seed: int):
  """The same map and training in PyTorch: BatchNorm-MLP, softmax, masked BCE
  of Phi Psi against the labels, Adam 5e-3, batch 64, partial batches dropped."""
  import torch
  torch.manual_seed(seed)
  d, k = x.shape[1], psi.shape[0]
  net = torch.nn.Sequential(
      torch.nn.BatchNorm1d(d, affine=False, momentum=0.01),
      torch.nn.Linear(d, 128, bias=False), torch.nn.BatchNorm1d(128, momentum=0.01),
      torch.nn.ReLU(),
      torch.nn.Linear(128, 128, bias=False), torch.nn.BatchNorm1d(128, momentum=0.01),
      torch.nn.ReLU(),
      torch.nn.Linear(128, k), torch.nn.Softmax(dim=-1))
  opt = torch.optim.Adam(net.parameters(), lr=5e-3)
  xt, yt, mt = (torch.as_tensor(np.asarray(a)) for a in (x, y, m))
  psit = torch.as_tensor(np.asarray(psi))
  n, batch = xt.shape[0], 64
  eps = 1e-6
  for _ in range(epochs):
    order = torch.randperm(n)
    for s in range(n // batch):
      rows = order[s * batch:(s + 1) * batch]
      gamma = (net(xt[rows]) @ psit).clamp(eps, 1 - eps)
      e, mask = yt[rows], mt[rows].float()
      ll = e * torch.log(gamma) + (1 - e) * torch.log1p(-gamma)
      loss = -(ll * mask).sum() / mask.sum().clamp(min=1)
      opt.zero_grad()
      loss.backward()
      opt.step()
  return net


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=400)
  parser.add_argument("--clusters", type=int, default=7,
                      help="K (the median K the protocol picks on MMLU-Pro)")
  parser.add_argument("--batch", type=int, default=50,
                      help="trials per vmapped call")
  parser.add_argument("--loop-trials", type=int, default=40,
                      help="trials timed in the Python loop (scaled to --trials)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="also write the report as Markdown here")
  args = parser.parse_args(argv)
  data = _machine.load_mmlu_pro()
  if data is None:
    return 1
  splits = protocol.make_trials(jax.random.key(args.seed), args.trials,
                                data.num_prompts, data.num_models)
  print("k-means and Psi per trial (not timed) ...", flush=True)
  x, y, m, psi = trial_inputs(data, splits, args.clusters, args.seed)
  keys = jax.random.split(jax.random.key(args.seed + 1), args.trials)
  n, d = x.shape[1:]
  block = jax.block_until_ready

  print("one trial ...", flush=True)
  start = time.perf_counter()
  block(fit_one(keys[0], x[0], y[0], m[0], psi[0]))
  first_call = time.perf_counter() - start
  one_trial, fitted = _machine.best_time(
      lambda: fit_one(keys[0], x[0], y[0], m[0], psi[0]), args.repeats, block)

  print("Python loop over trials ...", flush=True)
  loop_trials = min(args.loop_trials, args.trials)
  start = time.perf_counter()
  for t in range(loop_trials):
    block(fit_one(keys[t], x[t], y[t], m[t], psi[t]))
  loop_total = (time.perf_counter() - start) * args.trials / loop_trials

  print("vmapped batches ...", flush=True)
  batched = jax.jit(jax.vmap(fit_one))
  b = min(args.batch, args.trials)
  block(batched(keys[:b], x[:b], y[:b], m[:b], psi[:b]))  # compile
  start = time.perf_counter()
  histories = []
  for lo in range(0, args.trials, b):
    idx = np.minimum(np.arange(lo, lo + b), args.trials - 1)
    out = block(batched(keys[idx], x[idx], y[idx], m[idx], psi[idx]))
    histories.append(np.asarray(out.loss_history)[: min(b, args.trials - lo)])
  vmapped_total = time.perf_counter() - start
  histories = np.concatenate(histories)

  torch_time, torch_note = None, "not installed"
  try:
    import torch
    torch_note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    print("PyTorch, one trial ...", flush=True)
    torch_time, _ = _machine.best_time(
        lambda: run_torch(x[0], y[0], m[0], psi[0], 5, args.seed), args.repeats)
  except ImportError:
    pass

  # The fit is a real one: the map's clusters carry the training LLMs' Psi.
  phi = np.asarray(apply_cluster_map(fitted, x[0]))
  steps = 5 * (n // 64)
  rows = [
      ["fit_cluster_map, 1 trial (compiled)", f"{one_trial:.3f} s", "1.00",
       f"{1e6 * one_trial / steps:.0f} us/step"],
      ["  first call, with compilation", f"{first_call:.2f} s",
       f"{first_call / one_trial:.1f}", ""],
      [f"{args.trials} trials, Python loop of jitted fits",
       f"{loop_total:.1f} s", f"{loop_total / args.trials / one_trial:.2f} per trial",
       f"timed on {loop_trials} trials, scaled"],
      [f"{args.trials} trials, vmapped in batches of {b}",
       f"{vmapped_total:.1f} s", f"{vmapped_total / args.trials / one_trial:.2f} per trial",
       f"{loop_total / vmapped_total:.2f}x faster than the loop"],
  ]
  if torch_time is not None:
    rows.append(["PyTorch (CPU), 1 trial, same network and steps",
                 f"{torch_time:.3f} s", f"{torch_time / one_trial:.2f}", torch_note])
  lines = [
      f"# LearnedMap training time on MMLU-Pro ({args.trials} trials)", "",
      f"{n} training prompts x {d} dims, {y.shape[2]} training LLMs, K = "
      f"{args.clusters}; the paper's network and training (Adam 5e-3, batch 64, "
      f"5 epochs = {steps} steps). Time of the fit only (k-means and Psi "
      "excluded); the protocol fits one map per candidate K, so a trial of "
      "the protocol costs about 8 of these fits on MMLU-Pro. The paper "
      "reports \"a few minutes per trial\" on CPU.", "",
      _machine.table(["what", "time", "relative to 1 trial", "note"], rows),
      f"Training loss, epoch 1 -> 5, mean over trials: "
      f"{histories[:, 0].mean():.4f} -> {histories[:, -1].mean():.4f}; "
      f"trial 0's map uses {int((phi.max(1) > 0.5).sum())} / {n} prompts' "
      f"confident (> 0.5) clusters over {len(set(phi.argmax(1).tolist()))} "
      "clusters.", "",
  ]
  _machine.finish("benchmarks/learned_map_training.py", argv, lines, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
