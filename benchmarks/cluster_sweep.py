"""How UniRoute's and K-NN's areas depend on K and k, with the trials held fixed.

A diagnostic for the reproduction table: the protocol picks K and k per trial
on the training LLMs; here each value is fixed in turn, on the same trials,
so one sees whether the selection grid, the selection rule or the method
itself limits the area. K = 1 is ZeroRouter (Prop. 9 of the paper), so its
row must equal ZeroRouter's where costs are per LLM.

  python benchmarks/cluster_sweep.py --dataset mmlu_pro --trials 20
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
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
  import _machine

from uniroute_jax import protocol
from uniroute_jax.data import load_embedllm, load_routerbench, make_synthetic


def load(name: str, seed: int):
  root = _machine.data_root() or ""
  if name == "mmlu_pro":
    return load_embedllm(os.path.join(root, "mmlu_pro")), dict(test_model_frac=1 / 3)
  if name == "routerbench":
    return (load_routerbench(os.path.join(root, "routerbench"),
                             merge_duplicate_ids=True), dict(test_model_frac=0.5))
  return make_synthetic(jax.random.key(seed)), dict(test_model_frac=1 / 3)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=("mmlu_pro", "routerbench", "synthetic"),
                      default="mmlu_pro")
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--val-frac", type=float, default=0.1)
  parser.add_argument("--clusters", default="1,3,6,12,24,48,100")
  parser.add_argument("--neighbors", default="5,20,50,100,200,400")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)

  data, kwargs = load(args.dataset, args.seed)
  key = jax.random.key(args.seed)
  splits = protocol.make_trials(key, args.trials, data.num_prompts,
                                data.num_models, val_frac=args.val_frac, **kwargs)
  n_train, n_val = splits.train.shape[1], splits.val.shape[1]
  start = time.perf_counter()

  def areas(method):
    out, _ = protocol.run_trials(key, data, splits, methods=(method,),
                                 curve_points=11)
    return out[method.name].area

  reference = {name: areas(protocol.BUILT_IN[name]) for name in ("zero", "oracle")}
  selected, _ = protocol.run_trials(key, data, splits, methods=("knn", "kmeans"),
                                    curve_points=11)
  rows = [["ZeroRouter", "", f"{reference['zero'].mean():.4f}", ""],
          ["Oracle", "", f"{reference['oracle'].mean():.4f}", ""]]
  best_knn = selected["knn"].area
  for name, hp in (("knn", "k"), ("kmeans", "K")):
    s = selected[name]
    rows.append([f"{protocol.BUILT_IN[name].title}, selected per trial",
                 f"median {hp}={int(np.median(s.chosen))}",
                 f"{s.area.mean():.4f}",
                 f"{protocol.sign_test(s.area, best_knn).wins}"
                 f"-{protocol.sign_test(s.area, best_knn).losses}"
                 if name != "knn" else ""])
  for k in (int(v) for v in args.neighbors.split(",")):
    if k <= min(n_train, n_val):
      a = areas(protocol.KNN(neighbors=(k,)))
      t = protocol.sign_test(a, best_knn)
      rows.append(["K-NN, fixed", f"k={k}", f"{a.mean():.4f}", f"{t.wins}-{t.losses}"])
  for k in (int(v) for v in args.clusters.split(",")):
    if k <= n_train:
      a = areas(protocol.KMeansRouter(clusters=(k,)))
      t = protocol.sign_test(a, best_knn)
      rows.append(["UniRoute (K-means), fixed", f"K={k}", f"{a.mean():.4f}",
                   f"{t.wins}-{t.losses}"])
  seconds = time.perf_counter() - start
  lines = [
      f"# Area against K and k: {args.dataset}",
      "",
      f"{data.num_prompts} prompts x {data.num_models} LLMs; {args.trials} "
      f"trials (the same splits in every row); {n_train}/{n_val} train/"
      f"validation prompts; validation fraction {args.val_frac}. Mean "
      "per-trial area; \"vs K-NN\" counts trials won-lost against K-NN with "
      f"k selected per trial. {seconds:.0f} s.",
      "",
      _machine.table(["router", "setting", "mean area", "vs K-NN (selected)"], rows),
      "",
  ]
  _machine.finish("benchmarks/cluster_sweep.py", argv, lines, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
