"""The pool of a saved router: ``models``, ``representatives``,
``add-model`` and ``remove-model``. Edits write a new router file; the
original is replaced only when asked (--replace)."""

from __future__ import annotations

import collections
import csv
import io
import os
import warnings

from uniroute_jax.cli import common

# A (cluster, LLM) cell measured on fewer labelled prompts is said to be
# thin: its error rests on too little to be trusted. The router's own
# threshold (router.THIN_CELL), kept here so that the command line starts
# without importing JAX.
THIN_CELL = 5


def _add_output_arguments(p) -> None:
  out = p.add_mutually_exclusive_group(required=True)
  out.add_argument("-o", "--out", metavar="NEW.npz", default=None,
                   help="where to write the new router (must not exist)")
  out.add_argument("--replace", action="store_true",
                   help="write the new router over ROUTER")


def add_parsers(commands) -> None:
  example = commands.add_parser(
      "example", help="write a small text routing example to try the commands",
      description=("Write a generated log of LLM traffic with prompt text "
                   "(traffic.csv: prompt, model, correct, cost in USD), new "
                   "prompts to route (new_prompts.txt) and a new LLM's "
                   "labels (new_llm_labels.csv) into FOLDER."))
  example.add_argument("folder", metavar="FOLDER",
                       help="where to write them (created if needed; no file "
                            "is overwritten)")
  example.add_argument("--seed", type=common.seed, default=0,
                       help="random seed (default 0)")

  models = commands.add_parser(
      "models", help="the LLMs of a saved router, with their errors",
      description=("A table of the router's LLMs: cost, error on the "
                   "representative prompts (the per-cluster errors routing "
                   "uses, after shrinkage), how many clusters their labels "
                   "cover and how many labelled prompts stand behind them."))
  models.add_argument("router", metavar="ROUTER")

  reps = commands.add_parser(
      "representatives", help="the prompts a new LLM must be run on",
      description=("Write the router's representative prompt ids (the text "
                   "itself when the router was fitted on a log of prompt "
                   "text): run a new LLM on them, label its answers, and "
                   "give the labels to uniroute add-model."))
  reps.add_argument("router", metavar="ROUTER")
  reps.add_argument("-o", "--out", metavar="OUT.csv", required=True,
                    help=".csv (prompt_id, cluster), .jsonl or .txt (one id "
                         "per line); must not exist")
  reps.add_argument("--first", metavar="N", type=common.positive_int,
                    default=None,
                    help="only the N prompts a new LLM should be run on first "
                         "when it cannot be run on all, in that order")
  reps.add_argument("--order", choices=("stratified", "neyman", "random"),
                    default=None,
                    help="the order of --first (default random; stratified: "
                         "every cluster in proportion to its prompts; neyman: "
                         "also to the spread of the pool's errors there); "
                         "given alone, every prompt in that order")
  reps.add_argument("--seed", type=common.seed, default=None,
                    help="random seed of the order of --first or --order "
                         "(default 0)")

  add = commands.add_parser(
      "add-model", help="onboard an LLM from its labels on the representatives",
      description=("Add an LLM to a saved router from its labels on the "
                   "router's representative prompts (missing ones allowed): "
                   "its per-cluster error is their mean (shrunk as the "
                   "router's rule says: uniroute models shows it), and "
                   "nothing is retrained."))
  add.add_argument("router", metavar="ROUTER")
  add.add_argument("--name", type=_llm_name, required=True,
                   help="the new LLM's name")
  add.add_argument("--cost", type=common.nonnegative_float, required=True,
                   help="its cost per prompt, in the unit of the router's "
                        "costs")
  add.add_argument("--labels", metavar="FILE", required=True,
                   help="CSV of prompt_id and a score in [0, 1] (score, "
                        "correct or label) for representative prompts; a "
                        "file with a model column (a traffic log) gives the "
                        "rows of --name")
  add.add_argument("--score-column", metavar="NAME", default=None,
                   help="the labels' score column, empty or nan where "
                        "missing (default: the first of score, correct, "
                        "label)")
  add.add_argument("--prompt-column", metavar="NAME", default="prompt_id",
                   help="the labels' prompt id column (default prompt_id)")
  add.add_argument("--model-column", metavar="NAME", default=None,
                   help="a traffic log's LLM column: only the rows of --name "
                        "are its labels (default: model, when the file has "
                        "it)")
  _add_output_arguments(add)

  remove = commands.add_parser(
      "remove-model", help="retire an LLM from a saved router",
      description="Remove LLMs from a saved router's pool.")
  remove.add_argument("router", metavar="ROUTER")
  remove.add_argument("--name", type=common.name_list, required=True,
                      help="comma-separated names of the LLMs to remove")
  _add_output_arguments(remove)


