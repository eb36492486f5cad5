"""``uniroute route``: decisions for new prompts, text or embeddings."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import warnings

from uniroute_jax.cli import common, encoding, inputs

EMBEDDING_SUFFIXES = (".npy", ".npz")
TEXT_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".csv")
OUTPUT_SUFFIXES = (".jsonl", ".csv")


def _quality(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not 0.0 <= value <= 1.0:
    raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
  return value


def add_parser(commands) -> None:
  route = commands.add_parser(
      "route", help="route new prompts (text or embeddings) with a saved router",
      description=(
          "Send each prompt to argmin_m Phi(x)^T Psi(m) + lambda * cost(m) "
          "over the router's LLMs and write one JSONL or CSV row per prompt "
          "and lambda: the chosen LLM, the prompt's cluster, the predicted "
          "loss of every LLM, the cost. Prompt text is embedded as the "
          "router's prompts were. The operating point is --lambda, or the "
          "lambda that meets a budget on these prompts, found exactly over "
          "their switch points."))
  route.add_argument("router", metavar="ROUTER", nargs="?", default=None,
                     help="a router saved by uniroute fit (or Router.save)")
  route.add_argument("input", metavar="INPUT", nargs="?", default=None,
                     help="prompts: text (.txt one per line, .jsonl with a "
                          "'prompt' field, .csv with a 'prompt' column) or "
                          "embeddings (.npy [n, d], or .npz with ids)")
  route.add_argument("-o", "--out", metavar="OUT.jsonl", required=True,
                     help="where to write the decisions: .jsonl or .csv (must "
                          "not exist)")
  route.add_argument("--router", dest="router_flag", metavar="ROUTER",
                     default=None, help=argparse.SUPPRESS)
  route.add_argument("--embeddings", dest="embeddings", metavar="FILE",
                     default=None, help="an embeddings file (instead of INPUT)")
  point = route.add_mutually_exclusive_group()
  point.add_argument("--lambda", dest="lambdas", type=common.lambda_list,
                     default=None,
                     help="comma-separated cost trade-offs (default 0: the "
                          "most accurate LLM)")
  point.add_argument("--max-cost-per-prompt", type=common.nonnegative_float,
                     default=None, metavar="X",
                     help="the most accurate routing whose mean cost per "
                          "prompt, in the costs' own unit (e.g. USD), is at "
                          "most X")
  point.add_argument("--min-quality", type=_quality, default=None,
                     metavar="Q",
                     help="the cheapest routing whose predicted mean quality "
                          "(1 - loss) is at least Q")
  route.add_argument("--models", type=common.name_list, default=None,
                     help="comma-separated LLM names to route among "
                          "(default: all of the router's)")
  route.add_argument("--column", metavar="NAME", default=None,
                     help="text INPUT: the JSONL field or CSV column of the "
                          "text (default prompt)")
  route.add_argument("--id-column", metavar="NAME", default=None,
                     help="text INPUT: the JSONL field or CSV column of prompt "
                          "ids (default: 0, 1, ... in input order)")
  encoding.add_encoder_arguments(route, from_router=True)


def _paths(args) -> tuple[str, str, bool]:
  """(router file, prompts file, whether the prompts are text)."""
  if args.router is not None and args.router_flag is not None:
    raise ValueError("give the router once: as ROUTER or as --router")
  router = args.router if args.router is not None else args.router_flag
  if router is None:
    raise ValueError("ROUTER is required (a router saved by uniroute fit)")
  if args.input is not None and args.embeddings is not None:
    raise ValueError("give the prompts once: as INPUT or as --embeddings")
  prompts = args.input if args.input is not None else args.embeddings
  if prompts is None:
    raise ValueError("INPUT is required: a prompt text file or an "
                     "embeddings file")
  suffix = os.path.splitext(prompts)[1].lower()
  if args.embeddings is not None and suffix not in EMBEDDING_SUFFIXES:
    raise ValueError(f"--embeddings must be a .npy or .npz file, got {prompts}")
  if suffix not in EMBEDDING_SUFFIXES + TEXT_SUFFIXES:
    raise ValueError(f"INPUT must end in one of "
                     f"{', '.join(TEXT_SUFFIXES + EMBEDDING_SUFFIXES)}, got "
                     f"{prompts}")
  text = suffix in TEXT_SUFFIXES
  if not text:
    for flag in ("--column", "--id-column"):
      if getattr(args, flag[2:].replace("-", "_")) is not None:
        raise ValueError(f"{flag} applies to text INPUT, not to the "
                         f"embeddings file {prompts}")
    given = encoding.given_encoder_flags(args)
    if given:
      raise ValueError(f"{given[0]} applies to text INPUT, not to the "
                       f"embeddings file {prompts}")
  return router, prompts, text


def _text_embedder(args, router, path):
  """The built-in encoder with the router's settings; other settings given
  on the command line are refused (they would route in another space)."""
  from uniroute_jax.encoder import NAME, BertConfig
  recorded = router.embedder
  if recorded is None:
    width = BertConfig().hidden   # the built-in all-MiniLM-L6-v2's
    if router.dim != width:
      # Known before any prompt is embedded.
      raise ValueError(
          f"the router routes {router.dim}-d embeddings and records no "
          f"encoder; the built-in encoder's are {width}-d, so the text of "
          f"{path} cannot be routed with it: embed the prompts as the "
          "router's were and pass the embeddings file")
    embedder = encoding.TextEmbedder(args)
    warnings.warn(
        f"the router records no encoder, so the text of {path} is embedded "
        f"with {embedder.describe()} unchecked; fit the router on text or on "
        "uniroute embed files to have it checked")
    return embedder
  if recorded.get("name") != NAME:
    raise ValueError(
        f"the router's prompts were embedded by {recorded.get('name')!r}, not "
        "the built-in encoder; embed the prompts the same way and pass the "
        "embeddings file")
  for flag, key in (("--truncation", "truncation"),
                    ("--max-length", "max_length")):
    value = getattr(args, key)
    if value is not None and value != recorded.get(key):
      raise ValueError(f"{flag} {value} differs from the router's "
                       f"{recorded.get(key)}: prompts must be embedded as the "
                       "router's were")
  embedder = encoding.TextEmbedder(args, truncation=recorded.get("truncation"),
                                   max_length=recorded.get("max_length"))
  router.check_embedder(embedder.identity, what=f"the prompts of {path}")
  return embedder


def _check_recorded_embedder(path: str, router, source: str) -> None:
  """An embeddings file from another encoder is refused; one that records
  none is said in one line. ``source`` names the file as the user gave it
  (INPUT or --embeddings)."""
  from uniroute_jax.data import embedder_of
  if router.embedder is None:
    return
  identity = embedder_of(path)
  if identity is None:
    known = router.embedder
    warnings.warn(
        f"{source} {path} does not record its encoder, so it "
        f"cannot be checked against the router's ({known.get('name')}, "
        f"{known.get('truncation')} truncation at {known.get('max_length')} "
        "tokens); embed prompts with uniroute embed to have it checked")
    return
  router.check_embedder(identity, what=f"{source} {path}")


def _prompts(args, router, path: str, text: bool):
  """(ids, [n, d] embeddings) of the prompts to route."""
  import numpy as np
  if not text:
    source = "INPUT" if args.input is not None else "--embeddings"
    # Read first: a file that is not embeddings is one error, no warning.
    ids, x = inputs.read_embedded_prompts(path)
    _check_recorded_embedder(path, router, source)
  else:
    from uniroute_jax.data import read_prompts
    ids, texts = read_prompts(path, column=args.column, id_column=args.id_column)
    x = _text_embedder(args, router, path)(texts)
  if not x.shape[0]:
    raise ValueError(f"{path} holds no prompts")
  return np.asarray(ids), x


def _lambdas(args, router):
  values = list(args.lambdas if args.lambdas is not None else (0.0,))
  return values, common.in_dtype("--lambda", values, router.dtype,
                                 "rescale the costs instead")


def _budget_lambda(args, router, x):
  """The lambda that meets --max-cost-per-prompt or --min-quality on the
  prompts being routed, and the line that reports it.

  The search runs in the router's dtype; what it reports is checked in
  float64 on the choices actually written, and where rounding put it on
  the wrong side of the budget, it is asked again for a little less.
  """
  import numpy as np
  from uniroute_jax import routing
  gamma32 = router.predicted_loss(x)
  gamma = np.asarray(gamma32, np.float64)
  cost = np.asarray(router.cost, np.float64)
  rows = np.arange(x.shape[0])
  pool = (None if args.models is None else
          np.array([name in set(args.models) for name in router.models]))
  available = np.ones(len(router.models), bool) if pool is None else pool
  by_cost = args.max_cost_per_prompt is not None
  budget = args.max_cost_per_prompt if by_cost else args.min_quality
  ask = min(budget, float(np.finfo(router.dtype).max)) if by_cost else budget
  for _ in range(8):
    point = routing.operating_point(
        gamma32, router.cost, pool_mask=pool,
        **({"max_cost": ask} if by_cost else {"min_quality": ask}))
    if not bool(point.feasible):
      break
    lam = float(point.lam)
    choice = np.asarray(router.route(x, np.asarray(lam, router.dtype),
                                     models=args.models).choice)
    spent, quality = cost[choice].mean(), 1.0 - gamma[rows, choice].mean()
    miss = spent - budget if by_cost else budget - quality
    if miss <= 0:
      return lam, (f"lambda {lam:.6g} meets it: predicted quality "
                   f"{quality:.4f}, mean cost {spent:.6g} per prompt")
    ask = (ask - miss - abs(ask) * 1e-6 if by_cost
           else ask + miss + 1e-6)
  if by_cost:
    cheapest = cost[available].min()
    if budget >= cheapest:
      raise ValueError(
          f"--max-cost-per-prompt {budget:.10g} is within the router's "
          f"{np.dtype(router.dtype).name} rounding of the cheapest routing of "
          f"these prompts ({cheapest:.10g} per prompt): give a little more, "
          f"e.g. {cheapest * (1 + 1e-5):.10g}")
    raise ValueError(
        f"--max-cost-per-prompt {budget:.10g} is below the cheapest routing of "
        f"these prompts ({cheapest:.10g} per prompt, every prompt to the "
        "cheapest LLM)")
  best = 1.0 - np.where(available[None, :], gamma, np.inf).min(axis=1).mean()
  raise ValueError(
      f"--min-quality {budget:g} is above the best predicted quality of these "
      f"prompts ({best:.6f}, every prompt to its most accurate LLM)")


def run(args) -> int:
  import numpy as np
  from uniroute_jax.router import Router

  router_path, prompts_path, text = _paths(args)
  common.new_file("--out", args.out)
  suffix = os.path.splitext(args.out)[1].lower()
  if suffix not in OUTPUT_SUFFIXES:
    raise ValueError(f"--out must end in .jsonl or .csv, got {args.out}")
  if text:
    encoding.check_encoder_arguments(args, others={"--out": args.out,
                                                   "INPUT": prompts_path,
                                                   "ROUTER": router_path})
  router = Router.load(router_path)
  if not router.models:
    raise ValueError(f"{router_path}: the router's pool is empty; add LLMs "
                     "with uniroute add-model")
  ids, x = _prompts(args, router, prompts_path, text)
  budget_line = None
  if args.max_cost_per_prompt is not None or args.min_quality is not None:
    lam, budget_line = _budget_lambda(args, router, x)
    values, lambdas = [lam], np.asarray([lam], router.dtype)
  else:
    values, lambdas = _lambdas(args, router)
  result = router.route(x, lambdas, models=args.models)
  choice = np.asarray(result.choice).reshape(len(lambdas), -1)
  gamma = np.asarray(result.predicted_loss)
  membership = np.asarray(result.membership)
  cluster = membership if membership.ndim == 1 else membership.argmax(axis=1)
  names, cost = list(router.models), np.asarray(router.cost)
  shown = [j for j, name in enumerate(names)
           if args.models is None or name in args.models]
  rows = []
  for lam, chosen in zip(values, choice):
    for i, j in enumerate(chosen.tolist()):
      rows.append((ids[i].item() if hasattr(ids[i], "item") else ids[i], lam,
                   names[j], int(cluster[i]), float(gamma[i, j]),
                   float(cost[j]), {names[l]: float(gamma[i, l]) for l in shown}))
  common.write_new("--out", args.out,
                   text=_jsonl(rows) if suffix == ".jsonl" else
                   _csv(rows, [names[l] for l in shown]))
  shares = ", ".join(
      f"{name} {np.mean(choice[-1] == j):.0%}" for j, name in enumerate(names)
      if np.any(choice[-1] == j))
  spent = float(np.mean(cost[choice[-1]]))
  print(f"Wrote {args.out}: {x.shape[0]} prompts x {len(lambdas)} lambda(s); "
        f"at lambda={values[-1]:g}: {shares}; mean cost {spent:.6g} per prompt")
  if budget_line is not None:
    print(budget_line)
  return 0


def _jsonl(rows) -> str:
  out = []
  for prompt_id, lam, model, cluster, loss, cost, losses in rows:
    out.append(json.dumps({
        "prompt_id": prompt_id, "lambda": lam, "model": model,
        "cluster": cluster, "predicted_loss": round(loss, 6),
        "cost": cost,
        "predicted_losses": {k: round(v, 6) for k, v in losses.items()}},
        ensure_ascii=False))
  return "\n".join(out) + "\n"


def _csv(rows, names) -> str:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["prompt_id", "lambda", "model", "cluster", "predicted_loss",
                   "cost"] + [f"predicted_loss:{name}" for name in names])
  for prompt_id, lam, model, cluster, loss, cost, losses in rows:
    # Costs at float32's full precision (9 digits): a budget is checked
    # against what is written.
    writer.writerow([prompt_id, repr(lam), model, cluster, f"{loss:.6g}",
                     f"{cost:.9g}"] + [f"{losses[n]:.6g}" for n in names])
  return text.getvalue()
