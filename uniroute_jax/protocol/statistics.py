"""Statistics over trials: the mean deferral curve, intervals, sign tests.

The mean deferral curve is the pointwise mean of the trials' monotone
envelopes over relative cost. Its Area and Area(50%) equal the mean
per-trial areas (integration is linear); its QNC is the relative cost at
which it reaches the mean quality of the trials' best single test LLM.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np

from uniroute_jax import checks, metrics
from uniroute_jax.protocol.methods import Method
from uniroute_jax.protocol.running import TrialMetrics


class SignTest(NamedTuple):
  """Two-sided exact sign test of per-trial areas against another method."""

  wins: int
  losses: int
  ties: int
  p_value: float


def sign_test(a, b, *, tie_tolerance: float = 0.0) -> SignTest:
  """Exact two-sided sign test that ``a`` and ``b`` (paired) differ.

  Pairs within ``tie_tolerance`` of each other are ties, and ties are
  dropped; p = min(1, 2 P[Binomial(wins + losses, 1/2) <= min]), exact for
  any number of pairs.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"sign_test needs two 1-d arrays of equal length, got "
                     f"{a.shape} and {b.shape}")
  if not tie_tolerance >= 0:
    raise ValueError(f"tie_tolerance must be non-negative, got "
                     f"{checks.shown(tie_tolerance)}")
  wins = int(np.sum(a > b + tie_tolerance))
  losses = int(np.sum(a < b - tie_tolerance))
  n = wins + losses
  tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
  # Integers divide exactly (and underflow to 0.0 correctly); 2.0 ** n
  # overflows a float above 1023 pairs.
  p = min(1.0, 2 * tail / 2 ** n) if n else 1.0
  return SignTest(wins, losses, int(a.size - n), p)


def area_tie_tolerance(dtype) -> float:
  """Per-trial areas of two methods closer than this are a tie: the
  rounding of areas summed in ``dtype`` (an area lies in [0, 1]), so that
  two methods computing the same curve (K-means with K = 1 and
  ZeroRouter, Prop. 9) never beat each other by rounding."""
  return 64 * float(np.finfo(dtype).eps)


def area_interval(areas) -> tuple[np.ndarray, np.ndarray]:
  """(low, high): the 95% normal-approximation interval of the mean of
  per-trial areas (trials on axis 0), within [0, 1] where every Area lies;
  NaN for one trial."""
  areas = np.asarray(areas)
  t = areas.shape[0]
  mean = areas.mean(axis=0)
  half = (1.96 * areas.std(axis=0, ddof=1) / math.sqrt(t) if t > 1
          else np.full(mean.shape, np.nan))
  return np.maximum(mean - half, 0.0), np.minimum(mean + half, 1.0)


class MethodSummary(NamedTuple):
  """One method's results over all trials.

  Attributes:
    name, title: the method's key and display name.
    method: the :class:`~uniroute_jax.protocol.Method` value evaluated.
    area, area50, qnc, peak_quality: metrics of the mean deferral curve.
    area_ci: 95% normal-approximation interval of the mean per-trial area.
    relative_cost, quality: the mean curve, [G] each.
    trials: the per-trial :class:`TrialMetrics`.
    versus_best: sign test of the per-trial areas against the best method
      (None for the best method itself and for reference methods).
    significantly_worse: p < alpha and fewer wins than losses.
    excess, estimation, approximation: [L] means over trials of the excess
      risk over the oracle and its split (NaN where the method has none;
      see :class:`~uniroute_jax.protocol.TrialMetrics`).
    area_estimation, area_approximation: means of the split in Area.
  """

  name: str
  title: str
  method: Method
  area: float
  area50: float
  qnc: float
  peak_quality: float
  area_ci: tuple[float, float]
  relative_cost: np.ndarray
  quality: np.ndarray
  trials: TrialMetrics
  versus_best: SignTest | None
  significantly_worse: bool
  excess: np.ndarray
  estimation: np.ndarray
  approximation: np.ndarray
  area_estimation: float
  area_approximation: float


def summarise(results: dict[str, TrialMetrics], methods: Sequence[Method], *,
              alpha: float = 0.01) -> tuple[dict[str, MethodSummary], str | None]:
  """Mean-curve metrics, intervals and sign tests; also the best method.

  Args:
    results: per-trial metrics by method name (from ``run_trials``).
    methods: the methods evaluated (their titles and whether they are
      reference methods).
    alpha: level of the sign tests.

  The best method is the non-reference method with the largest mean area.
  """
  by_name = {m.name: m for m in methods}
  missing = [name for name in results if name not in by_name]
  if missing:
    raise ValueError(f"methods must describe every result, missing {missing}")
  summaries, best = {}, None
  candidates = [n for n in results if not by_name[n].reference]
  if candidates:
    best = max(candidates, key=lambda n: float(np.mean(results[n].area)))
  for name, r in results.items():
    method = by_name[name]
    quality = np.mean(r.curve_quality, axis=0)
    grid = np.linspace(0.0, 1.0, quality.shape[0])
    curve = metrics.curve_from_points(grid, quality, max_cost=1.0,
                                      best_quality=float(np.mean(r.best_quality)))
    mean_metrics = metrics.deferral_metrics(curve)
    mean = float(np.mean(r.area))
    low, high = area_interval(r.area)
    test = None
    if best is not None and name != best and not method.reference:
      test = sign_test(r.area, results[best].area,
                       tie_tolerance=area_tie_tolerance(r.area.dtype))
    summaries[name] = MethodSummary(
        name=name, title=method.title, method=method, area=mean,
        area50=float(np.mean(r.area50)), qnc=float(mean_metrics.qnc),
        peak_quality=float(np.max(quality)),
        area_ci=(float(low), float(high)),
        relative_cost=grid, quality=quality, trials=r, versus_best=test,
        significantly_worse=bool(test is not None and test.p_value < alpha
                                 and test.wins < test.losses),
        excess=np.mean(r.excess, axis=0), estimation=np.mean(r.estimation, axis=0),
        approximation=np.mean(r.approximation, axis=0),
        area_estimation=float(np.mean(r.area_estimation)),
        area_approximation=float(np.mean(r.area_approximation)))
  return summaries, best