def _load(path):
  from uniroute_jax.router import Router
  return Router.load(path)


def _save(args, router) -> str:
  """Writes the edited router: to --out, or over ROUTER with --replace
  (through a symbolic link to the file it names, keeping its mode)."""
  common.stop_if_interrupted()
  if args.replace:
    target = os.path.realpath(args.router)
    mode = os.stat(target).st_mode & 0o7777
    router.save(target, overwrite=True)
    os.chmod(target, mode)
    return args.router
  try:
    router.save(args.out)
  except FileExistsError:
    raise ValueError(f"--out: {args.out} appeared while running; it is never "
                     "overwritten") from None
  return args.out


def _check_out(args) -> None:
  if args.out is not None:
    common.new_file("--out", args.out)
    common.router_suffix("--out", args.out)
    if common.real_path(args.out) == common.real_path(args.router):
      raise ValueError("--out names ROUTER itself; use --replace to replace it")
  elif _read_only(args.router):
    raise ValueError(f"--replace: {args.router} is read-only; write the new "
                     "router elsewhere with -o")


def _read_only(path) -> bool:
  """Whether the user made ``path`` read-only (its mode, which even root's
  access checks ignore) or cannot replace it."""
  import stat
  target = os.path.realpath(path)
  if not os.path.isfile(target):
    return False        # loading it will say what is wrong
  return (not os.stat(target).st_mode & (stat.S_IWUSR | stat.S_IWGRP |
                                          stat.S_IWOTH)
          or not os.access(target, os.W_OK)
          or not os.access(os.path.dirname(target) or ".", os.W_OK))


def _llm_name(text: str) -> str:
  import argparse
  problem = common.llm_name_problem(text)
  if problem:
    raise argparse.ArgumentTypeError(problem)
  return text


def _routed_error(psi, counts) -> float:
  """An LLM's per-cluster errors (as routing uses them) averaged over its
  labelled representative prompts: what ``uniroute models`` lists."""
  return float((psi * counts).sum() / counts.sum())


def run_models(args) -> int:
  import numpy as np
  router = _load(args.router)
  if not router.models:
    print(f"{args.router}: no LLMs ({router.kind} map, K = "
          f"{router.num_clusters}); add them with uniroute add-model")
    return 0
  psi, counts = np.asarray(router.psi), np.asarray(router.counts)
  known = ~np.isnan(counts).any(axis=0)
  mass = _cluster_mass(router)
  rows = []
  for j, name in enumerate(router.models):
    if known[j] and counts[:, j].sum() > 0:
      overall = _routed_error(psi[:, j], counts[:, j])
      covered = f"{int(np.sum(counts[:, j] > 0))}/{router.num_clusters}"
      labelled = f"{counts[:, j].sum():.0f}"
      thin = f"{int(np.sum(counts[:, j] < THIN_CELL))}"
    else:
      overall = float(psi[:, j] @ mass)
      covered = labelled = thin = "?"
    rows.append((name, f"{float(router.cost[j]):.6g}", f"{overall:.4f}",
                 covered, labelled, thin))
  header = ("LLM", "cost", "error", "clusters", "labelled", "thin")
  widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(6)]
  line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                             for i, (v, w) in enumerate(zip(r, widths)))
  reps = router.representatives
  print(f"{args.router}: {router.kind} map, K = {router.num_clusters}, "
        f"{router.num_models} LLMs"
        + (f", {len(reps.ids)} representative prompts" if reps else ""))
  print(line(header))
  for r in rows:
    print(line(r))
  print(f"error: the per-cluster errors routing uses (shrunk as the rule "
        f"below says), averaged over the labelled representative prompts; "
        f"clusters: those with a labelled prompt; thin: clusters with fewer "
        f"than {THIN_CELL} labelled prompts")
  prior = router.psi_prior
  rule = ("each cluster's mean shrunk towards the LLM's overall error by "
          "empirical Bayes" if prior == common.EMPIRICAL_BAYES else
          "plain cluster means (the paper's eq. 13)" if not prior else
          f"cluster means shrunk by {prior:g} pseudo-prompts")
  print(f"LLMs added from now on get their per-cluster errors as {rule}.")
  return 0


def _cluster_mass(router):
  """Each cluster's share of the representative prompts (uniform when the
  router keeps none)."""
  import numpy as np
  k = router.num_clusters
  rep = router.representatives
  if rep is None:
    return np.full(k, 1.0 / k)
  membership = np.asarray(rep.membership)
  if membership.ndim == 1:
    return np.bincount(membership, minlength=k) / membership.size
  return membership.mean(axis=0)


