"""``uniroute fit`` (also ``build-router``): a router for one's own pool."""

from __future__ import annotations

import argparse
import sys
import time

from uniroute_jax.cli import common, encoding, inputs


def _cluster_list(text: str) -> tuple[int, ...]:
  expected = "comma-separated positive integers"
  values = tuple(common.positive_int(k) for k in common.list_items(text,
                                                                   expected))
  if len(set(values)) != len(values):   # "3,03"
    raise argparse.ArgumentTypeError(f"names a K twice, got {text!r}")
  return values


def add_parser(commands) -> None:
  fit = commands.add_parser(
      "fit", aliases=["build-router"],
      help="fit a router to a labelled dataset or a traffic log and save it",
      description=(
          "Fit a UniRoute router to the LLMs of a dataset: the cluster map "
          "(k-means, or the learned softmax-dense map) and K are chosen on "
          "prompts held out of a few random splits, the map is fitted on "
          "the training prompts, and every LLM is represented by its "
          "per-cluster error on the representative prompts, which the "
          "router keeps for onboarding new LLMs (uniroute add-model). "
          "Saved as one .npz file, no pickle."))
  inputs.add_data_arguments(fit)
  fit.add_argument("--map", choices=("auto", "kmeans", "learned"),
                   default="auto",
                   help="auto (default): the better of kmeans and learned on "
                        "held-out prompts; kmeans: each prompt in its nearest "
                        "cluster (UniRoute K-means); learned: a softmax-dense "
                        "map trained on the labels, routing with soft "
                        "memberships (UniRoute LearnedMap)")
  fit.add_argument("--clusters", type=_cluster_list, default=None,
                   help="candidate K, comma-separated (default: up to 8 "
                        "from 3 to representative prompts / 10)")
  fit.add_argument("--representatives", type=common.fraction, default=0.2,
                   metavar="FRAC",
                   help="share of the prompts kept as representatives, on "
                        "which every LLM is represented and a new LLM is "
                        "run (default 0.2)")
  fit.add_argument("--holdout", type=common.fraction, default=None,
                   metavar="FRAC",
                   help="share of the prompts held out of each selection "
                        "trial to score the maps and K (default 0.2)")
  fit.add_argument("--trials", type=common.positive_int, default=None,
                   help="selection trials, random splits (default 3)")
  fit.add_argument("--psi-prior-strength", type=common.prior_strength,
                   default=common.EMPIRICAL_BAYES,
                   help="how every LLM's per-cluster error is estimated, now "
                        "and for LLMs added later: 'empirical-bayes' (default: "
                        "each cluster's mean shrunk towards the LLM's overall "
                        "error as much as its clusters' spread says), or a "
                        "number of pseudo-prompts (0: the paper's plain "
                        "means)")
  fit.add_argument("--seed", type=common.seed, default=0,
                   help="random seed (default 0)")
  fit.add_argument("--out", metavar="ROUTER.npz", required=True,
                   help="where to save the router (must not exist)")
  encoding.add_encoder_arguments(fit)


