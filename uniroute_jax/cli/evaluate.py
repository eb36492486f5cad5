"""``uniroute demo`` and ``uniroute evaluate``: the paper's protocol."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

from uniroute_jax.cli import common, encoding, inputs

_DEFAULT_TEST_LLM_FRAC = 1 / 3


def add_parsers(commands) -> None:
  demo = commands.add_parser(
      "demo", help="route synthetic prompts to unseen LLMs and compare routers",
      description=(
          "Generate a synthetic routing problem, fit k-means on training "
          "prompts, represent UNSEEN test LLMs by their validation errors, "
          "route the test prompts and compare ZeroRouter, K-NN, UniRoute "
          "(K-means) and the per-prompt oracle."))
  demo.add_argument("--prompts", type=common.positive_int,
                    default=inputs.SYNTHETIC_PROMPTS,
                    help=f"number of prompts (default {inputs.SYNTHETIC_PROMPTS})")
  demo.add_argument("--llms", type=common.positive_int,
                    default=inputs.SYNTHETIC_LLMS,
                    help=f"number of LLMs; a third are held out (default "
                         f"{inputs.SYNTHETIC_LLMS})")
  _add_protocol_arguments(demo, trials=5)

  evaluate = commands.add_parser(
      "evaluate", help="the paper's evaluation protocol on a dataset",
      description=(
          "Run the paper's protocol: random prompt splits, an unseen pool of "
          "test LLMs, hyper-parameters chosen on the training LLMs only, "
          "mean deferral curves over many trials and sign tests. With "
          "--fixed-pool: routing among all of the data's LLMs instead."))
  inputs.add_data_arguments(evaluate)
  _add_protocol_arguments(evaluate, trials=10)
  evaluate.add_argument(
      "--fixed-pool", action="store_true",
      help="route among every LLM of the data, each seen in training (the "
           "routers see every LLM's validation labels; test prompts stay "
           "held out): what routing buys on your own pool")
  encoding.add_encoder_arguments(evaluate)


def run_demo(args) -> int:
  args.format, args.data, args.embeddings, args.costs = ("synthetic", None,
                                                         None, None)
  args.fixed_pool = False
  return _run(args, "synthetic data")


def run_evaluate(args) -> int:
  return _run(args, args.data if args.format != "synthetic"
              else "synthetic data")


def _method_list(text: str) -> tuple[str, ...]:
  from uniroute_jax import protocol
  expected = f"a comma-separated list of {','.join(protocol.BUILT_IN)}"
  names = tuple(common.list_items(text, expected))
  if any(n not in protocol.BUILT_IN for n in names):
    raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
  return names


_DEFAULT_ONBOARDING_TEXT = "25,50,100,200,400,all"
# Prop. 2's bound compares every prompt with its neighbours: memory grows
# with the square of the prompts, so a random subset this large is used.
_BOUND_PROMPTS = 3000
_BOUND_NEIGHBORS = 10


def _onboarding_sizes(text: str) -> tuple[int | None, ...]:
  expected = "comma-separated positive numbers of prompts or 'all'"
  sizes = []
  for part in common.list_items(text, expected):
    if part == "all":
      sizes.append(None)
      continue
    try:
      size = int(part)
    except ValueError:
      size = 0
    if size < 1:
      raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    sizes.append(size)
  if len(set(sizes)) != len(sizes):   # "10,010"
    raise argparse.ArgumentTypeError(f"names a size twice, got {text!r}")
  return tuple(sizes)


_DEFAULT_ONBOARDING = _onboarding_sizes(_DEFAULT_ONBOARDING_TEXT)


def _add_protocol_arguments(p: argparse.ArgumentParser, *, trials: int) -> None:
  p.add_argument("--seed", type=common.seed, default=0, help="random seed (default 0)")
  p.add_argument("--trials", type=common.positive_int, default=trials,
                 help=f"independent random trials (default {trials})")
  p.add_argument("--val-frac", type=common.fraction, default=0.1,
                 help="validation share of the prompts (default 0.1)")
  p.add_argument("--test-frac", type=common.fraction, default=0.3,
                 help="test share of the prompts (default 0.3)")
  p.add_argument("--test-llm-frac", type=common.fraction, default=None,
                 help="share of LLMs held out, unseen, for testing (default "
                      "1/3)")
  from uniroute_jax import protocol
  p.add_argument("--methods", type=_method_list,
                 default=protocol.DEFAULT_METHODS,
                 help=f"comma-separated routers among {','.join(protocol.BUILT_IN)}"
                      f" (default {','.join(protocol.DEFAULT_METHODS)}); mlp and "
                      "matfac are clairvoyant upper bounds")
  p.add_argument("--clusters", type=common.positive_int, default=None,
                 help="fix K for UniRoute (default: chosen per trial from 3 .. "
                      "validation prompts / 50 on the training LLMs)")
  p.add_argument("--neighbors", type=common.positive_int, default=None,
                 help="fix k for K-NN (default: chosen per trial from 5 .. "
                      "validation prompts / 3)")
  p.add_argument("--psi-prior-strength", type=common.prior_strength, default=None,
                 help="shrink every cluster's error towards the LLM's overall "
                      "error by this many pseudo-prompts, or by a strength "
                      "chosen per LLM with 'empirical-bayes' (default 0: the "
                      "paper's plain cluster means)")
  p.add_argument("--json", metavar="OUT", default=None,
                 help="write every number to this JSON file (must not exist)")
  p.add_argument("--plot", metavar="OUT.png", default=None,
                 help="plot the mean deferral curves (needs matplotlib)")
  p.add_argument("--onboarding-curve", metavar="SIZES", nargs="?",
                 type=_onboarding_sizes, const=_DEFAULT_ONBOARDING,
                 default=None,
                 help="also measure how the Area of UniRoute (K-means) grows "
                      "with the prompts each unseen LLM is run on: "
                      "comma-separated sizes, 'all' for every validation "
                      f"prompt (default {_DEFAULT_ONBOARDING_TEXT}), with "
                      "random, cluster-stratified and Neyman-allocated "
                      "prompts")
  p.add_argument("--plot-onboarding", metavar="OUT.png", default=None,
                 help="plot the onboarding curve (implies --onboarding-curve; "
                      "needs matplotlib)")
  p.add_argument("--impurity-bound", action="store_true",
                 help="also print Prop. 2's bound on the clusters' excess risk "
                      "against K (k-means of up to "
                      f"{_BOUND_PROMPTS} prompts): whether more clusters "
                      "would help")
  p.add_argument("--plot-bound", metavar="OUT.png", default=None,
                 help="plot Prop. 2's bound against K (implies "
                      "--impurity-bound; needs matplotlib)")
  p.add_argument("--plot-excess", metavar="OUT.png", default=None,
                 help="plot each router's mean excess risk over the oracle "
                      "against lambda, split into estimation and "
                      "approximation for cluster routers (needs matplotlib)")


def _check_outputs(args) -> None:
  """Fails before any work when an output cannot be written."""
  outputs = list(common.output_flags(args).items())
  for flag, path in outputs:
    common.new_file(flag, path)
  seen = {}
  for flag, path in outputs:
    where = common.real_path(path)
    if where in seen:
      raise ValueError(f"{seen[where]} and {flag} name the same file {path}")
    seen[where] = flag
  plots = [(flag, path) for flag, path in outputs if flag != "--json"]
  if plots:
    try:
      import matplotlib  # noqa: F401
    except ImportError:
      raise ValueError(f"{plots[0][0]} needs matplotlib: pip install "
                       "'uniroute_jax[plot]'") from None
    from uniroute_jax import report
    for flag, path in plots:
      suffix = os.path.splitext(path)[1].lower().lstrip(".")
      if suffix not in report.PLOT_FORMATS:
        raise ValueError(f"{flag} must end in one of "
                         f"{', '.join('.' + f for f in report.PLOT_FORMATS)}, "
                         f"got {path}")


def _run(args, source: str) -> int:
  import jax
  from uniroute_jax import protocol, report
  from uniroute_jax.data import missing_labels

  _check_outputs(args)
  methods = _methods(args)
  if args.plot_onboarding is not None and args.onboarding_curve is None:
    args.onboarding_curve = _DEFAULT_ONBOARDING
  onboarding = args.onboarding_curve is not None
  bound = args.impurity_bound or args.plot_bound is not None
  steps = 3 + onboarding + bound
  step = 3
  start = time.perf_counter()
  if args.fixed_pool and args.test_llm_frac is not None:
    raise ValueError("--test-llm-frac does not apply with --fixed-pool: every "
                     "LLM is routed among")
  if args.fixed_pool and onboarding:
    given = ("--plot-onboarding" if args.plot_onboarding is not None
             else "--onboarding-curve")
    raise ValueError(f"{given} measures how unseen LLMs are onboarded; it "
                     "does not apply with --fixed-pool")
  print(f"[1/{steps}] loading {source} ...", file=sys.stderr, flush=True)
  test_llm_frac = (_DEFAULT_TEST_LLM_FRAC if args.test_llm_frac is None
                   else args.test_llm_frac)
  data = inputs.load(args).data
  common.prior_strength_fits(args.psi_prior_strength, data.loss.dtype)
  import numpy as np
  cost = np.asarray(data.cost)
  if np.all(cost == cost[..., :1]):
    warnings.warn("every LLM costs the same on every prompt, so no router "
                  "trades quality for cost: each Area is the router's "
                  "quality at lambda 0, and QNC is 0% for every router")
  # Every trial's split (an index per prompt and LLM) and its results are
  # held at once.
  common.fits_in_memory("--trials", args.trials,
                        8 * args.trials * (data.num_prompts + data.num_models),
                        f"{args.trials} trials of {data.num_prompts} prompts")
  missing = inputs.labels(args, data)
  n_train, n_val, n_test = protocol.split_sizes(data.num_prompts, args.val_frac,
                                                args.test_frac)
  if args.fixed_pool:
    if data.num_models < 2:
      raise ValueError(f"--fixed-pool needs at least 2 LLMs to route among; "
                       f"the data has {data.num_models}")
    m_train = m_test = data.num_models
  else:
    m_train, m_test = protocol.model_split_sizes(data.num_models, test_llm_frac)
    asked = round(data.num_models * test_llm_frac)
    if args.test_llm_frac is not None and m_test > asked:
      warnings.warn(f"--test-llm-frac {args.test_llm_frac} of the "
                    f"{data.num_models} LLMs is {asked}; {m_test} are held "
                    "out, the fewest an unseen pool to route between takes")
  if args.clusters and args.clusters > n_train:
    raise ValueError(f"--clusters must be at most the {n_train} training "
                     f"prompts of a trial, got {args.clusters}")
  if args.clusters and args.clusters > n_val:
    warnings.warn(f"--clusters {args.clusters} is more than the {n_val} "
                  "validation prompts of a trial, on which unseen LLMs are "
                  "measured: a cluster without one gives them their overall "
                  "error there")
  if args.neighbors and args.neighbors > min(n_train, n_val):
    raise ValueError(f"--neighbors must be at most the {min(n_train, n_val)} "
                     f"validation prompts of a trial, got {args.neighbors}")
  pools = (f"all {m_test} LLMs, seen in training" if args.fixed_pool else
           f"{m_train} training and {m_test} unseen test LLMs")
  print(f"[2/{steps}] {args.trials} trial(s): {n_train}/{n_val}/{n_test} "
        f"train/validation/test prompts, {pools} per trial ...",
        file=sys.stderr, flush=True)
  evaluation = protocol.evaluate(
      jax.random.key(args.seed), data, num_trials=args.trials,
      methods=methods, val_frac=args.val_frac, test_frac=args.test_frac,
      test_model_frac=test_llm_frac, fixed_pool=args.fixed_pool,
      on_progress=common.progress_printer("trials"))
  curve = None
  if onboarding:
    # Sizes the user named, not the default ladder, which small data cut.
    beyond = [s for s in args.onboarding_curve if s is not None and s > n_val]
    if beyond and args.onboarding_curve is not _DEFAULT_ONBOARDING:
      warnings.warn(f"--onboarding-curve {', '.join(map(str, beyond))}: a "
                    f"trial has only {n_val} validation prompts to run an "
                    "unseen LLM on, so those sizes are all of them")
    print(f"[{step}/{steps}] onboarding curve: unseen LLMs represented by "
          f"{_sizes_text(args.onboarding_curve, n_val)} of the {n_val} "
          "validation prompts ...", file=sys.stderr, flush=True)
    curve = protocol.onboarding_curve(
        jax.random.key(args.seed), data, sizes=args.onboarding_curve,
        num_trials=args.trials,
        clusters=None if args.clusters is None else (args.clusters,),
        val_frac=args.val_frac, test_frac=args.test_frac,
        test_model_frac=test_llm_frac,
        prior_strength=args.psi_prior_strength or 0.0,
        on_progress=common.progress_printer("trials"))
    step += 1
  bounds = None
  if bound:
    print(f"[{step}/{steps}] Prop. 2's bound against K ...", file=sys.stderr,
          flush=True)
    bounds = _impurity_bounds(args, data, n_train, n_val)
  elapsed = time.perf_counter() - start
  print(f"[{steps}/{steps}] done in {elapsed:.1f}s", file=sys.stderr,
        flush=True)

  try:
    table = report.format_table(evaluation)   # refuses undefined results
  except ValueError as err:
    raise ValueError(f"{err}{_sparsest_llm(data)}") from None
  print(f"{source}: {data.num_prompts} prompts x {data.num_models} LLMs; "
        f"{args.trials} trial(s), seed {args.seed}")
  inputs.print_missing(missing)
  print(f"Per trial: {n_train} train / {n_val} validation / {n_test} test "
        f"prompts; {pools}")
  _print_scored(evaluation.scored_test_prompts, n_test)
  if not args.fixed_pool and m_test < data.num_models // 2 + 1 and (
      data.num_models <= 6):
    print(f"(Each trial routes among {m_test} of your {data.num_models} LLMs, "
          "unseen in training; --fixed-pool measures routing among all of "
          "them.)")
  print()
  print(table)
  print()
  print("Area, Area(50%): mean-curve quality integrated over relative cost "
        "[0, 1] and [0, 0.5]; QNC: relative cost")
  single = "LLM" if args.fixed_pool else "unseen LLM"
  print(f"to match the best single {single}; vs best: per-trial wins-losses, "
        f"exact sign test (* p < {evaluation.alpha}).")
  split = report.format_excess(evaluation)
  if split:
    print()
    print(split)
  if curve is not None:
    print()
    summary = (f"mean [95% CI] over {args.trials} trials" if args.trials > 1
               else "one trial")
    print(f"How many prompts an unseen LLM must be run on: the Area of "
          f"UniRoute (K-means, K chosen per trial) with each test LLM's Psi "
          f"from that many validation prompts, {summary}:")
    print(report.format_onboarding(curve))
  if bounds is not None:
    print()
    print(f"Prop. 2's bound on the clusters' excess risk over the Bayes rule, "
          f"2 E[max_h |P(h wrong | x) - Psi*_k(h)|], by K ({bounds['prompts']} "
          f"prompts, {_BOUND_NEIGHBORS}-neighbour estimate, biased upward by "
          "label noise: read its fall with K):")
    print(report.format_bounds(bounds))
  if args.json is not None:
    document = report.to_dict(
        evaluation, dataset={"source": source, "prompts": data.num_prompts,
                             "llms": data.num_models,
                             "model_names": list(data.model_names),
                             "missing_labels": missing_labels(data),
                             "fixed_pool": bool(args.fixed_pool)},
        seed=args.seed, wall_time_s=elapsed,
        **({} if curve is None else
           {"onboarding_curve": report.onboarding_dict(curve)}),
        **({} if bounds is None else {"impurity_bound": bounds}))
    common.write_new("--json", args.json,
               text=json.dumps(document, indent=1) + "\n")
    print(f"Wrote {args.json}")
  for flag, path, draw, what in (
      ("--plot", args.plot, report.plot, "mean deferral curves"),
      ("--plot-excess", args.plot_excess, report.plot_excess,
       "mean excess risk over the oracle"),
      ("--plot-onboarding", args.plot_onboarding,
       lambda _, path, title: report.plot_onboarding(curve, path, title=title),
       "onboarding curve"),
      ("--plot-bound", args.plot_bound,
       lambda _, path, title: report.plot_bounds(bounds, path, title=title),
       "Prop. 2's bound against K")):
    if path is None:
      continue
    common.stop_if_interrupted()
    try:
      draw(evaluation, path, title=f"{source}: {what}")
    except FileExistsError:
      raise ValueError(f"{flag}: {path} appeared while running; it is "
                       f"never overwritten") from None
    print(f"Wrote {path}")
  return 0


def _impurity_bounds(args, data, n_train: int, n_val: int) -> dict:
  """Prop. 2's bound for K = 1 and the protocol's candidates (or --clusters)
  on a random subset of the prompts, as plain JSON types."""
  import jax
  import numpy as np
  from uniroute_jax import protocol, risk
  rng = np.random.default_rng(args.seed)
  n = min(_BOUND_PROMPTS, data.num_prompts)
  rows = np.sort(rng.choice(data.num_prompts, n, replace=False))
  grid = ((args.clusters,) if args.clusters else
          protocol.default_cluster_grid(n_train, n_val))
  clusters = np.unique(np.asarray((1,) + tuple(grid), np.int32))
  clusters = clusters[clusters <= n]
  values = risk.impurity_bounds(
      jax.random.key(args.seed), np.asarray(data.embeddings)[rows],
      np.asarray(data.loss)[rows], clusters, num_neighbors=_BOUND_NEIGHBORS,
      mask=np.asarray(data.mask)[rows], together=1)
  return {"prompts": int(n), "neighbors": _BOUND_NEIGHBORS,
          "clusters": [int(k) for k in clusters],
          "bound": [float(b) for b in np.asarray(values, np.float64)]}


# Fewer test prompts than this scored in a trial: its areas rest on few
# prompts, and the command says so.
_FEW_SCORED = 30


def _print_scored(scored, n_test: int) -> None:
  """How many test prompts the trials score, when labels are missing: only
  those labelled for every test LLM count."""
  low, high = int(min(scored)), int(max(scored))
  if low == n_test:
    return
  counts = str(low) if low == high else f"{low}-{high}"
  print(f"Scored per trial: {counts} of the {n_test} test prompts, those "
        "labelled for every test LLM.")
  if low < _FEW_SCORED:
    warnings.warn(f"a trial scores only {low} test prompt(s), those labelled "
                  "for every one of its test LLMs: its areas rest on few "
                  "prompts; label the LLMs on more of the same prompts")


def _sizes_text(sizes, n_val: int) -> str:
  return ", ".join("all" if s is None or s >= n_val else str(s) for s in sizes)


# The router options each protocol flag sets, for the routers that have
# them: (flag, its attribute, the options, whether the value becomes the one
# candidate of a hyper-parameter search or the option itself).
_METHOD_FLAGS = (("--clusters", "clusters", ("clusters", "ranks"), True),
                 ("--neighbors", "neighbors", ("neighbors",), True),
                 ("--psi-prior-strength", "psi_prior_strength",
                  ("prior_strength",), False))


def _sparsest_llm(data) -> str:
  """Why a result can be undefined, when labels are sparse: a trial scores
  a set of LLMs on the prompts labelled for all of them, and an LLM
  labelled on few prompts can leave it none."""
  import numpy as np
  labelled = np.asarray(data.mask, bool).sum(axis=0)
  j = int(np.argmin(labelled))
  if labelled[j] >= 0.5 * data.num_prompts:
    return ""
  return (f"; LLM {data.model_names[j]!r} is labelled on only {labelled[j]} "
          f"of {data.num_prompts} prompts, and a trial scores its LLMs on "
          "the prompts labelled for all of them: label it on more prompts or "
          "leave it out of the data")


def _methods(args):
  """The routers to evaluate, with the flags that set their options; a flag
  that none of --methods has an option for is an error."""
  from uniroute_jax import protocol
  chosen = [protocol.BUILT_IN[name] for name in args.methods]
  onboarding = (getattr(args, "onboarding_curve", None) is not None
                or getattr(args, "plot_onboarding", None) is not None)
  bound = (getattr(args, "impurity_bound", False)
           or getattr(args, "plot_bound", None) is not None)
  # The onboarding curve (K-means) and the bound use these flags too.
  used_elsewhere = {"--clusters": onboarding or bound,
                    "--psi-prior-strength": onboarding}
  for flag, attribute, fields, _ in _METHOD_FLAGS:
    value = getattr(args, attribute)
    if value is None or used_elsewhere.get(flag, False):
      continue
    if not any(hasattr(m, f) for m in chosen for f in fields):
      takers = [name for name, m in protocol.BUILT_IN.items()
                if any(hasattr(m, f) for f in fields)]
      raise ValueError(
          f"{flag} applies to the routers {','.join(takers)}, none of which "
          f"is in --methods {','.join(args.methods)}")
  if getattr(args, "plot_excess", None) is not None and all(
      m.reference for m in chosen):
    raise ValueError(f"--plot-excess draws the routers' excess over the "
                     f"oracle, and --methods {','.join(args.methods)} names "
                     "no router but references")
  methods = []
  for method in chosen:
    changes = {}
    for _, attribute, fields, candidate in _METHOD_FLAGS:
      value = getattr(args, attribute)
      for field in fields:
        if value is not None and hasattr(method, field):
          if value == common.EMPIRICAL_BAYES:
            changes["empirical_bayes"] = True
          else:
            changes[field] = (value,) if candidate else value
    methods.append(method.replace(**changes) if changes else method)
  return methods