def _representatives_of(router, path):
  rep = router.representatives
  if rep is None:
    raise ValueError(f"{path} keeps no representative prompts (it was not "
                     "saved by uniroute fit); add LLMs in Python with "
                     "Router.add_models")
  return rep


def run_representatives(args) -> int:
  import json
  import numpy as np
  common.new_file("--out", args.out)
  suffix = os.path.splitext(args.out)[1].lower()
  if suffix not in (".csv", ".jsonl", ".txt"):
    raise ValueError(f"--out must end in .csv, .jsonl or .txt, got {args.out}")
  router = _load(args.router)
  rep = _representatives_of(router, args.router)
  membership = np.asarray(rep.membership)
  cluster = membership if membership.ndim == 1 else membership.argmax(axis=1)
  rows = np.arange(len(rep.ids))
  ordered = args.first is not None or args.order is not None
  if args.seed is not None and not ordered:
    raise ValueError("--seed applies only with --first or --order: it seeds "
                     "their order; every representative prompt is listed "
                     "without one")
  if args.order == "neyman" and not router.num_models:
    raise ValueError("--order neyman allocates by the spread of the pool's "
                     f"errors, and {args.router} has no LLM; use --order "
                     "stratified or random")
  if ordered:
    import jax
    rows = np.asarray(router.labelling_order(
        jax.random.key(args.seed or 0), selection=args.order or "random"))
    rows = rows[:args.first]
  ids = [rep.ids[i] for i in rows]
  cluster = cluster[rows].tolist()
  if suffix == ".txt":
    multiline = [i for i in ids if "\n" in i or "\r" in i]
    if multiline:
      raise ValueError(f"--out: a representative id spans lines ("
                       f"{multiline[0][:40]!r}...); write .csv or .jsonl")
    text = "".join(f"{i}\n" for i in ids)
  elif suffix == ".jsonl":
    text = "".join(json.dumps({"prompt_id": i, "cluster": int(c)},
                              ensure_ascii=False) + "\n"
                   for i, c in zip(ids, cluster))
  else:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt_id", "cluster"])
    writer.writerows(zip(ids, cluster))
    text = buffer.getvalue()
  common.write_new("--out", args.out, text=text)
  which = (f"the first {len(ids)} of {len(rep.ids)} representative prompts "
           f"({args.order or 'random'} order)" if ordered
           else f"{len(ids)} representative prompts")
  print(f"Wrote {args.out}: {which}; run the new LLM on them, then uniroute "
        "add-model --labels")
  return 0


def _refuse_unnamed_model_column(header, rows, prompt_at, score_column, path):
  """A log of several LLMs whose LLM column is not called model would pool
  every LLM's rows into the new one's labels: refused when every prompt
  repeats and a text column names a few values, as LLMs would be named."""
  per_prompt = collections.Counter(r[prompt_at].strip() for r in rows)
  if not per_prompt or min(per_prompt.values()) < 2:
    return
  for at, name in enumerate(header):
    if at == prompt_at or name == score_column:
      continue
    values = {r[at].strip() for r in rows}
    if 2 <= len(values) <= max(per_prompt.values()) and not all(
        _is_number(v) for v in values):
      raise ValueError(
          f"--labels {path} labels every prompt more than once and its "
          f"column {name!r} holds {len(values)} names: if it is the LLM of "
          f"each row, say so with --model-column {name}")


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _read_labels(args, ids):
  """(loss [n_rep, 1], mask [n_rep, 1], labels of other prompts, scores
  averaged into fewer labels) from the labels CSV; repeated prompts are
  averaged."""
  import numpy as np
  from uniroute_jax.data import long
  path = args.labels
  if not os.path.isfile(path):
    raise ValueError(f"--labels: file not found: {path}")
  header, rows = long.read_csv(path)
  score_column = args.score_column or next(
      (c for c in long.SCORE_COLUMNS if c in header), None)
  if score_column is None:
    raise ValueError(f"--labels {path} has no score column: expected one of "
                     f"{list(long.SCORE_COLUMNS)} (or --score-column), found "
                     f"{header}")
  prompt_at = long.column_index(header, args.prompt_column, path)
  model_column = args.model_column or ("model" if "model" in header else None)
  mine = np.ones(len(rows), bool)
  if model_column is not None:
    # A traffic log: only the new LLM's rows are its labels.
    model_at = long.column_index(header, model_column, path)
    mine = np.array([r[model_at].strip() == args.name for r in rows], bool)
    if not mine.any():
      raise ValueError(f"--labels {path} has no row whose column "
                       f"{model_column!r} is --name {args.name!r}")
  else:
    _refuse_unnamed_model_column(header, rows, prompt_at, score_column, path)
  score_at = long.column_index(header, score_column, path)
  # Other LLMs' rows read as empty scores, so that a message names the
  # file's own data row.
  score = long.parse_floats([r[score_at] if keep else ""
                             for r, keep in zip(rows, mine)], path,
                            score_column)
  long.check_unit_interval(score, path, score_column)
  where = {i: k for k, i in enumerate(ids)}
  totals, counts = np.zeros(len(ids)), np.zeros(len(ids))
  others = 0
  for row, (values, value) in enumerate(zip(rows, score)):
    if not mine[row]:
      continue
    prompt = values[prompt_at].strip()
    if not prompt:
      raise ValueError(f"--labels {path} column {args.prompt_column!r} is "
                       f"empty in {long.data_row(row)}")
    if prompt not in where:
      others += 1       # a label of a prompt the router does not keep
    elif not np.isnan(value):
      totals[where[prompt]] += value
      counts[where[prompt]] += 1
  if not counts.any():
    raise ValueError(f"--labels {path} holds no score for any of the "
                     f"router's {len(ids)} representative prompts (see "
                     "uniroute representatives)")
  mask = counts > 0
  loss = np.where(mask, 1.0 - totals / np.maximum(counts, 1), 0.0)
  return loss[:, None], mask[:, None], others, int(counts.sum() - mask.sum())


