"""Statistics across seeds: Student-t confidence intervals and step-aligned mean curves.

No scipy: the t quantile comes from the exact closed form of the t CDF for integer degrees of
freedom (Abramowitz & Stegun 26.7.3-4) inverted by bisection; seeds are few, so df is a small int.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, cos
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # terms cos^k * (2*4*...*(k-1)) / (1*3*...*k)
                term *= cos * cos * (k - 1) / k
                total += term
        return 2.0 / math.pi * (theta + sin * total)
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):  # terms cos^k * (1*3*...*(k-1)) / (2*4*...*k)
        term *= cos * cos * (k - 1) / k
        total += term
    return sin * total


def t_critical(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value: P(|T_df| < t) = confidence (bisection, 1e-12)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, df) < confidence:
        high *= 2.0
    while high - low > 1e-12 * max(1.0, high):
        mid = 0.5 * (low + high)
        if _t_two_sided_mass(mid, df) < confidence:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with the half-width of its confidence interval (None with one seed)."""

    mean: float
    ci: float | None
    n: int
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci": self.ci, "n": self.n, "values": list(self.values)}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(data.mean())
    ci = None
    if data.size > 1:
        ci = t_critical(int(data.size) - 1, confidence) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return Estimate(mean, ci, int(data.size), tuple(float(v) for v in data))


@dataclass(frozen=True)
class Curve:
    steps: np.ndarray
    mean: np.ndarray
    ci: np.ndarray  # NaN where fewer than two seeds have the step
    n: np.ndarray
    elapsed: np.ndarray  # mean wall seconds at the step over seeds that have it; NaN if unknown


def curve_across_seeds(
    series: Sequence[Mapping[int, float]],
    elapsed: Sequence[Mapping[int, float] | None],
    confidence: float = 0.95,
) -> Curve | None:
    """Mean and CI over seeds at every step any seed has a value at (None if none has any).

    `series[i]` maps step -> value for seed i; `elapsed[i]` maps step -> wall seconds (or None).
    A point's wall-clock is the mean over the seeds that have both a value and a time at that step.
    """
    steps = sorted({int(s) for values in series for s in values})
    if not steps:
        return None
    mean, ci, n, times_at = [], [], [], []
    for step in steps:
        values = [values[step] for values in series if step in values]
        est = mean_ci(values, confidence)
        mean.append(est.mean)
        ci.append(np.nan if est.ci is None else est.ci)
        n.append(est.n)
        times = [t[step] for t, values in zip(elapsed, series) if t and step in values and step in t]
        times_at.append(float(np.mean(times)) if times else np.nan)
    return Curve(
        np.array(steps, dtype=np.int64),
        np.array(mean, dtype=np.float64),
        np.array(ci, dtype=np.float64),
        np.array(n, dtype=np.int64),
        np.array(times_at, dtype=np.float64),
    )


def first_step_reaching(steps: np.ndarray, values: np.ndarray, target: float, tol: float) -> int | None:
    hits = np.nonzero(values >= target - tol)[0]
    return int(steps[hits[0]]) if hits.size else None
