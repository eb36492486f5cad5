"""The ``uniroute`` command line. Parses arguments, prints, sets exit codes.

Errors a user can fix (bad flags, bad input) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

_EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line and exit 2."""

  def error(self, message):  # noqa: D102 - argparse's hook
    raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
  pass


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def _build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="uniroute",
      description="Universal LLM routing (UniRoute) in JAX.")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                   parser_class=_Parser)
  demo = commands.add_parser(
      "demo", help="route synthetic prompts to unseen LLMs and compare routers",
      description=(
          "Generate a synthetic routing problem, fit k-means on training "
          "prompts, represent UNSEEN test LLMs by their validation errors, "
          "route the test prompts and compare ZeroRouter, K-NN, UniRoute "
          "(K-means) and the per-prompt oracle."))
  demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  demo.add_argument("--prompts", type=_positive_int, default=5000,
                    help="number of prompts (default 5000)")
  demo.add_argument("--llms", type=_positive_int, default=12,
                    help="number of LLMs; a third are held out (default 12)")
  demo.add_argument("--clusters", type=_positive_int, default=None,
                    help="K for UniRoute (default: validation prompts / 50)")
  demo.add_argument("--neighbors", type=_positive_int, default=None,
                    help="k for K-NN (default: sqrt(validation prompts))")
  return parser


def _format_table(results, titles) -> str:
  header = f"{'method':<22} {'Area':>7} {'Area(50%)':>10} {'QNC':>8} {'peak':>7}"
  lines = [header, "-" * len(header)]
  for name, result in results.items():
    m = result.metrics
    qnc = float(m.qnc)
    qnc_text = "never" if math.isinf(qnc) else f"{100 * qnc:.1f}%"
    lines.append(f"{titles[name]:<22} {float(m.area):7.3f} {float(m.area50):10.3f} "
                 f"{qnc_text:>8} {float(m.peak_quality):7.3f}")
  return "\n".join(lines)


def _run_demo(args) -> int:
  import jax  # Deferred: `uniroute --help` should not pay for JAX start-up.
  from uniroute_jax import protocol
  from uniroute_jax.data import make_synthetic

  start = time.perf_counter()
  steps = iter(range(1, 10))

  def progress(message: str) -> None:
    print(f"[{next(steps)}] {message} ...", file=sys.stderr, flush=True)

  key = jax.random.key(args.seed)
  data_key, split_key, fit_key = jax.random.split(key, 3)
  # Everything a user can get wrong is checked before any work starts.
  split = protocol.make_split(split_key, args.prompts, args.llms)
  n_train, n_val = len(split.train), len(split.val)
  clusters = args.clusters or protocol.default_num_clusters(n_val)
  neighbors = args.neighbors or protocol.default_num_neighbors(n_val)
  if clusters > n_train:
    raise ValueError(f"--clusters must be at most the number of training "
                     f"prompts ({n_train}), got {clusters}")
  if neighbors > n_val:
    raise ValueError(f"--neighbors must be at most the number of validation "
                     f"prompts ({n_val}), got {neighbors}")
  progress(f"generating {args.prompts} prompts x {args.llms} LLMs")
  data = make_synthetic(data_key, num_prompts=args.prompts, num_models=args.llms)
  results = protocol.evaluate_split(
      fit_key, data, split, num_clusters=clusters, num_neighbors=neighbors,
      on_step=progress)
  elapsed = time.perf_counter() - start
  test_names = ", ".join(data.model_names[j] for j in split.test_models)
  print(f"Synthetic data: {data.num_prompts} prompts x {data.num_models} LLMs, "
        f"seed {args.seed}")
  print(f"Prompts: {len(split.train)} train / {n_val} validation / "
        f"{len(split.test)} test")
  print(f"LLMs: {len(split.train_models)} training, {len(split.test_models)} "
        f"unseen at test time ({test_names})")
  print(f"UniRoute K = {clusters} clusters; K-NN k = {neighbors} neighbours")
  print()
  print(_format_table(results, protocol.METHOD_TITLES))
  print()
  print("Area, Area(50%): quality integrated over relative cost in [0, 1] and "
        "[0, 0.5];")
  print("QNC: relative cost to match the best single unseen LLM; "
        f"done in {elapsed:.1f}s.")
  return 0


def main(argv=None) -> int:
  parser = _build_parser()
  try:
    args = parser.parse_args(argv)
    if args.command is None:
      parser.print_help()
      return _EXIT_USAGE
    if args.command == "demo":
      return _run_demo(args)
  except _UsageError as err:
    print(str(err), file=sys.stderr)
    return _EXIT_USAGE
  except ValueError as err:
    print(f"uniroute: error: {err}", file=sys.stderr)
    return _EXIT_USAGE
  return 0


if __name__ == "__main__":
  sys.exit(main())