def run(args) -> int:
  import jax
  import numpy as np
  from uniroute_jax import fitting

  common.new_file("--out", args.out)
  common.router_suffix("--out", args.out)
  maps = fitting.MAPS if args.map == "auto" else (args.map,)
  searching = len(maps) > 1 or args.clusters is None or len(args.clusters) > 1
  for flag, value in (("--trials", args.trials), ("--holdout", args.holdout)):
    if value is not None and not searching:
      raise ValueError(f"{flag} applies only when fit chooses (--map auto or "
                       "several --clusters); with one map and one K nothing "
                       "is held out")
  args.trials = 3 if args.trials is None else args.trials
  args.holdout = 0.2 if args.holdout is None else args.holdout
  if args.representatives + args.holdout >= 1.0:
    raise ValueError(f"--representatives + --holdout must be below 1, got "
                     f"{args.representatives} + {args.holdout}")
  start = time.perf_counter()
  print("[1/3] loading the data ...", file=sys.stderr, flush=True)
  loaded = inputs.load(args)
  data = loaded.data
  common.prior_strength_fits(args.psi_prior_strength, data.loss.dtype)
  missing = inputs.labels(args, data)
  if data.num_models < 2:
    raise ValueError(f"{inputs.data_source(args)} holds {data.num_models} "
                     "LLM; a router needs at least 2 to route between")
  for name in data.model_names:
    problem = common.llm_name_problem(name)
    if problem:
      raise ValueError(f"--data {args.data}: its LLM {name!r} could not be "
                       f"named to route --models, remove-model or add-model "
                       f"({problem}); rename it in the data")
  n_train, n_rep, n_hold = _split_sizes(data.num_prompts, args, searching)
  if searching and args.clusters and max(args.clusters) > n_train:
    raise ValueError(f"--clusters must be at most the {n_train} training "
                     f"prompts of a selection trial, got {max(args.clusters)}")
  if not searching and args.clusters[0] > data.num_prompts - n_rep:
    raise ValueError(f"--clusters must be at most the "
                     f"{data.num_prompts - n_rep} prompts the map is fitted "
                     f"on, got {args.clusters[0]}")
  what = (f"choosing {' or '.join(maps)} and K on {args.trials} trial(s) of "
          f"{n_train}/{n_rep}/{n_hold} train/representative/held-out prompts"
          if searching else f"fitting {maps[0]} with K = {args.clusters[0]}")
  print(f"[2/3] {what} ...", file=sys.stderr, flush=True)
  fitted = fitting.fit_router(
      jax.random.key(args.seed), data, maps=maps, clusters=args.clusters,
      representative_frac=args.representatives, holdout_frac=args.holdout,
      num_trials=args.trials, prior_strength=args.psi_prior_strength or None,
      on_progress=common.progress_printer("trials"))
  router, report = fitted
  if loaded.embedder is not None:   # route then refuses prompts embedded otherwise
    router = router.with_embedder(loaded.embedder)
  if report.map == "kmeans":
    inputs.warn_uncovered_clusters(router)
  print("[3/3] saving ...", file=sys.stderr, flush=True)
  common.stop_if_interrupted()
  router.save(args.out)
  elapsed = time.perf_counter() - start

  inputs.print_missing(missing)
  counts = data.label_counts
  if counts is not None and int(np.sum(counts)) > int(np.sum(counts > 0)):
    print(f"Repeated rows: {int(np.sum(counts))} scores averaged into "
          f"{int(np.sum(counts > 0))} (prompt, LLM) labels")
  if report.scores:
    print(f"Held-out deferral Area over {args.trials} trial(s) (higher is "
          "better):")
    for kind, score in report.scores.items():
      mark = "  <- chosen" if kind == report.map else ""
      print(f"  {kind:8s} {score.area:.4f}   K per trial: "
            f"{','.join(str(k) for k in score.chosen_clusters.tolist())}{mark}")
    chosen = report.scores[report.map]
    if np.isfinite(chosen.area_estimation) and np.isfinite(
        chosen.area_approximation):
      gap = chosen.area_estimation + chosen.area_approximation
      print(f"  Area lost to the per-prompt oracle: {gap:.4f} = "
            f"{chosen.area_estimation:.4f} estimation (more representative "
            f"prompts per LLM, --representatives, win back up to this) + "
            f"{chosen.area_approximation:.4f} approximation (what the "
            f"clusters miss with every label known, and the labels' own "
            f"noise)")
  print(f"Wrote {args.out}: {report.map} map with K = {report.num_clusters}, "
        f"fitted on {report.num_train} prompts; {router.num_models} LLMs "
        f"({', '.join(router.models)}) represented on "
        f"{report.num_representatives} representative prompts "
        f"({elapsed:.1f}s)")
  print(lambda_scale(router))
  return 0


def _split_sizes(n: int, args, searching: bool) -> tuple[int, int, int]:
  """(training, representative, held-out) prompts; none are held out when
  fit has nothing to choose."""
  from uniroute_jax import fitting
  try:
    return fitting.split_sizes(n, args.representatives,
                               args.holdout if searching else None)
  except ValueError:
    representative = f"representative (--representatives {args.representatives})"
    kinds = (f"training, {representative} and held-out (--holdout "
             f"{args.holdout})" if searching else f"training and {representative}")
    raise ValueError(
        f"{inputs.data_source(args)} holds {n} prompt(s), too few to fit a "
        f"router: it needs {kinds} prompts, at least one of each") from None


def lambda_scale(router) -> str:
  """Where --lambda matters for this router: the spread of the lambdas at
  which the representative prompts' choices change."""
  import numpy as np
  from uniroute_jax import routing
  rep = router.representatives
  gamma = np.asarray(router.predicted_loss(rep.embeddings))
  path = routing.switch_path(gamma, np.asarray(router.cost))
  switches = np.asarray(path.lambdas)
  switches = switches[np.isfinite(switches) & (switches > 0)]
  if not switches.size:
    return ("--lambda does not change any choice on the representative "
            "prompts: on each, the LLM chosen at lambda 0 is also the "
            "cheapest worth choosing (e.g. every cost is equal, or the most "
            "accurate LLM is the cheapest)")
  low, high = np.quantile(switches, [0.1, 0.9])
  return (f"--lambda (loss per unit of cost) changes choices between about "
          f"{low:.3g} and {high:.3g} on the representative prompts; or set "
          "--max-cost-per-prompt or --min-quality in uniroute route")
