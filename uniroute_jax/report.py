"""Turning an evaluation into a table, a JSON document and a plot.

Nothing here computes a metric; it only presents :class:`protocol.Evaluation`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from uniroute_jax import io, protocol


def _number(x) -> float | None:
  """A JSON-safe float: infinity and NaN become null."""
  x = float(x)
  return x if math.isfinite(x) else None


def _numbers(a) -> list:
  return [_number(v) for v in np.asarray(a, np.float64).ravel()]


def to_dict(evaluation: protocol.Evaluation, **extra: Any) -> dict[str, Any]:
  """Every number of an evaluation as plain JSON types (QNC infinity -> null).

  ``extra`` (e.g. dataset shape, seed, wall time) is added at the top level.
  """
  methods = {}
  for name, s in evaluation.methods.items():
    method = s.method
    entry = {
        "title": s.title,
        "reference": method.reference,
        "clairvoyant": method.clairvoyant,
        "area": _number(s.area),
        "area50": _number(s.area50),
        "qnc": _number(s.qnc),
        "peak_quality": _number(s.peak_quality),
        "area_ci95": [_number(v) for v in s.area_ci],
        "trial_area": _numbers(s.trials.area),
        "trial_area50": _numbers(s.trials.area50),
        "trial_qnc": _numbers(s.trials.qnc),
        "trial_best_single_quality": _numbers(s.trials.best_quality),
        "mean_curve": {"relative_cost": _numbers(s.relative_cost),
                       "quality": _numbers(s.quality)},
    }
    if method.hyperparameter:
      entry["hyperparameter"] = method.hyperparameter
      entry["chosen"] = [int(v) for v in np.asarray(s.trials.chosen)]
      candidates = _candidates(method)
      if candidates is not None:
        entry["candidates"] = candidates
    entry.update(_excess_entry(s))
    if s.versus_best is not None:
      entry["sign_test_vs_best"] = {
          "wins": s.versus_best.wins, "losses": s.versus_best.losses,
          "ties": s.versus_best.ties, "p_value": s.versus_best.p_value,
          "significantly_worse": s.significantly_worse}
    methods[name] = entry
  return {
      "methods": methods,
      "best_method": evaluation.best,
      "excess_lambdas": _numbers(evaluation.excess_lambdas),
      "trials": int(evaluation.splits.train.shape[0]),
      "alpha": evaluation.alpha,
      "split_sizes": {
          "train_prompts": int(evaluation.splits.train.shape[1]),
          "val_prompts": int(evaluation.splits.val.shape[1]),
          "test_prompts": int(evaluation.splits.test.shape[1]),
          # Those labelled for every test LLM: what each trial scores.
          "scored_test_prompts": [int(v) for v in
                                  evaluation.scored_test_prompts],
          "train_llms": int(evaluation.splits.train_models.shape[1]),
          "test_llms": int(evaluation.splits.test_models.shape[1])},
      **extra,
  }


def _excess_entry(s) -> dict[str, Any]:
  """A method's excess risk over the oracle at ``excess_lambdas`` and, for
  cluster routers, its split; absent where the method has none. A trial
  without a value (no test prompt labelled for every test LLM) is null, and
  so is a mean over it."""
  trials = s.trials
  entry = {}
  if np.any(np.isfinite(trials.excess)):
    entry["excess_risk"] = {"mean": _numbers(s.excess),
                            "trials": [_numbers(t) for t in trials.excess]}
  if np.any(np.isfinite(trials.estimation)):
    entry["excess_decomposition"] = {
        "estimation": _numbers(s.estimation),
        "approximation": _numbers(s.approximation),
        "trial_estimation": [_numbers(t) for t in trials.estimation],
        "trial_approximation": [_numbers(t) for t in trials.approximation],
        "area_estimation": _number(s.area_estimation),
        "area_approximation": _number(s.area_approximation),
        "trial_area_estimation": _numbers(trials.area_estimation),
        "trial_area_approximation": _numbers(trials.area_approximation)}
  return entry


def _candidates(method) -> list[int] | None:
  """The candidate values a method chose its hyper-parameter from."""
  for field in ("clusters", "neighbors", "ranks"):
    values = getattr(method, field, None)
    if values is not None:
      return [int(v) for v in np.asarray(values).ravel()]
  return None


def format_table(evaluation: protocol.Evaluation) -> str:
  """The results as a fixed-width text table, one row per method.

  Raises:
    ValueError: when a result to print is NaN (undefined on this data): a
      table never shows NaN as a number.
  """
  for s in evaluation.methods.values():
    shown = [("Area", s.area), ("Area(50%)", s.area50),
             ("peak quality", s.peak_quality), ("QNC", s.qnc)]
    if s.trials.area.shape[0] >= 2:   # one trial prints no interval
      shown += list(zip(("95% CI low", "95% CI high"), s.area_ci))
    for label, value in shown:
      if math.isnan(float(value)):
        raise ValueError(
            f"the {label} of {s.title} is undefined (NaN) on this data, so "
            "no table is printed")
  width = max([22] + [len(s.title) for s in evaluation.methods.values()])
  header = (f"{'method':<{width}} {'Area':>7} {'95% CI':>15} {'Area(50%)':>10} "
            f"{'QNC':>7} {'peak':>6} {'chosen':>9}  vs best")
  lines = [header, "-" * len(header)]
  for name, s in evaluation.methods.items():
    method = s.method
    qnc = "never" if math.isinf(s.qnc) else f"{100 * s.qnc:.1f}%"
    chosen = ""
    if method.hyperparameter:
      chosen = f"{method.hyperparameter}={median_choice(s.trials.chosen)}"
    if name == evaluation.best:
      versus = "best"
    elif s.versus_best is None:
      versus = ("(clairvoyant)" if method.clairvoyant else
                "(upper bound)" if method.reference else "")
    else:
      t = s.versus_best
      mark = " *" if s.significantly_worse else ""
      versus = f"{t.wins}-{t.losses}, p={t.p_value:.2g}{mark}"
    single = s.trials.area.shape[0] < 2
    ci = "n/a" if single else f"[{s.area_ci[0]:.3f}, {s.area_ci[1]:.3f}]"
    lines.append(f"{s.title:<{width}} {s.area:7.3f} {ci:>15} {s.area50:10.3f} "
                 f"{qnc:>7} {s.peak_quality:6.3f} {chosen:>9}  {versus}")
  return "\n".join(lines)


def median_choice(chosen) -> int:
  """The median of the trials' chosen hyper-parameters, taken among them
  (the upper one of an even count), so that it is a value some trial
  chose: the mean of two middle candidates may be no candidate at all."""
  values = np.sort(np.asarray(chosen).astype(np.int64))
  return int(values[values.shape[0] // 2])


def format_excess(evaluation: protocol.Evaluation) -> str:
  """Where each cluster router's Area lost to the per-prompt oracle goes:
  estimation (Psi from too few labelled prompts) and approximation (the
  clusters themselves, and the labels' own noise), means over trials; ""
  when no router has the split.
  """
  rows = [s for s in evaluation.methods.values()
          if math.isfinite(s.area_estimation)
          and math.isfinite(s.area_approximation)]
  if not rows:
    return ""
  width = max(len(s.title) for s in rows)
  lines = ["Area lost to the per-prompt oracle = estimation (more labelled "
           "prompts shrink it)", "  + approximation (what the clusters miss "
           "with every label known, and the labels' own noise, which no "
           "router removes), mean over trials:"]
  for s in rows:
    gap = s.area_estimation + s.area_approximation
    lines.append(f"  {s.title:<{width}}  {_fixed(gap)} = "
                 f"{_fixed(s.area_estimation)} + {_fixed(s.area_approximation)}")
  return "\n".join(lines)


def _fixed(value: float, digits: int = 3) -> str:
  """``value`` to ``digits`` decimals, never "-0.000" for a rounding
  residue below zero."""
  text = f"{value:.{digits}f}"
  return text[1:] if text.startswith("-") and float(text) == 0 else text


def _size_label(size: int, curve) -> str:
  return (f"all ({size})" if size == curve.num_representatives
          else str(int(size)))


def onboarding_dict(curve: protocol.OnboardingCurve) -> dict[str, Any]:
  """An onboarding curve as plain JSON types."""
  low, high = curve.interval()
  return {
      "sizes": [int(s) for s in curve.sizes],
      "representatives": curve.num_representatives,
      "clusters": [int(k) for k in curve.clusters],
      "chosen": [int(k) for k in curve.chosen],
      "selections": {
          name: {"mean": _numbers(curve.mean()[o]),
                 "ci95": [_numbers(low[o]), _numbers(high[o])],
                 "trials": [_numbers(t) for t in curve.area[:, o]],
                 "mean_by_k": {str(int(k)): _numbers(curve.area_by_k[:, c, o].mean(0))
                               for c, k in enumerate(curve.clusters)}}
          for o, name in enumerate(curve.selections)},
  }


def format_onboarding(curve: protocol.OnboardingCurve) -> str:
  """The onboarding curve as a text table: the mean Area (95% interval)
  per number of prompts and order, then the K each size does best with."""
  for value in np.ravel(curve.mean()):
    if math.isnan(float(value)):
      raise ValueError("the onboarding curve is undefined (NaN) on this data, "
                       "so no table is printed")
  low, high = curve.interval()
  single = curve.area.shape[0] < 2
  width = max(len(_size_label(s, curve)) for s in curve.sizes)
  columns = [f"{name:>21}" for name in curve.selections]
  lines = [f"{'prompts':<{max(width, 7)}} " + " ".join(columns)]
  for i, size in enumerate(curve.sizes):
    cells = []
    for o in range(len(curve.selections)):
      mean = curve.mean()[o, i]
      cells.append(f"{mean:.3f}".rjust(21) if single else
                   f"{mean:.3f} [{low[o, i]:.3f}, {high[o, i]:.3f}]".rjust(21))
    lines.append(f"{_size_label(size, curve):<{max(width, 7)}} " + " ".join(cells))
  by_k = curve.area_by_k.mean(axis=0)[:, 0]            # [C, S], random order
  best = [f"{_size_label(s, curve)}: K={int(curve.clusters[np.argmax(by_k[:, i])])}"
          for i, s in enumerate(curve.sizes)]
  lines.append("K with the largest mean Area at each size (random order; "
               "chosen on the test prompts, for insight only): "
               + ", ".join(best))
  return "\n".join(lines)


def plot_onboarding(curve: protocol.OnboardingCurve, path: str | None = None,
                    *, title: str = "", ax=None):
  """Draws the mean Area against the prompts a new LLM is run on, one line
  per order, with 95% intervals. Arguments as :func:`plot`."""
  fig, ax, plt = _axes(path, ax)
  low, high = curve.interval()
  for o, name in enumerate(curve.selections):
    ax.plot(curve.sizes, curve.mean()[o], "o-", label=name)
    if curve.area.shape[0] > 1:
      ax.fill_between(curve.sizes, low[o], high[o], alpha=0.2)
  ax.set_xscale("log")
  ax.set_xticks(curve.sizes, [_size_label(size, curve) for size in curve.sizes])
  ax.minorticks_off()
  ax.set_xlabel("prompts a new LLM is run on (log scale)")
  ax.set_ylabel("Area of the deferral curve")
  trials = curve.area.shape[0]
  ax.set_title(title or f"Onboarding curve over {trials} trial(s)")
  ax.legend(loc="lower right", fontsize="small")
  ax.grid(alpha=0.3)
  return _finish(fig, plt, path)


def format_bounds(bounds: dict) -> str:
  """Prop. 2's bound by K (the command line's ``impurity_bound`` document)
  as a two-column table."""
  for value in bounds["bound"]:
    if not math.isfinite(value):
      raise ValueError("Prop. 2's bound is undefined (NaN) on this data, so "
                       "no table is printed")
  lines = [f"{'K':>5}  bound"]
  lines += [f"{k:>5}  {b:.3f}" for k, b in zip(bounds["clusters"],
                                                bounds["bound"])]
  return "\n".join(lines)


def plot_bounds(bounds: dict, path: str | None = None, *, title: str = "",
                ax=None):
  """Draws Prop. 2's bound against K (:func:`format_bounds`' document).
  Arguments as :func:`plot`."""
  fig, ax, plt = _axes(path, ax)
  ax.plot(bounds["clusters"], bounds["bound"], "o-")
  ax.set_xscale("log")
  ax.set_xticks(bounds["clusters"], [str(k) for k in bounds["clusters"]])
  ax.minorticks_off()
  ax.set_xlabel("clusters K (log scale)")
  ax.set_ylabel("2 E[max_h Delta] (Prop. 2)")
  ax.set_title(title or "Prop. 2's bound against K")
  ax.grid(alpha=0.3)
  return _finish(fig, plt, path)


PLOT_FORMATS = ("png", "svg", "pdf")
"""The file formats :func:`plot` writes, by suffix."""


def plot(evaluation: protocol.Evaluation, path: str | None = None, *,
         title: str = "", ax=None):
  """Draws the mean deferral curves, with each test LLM as a point.

  Args:
    evaluation: from :func:`protocol.evaluate`.
    path: where to save the figure (PNG, SVG, PDF by extension); None to
      only draw it. The file is written whole or not at all, and never over
      an existing one (``FileExistsError``).
    title: the axes' title; default names the number of trials.
    ax: matplotlib axes to draw into (e.g. in a notebook); default a new
      figure.

  Returns:
    The matplotlib figure. Needs matplotlib (``pip install
    'uniroute_jax[plot]'``).
  """
  fig, ax, plt = _axes(path, ax)
  pool = evaluation.pool
  ax.scatter(np.ravel(pool.relative_cost), np.ravel(pool.quality), s=12,
             color="0.6", alpha=min(1.0, 8.0 / pool.quality.shape[0]),
             label="single test LLMs", zorder=1)
  for name, s in evaluation.methods.items():
    method = s.method
    style = ":" if method.clairvoyant else "--" if method.reference else "-"
    ax.plot(s.relative_cost, s.quality, style, label=f"{s.title} ({s.area:.3f})",
            zorder=2)
  ax.set_xlabel("relative cost (1 = the dearest test LLM)")
  ax.set_ylabel("quality (1 - mean loss)")
  ax.set_xlim(0.0, 1.0)
  trials = evaluation.splits.train.shape[0]
  ax.set_title(title or f"Mean deferral curves over {trials} trial(s)")
  ax.legend(loc="lower right", fontsize="small")
  ax.grid(alpha=0.3)
  return _finish(fig, plt, path)


def plot_excess(evaluation: protocol.Evaluation, path: str | None = None, *,
                title: str = "", ax=None):
  """Draws each router's mean excess risk over the oracle against lambda.

  Solid: the excess; for cluster routers also its estimation part (dashed:
  more labelled prompts shrink it) and approximation part (dotted: better
  clusters shrink it). Lambda is in relative-cost units, on a log axis
  (lambda = 0 is drawn at the left edge). Arguments and return value as
  :func:`plot`.
  """
  fig, ax, plt = _axes(path, ax)
  lambdas = np.asarray(evaluation.excess_lambdas, np.float64)
  positive = lambdas[lambdas > 0]
  left = positive.min() / 3 if positive.size else 1.0
  x = np.where(lambdas > 0, lambdas, left)
  for name, s in evaluation.methods.items():
    if s.method.reference or not np.all(np.isfinite(s.excess)):
      continue
    (line,) = ax.plot(x, s.excess, "-", label=f"{s.title}: excess")
    if np.all(np.isfinite(s.estimation)):
      ax.plot(x, s.estimation, "--", color=line.get_color(),
              label=f"{s.title}: estimation")
      ax.plot(x, s.approximation, ":", color=line.get_color(),
              label=f"{s.title}: approximation")
  ax.set_xscale("log")
  ax.set_xlabel("lambda (quality per unit of relative cost; left edge: 0)")
  ax.set_ylabel("risk over the per-prompt oracle")
  trials = evaluation.splits.train.shape[0]
  ax.set_title(title or f"Mean excess risk over {trials} trial(s)")
  if ax.get_legend_handles_labels()[0]:   # references alone draw no line
    ax.legend(loc="upper right", fontsize="x-small")
  ax.grid(alpha=0.3)
  return _finish(fig, plt, path)


def _axes(path, ax):
  try:
    import matplotlib
    if ax is None and path is not None:
      matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise ValueError("plotting needs matplotlib: pip install "
                     "'uniroute_jax[plot]'") from None
  if path is not None:
    suffix = os.path.splitext(str(path))[1].lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
      raise ValueError(f"path must end in one of {PLOT_FORMATS}, got {path}")
  if ax is None:
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
  else:
    fig = ax.figure
  return fig, ax, plt


def _finish(fig, plt, path):
  fig.tight_layout()
  if path is not None:
    suffix = os.path.splitext(str(path))[1].lower().lstrip(".")
    try:
      io.atomic_write(path, lambda f: fig.savefig(f, format=suffix, dpi=120))
    finally:
      plt.close(fig)
  return fig