def run_add_model(args) -> int:
  import numpy as np
  _check_out(args)
  router = _load(args.router)
  rep = _representatives_of(router, args.router)
  if args.name in router.models:
    raise ValueError(f"--name {args.name!r} is already in the pool; remove it "
                     "first with uniroute remove-model")
  cost = common.in_dtype("--cost", [args.cost], router.dtype,
                         "give it in the unit of the router's costs")
  loss, mask, others, repeats = _read_labels(args, rep.ids)
  # The command says what to do in its own words (it has no prior flag).
  new = router.onboard([args.name], loss.astype(router.dtype), cost,
                       mask=mask, warn_below=None)
  counts = np.asarray(new.counts)[:, -1]
  thin = int(np.sum(counts < THIN_CELL))
  if thin:
    warnings.warn(f"{args.name!r}: {thin} of {router.num_clusters} clusters "
                  f"rest on fewer than {THIN_CELL} labelled prompts; label "
                  "more representative prompts for a firmer estimate")
  written = _save(args, new)
  raw = f"{float(loss[mask].mean()):.4f}"
  routed = f"{_routed_error(np.asarray(new.psi)[:, -1], counts):.4f}"
  print(f"Wrote {written}: added {args.name!r} (cost {args.cost:g}, error "
        f"{raw} on {int(mask.sum())} of {len(rep.ids)} representative prompts"
        + ("" if routed == raw else
           f", {routed} as routed after the router's shrinkage")
        + f"); {new.num_models} LLMs")
  if repeats:
    print(f"Repeated rows: {int(mask.sum()) + repeats} scores averaged into "
          f"{int(mask.sum())} labels")
  if others:
    print(f"({others} label(s) of prompts that are not representatives were "
          "not used)")
  return 0


def run_remove_model(args) -> int:
  _check_out(args)
  router = _load(args.router)
  if len(set(args.name)) != len(args.name):
    repeated = next(n for n in args.name if args.name.count(n) > 1)
    raise ValueError(f"--name names {repeated!r} twice")
  unknown = [name for name in args.name if name not in router.models]
  if unknown:
    raise ValueError(f"--name {unknown[0]!r} is not in the pool "
                     f"{list(router.models)}")
  new = router.remove_models(list(args.name))
  written = _save(args, new)
  print(f"Wrote {written}: removed {', '.join(args.name)}; "
        f"{new.num_models} LLMs left ({', '.join(new.models) or 'none'})")
  return 0


def run_example(args) -> int:
  from uniroute_jax.data.example import write_example
  if not args.folder.strip():
    raise ValueError("FOLDER: expected the name of a folder, got ''")
  if os.path.lexists(args.folder) and not os.path.isdir(args.folder):
    raise ValueError(f"FOLDER: {args.folder} exists and is not a folder")
  for name in ("traffic.csv", "new_prompts.txt", "new_llm_labels.csv"):
    path = os.path.join(args.folder, name)
    if os.path.lexists(path):
      raise ValueError(f"FOLDER: {path} already exists; it is never "
                       "overwritten")
  paths = write_example(args.folder, seed=args.seed)
  print(f"Wrote {paths.traffic} (4 LLMs' answers with prompt text, 0/1 "
        f"scores and USD costs), {paths.new_prompts} and "
        f"{paths.new_llm_labels}")
  return 0
