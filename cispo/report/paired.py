"""Paired comparisons of two groups by seed: the difference of a per-run number, with intervals.

Runs of two algorithms with the same seed share the data order, the warm start and the eval
problems, so their difference cancels what the seed does to both; the seed pairs are the
independent units. For each per-run metric (area under the curve, compute to a target, fitted
asymptote, final value) the report gives the mean difference over pairs, a percentile bootstrap
interval (pairs resampled with replacement) and the paired Student-t interval, and says plainly
whether the interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cispo.report.stats import mean_ci


def mean_over_range(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Area under the piecewise-linear curve (x, y) on [low, high], divided by high - low: the mean
    value over that compute range (ScaleRL-style "area under the curve", comparable across runs).
    x must be increasing and cover [low, high]."""
    if high <= low:
        raise ValueError(f"empty range [{low}, {high}]")
    grid = np.unique(np.concatenate([[low, high], x[(x > low) & (x < high)]]))
    values = np.interp(grid, x, y)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)) / (high - low))


def first_reaching(x: np.ndarray, y: np.ndarray, target: float, tol: float) -> float | None:
    """The compute at the first point whose value is >= target (None if none is)."""
    hits = np.nonzero(y >= target - tol)[0]
    return float(x[hits[0]]) if hits.size else None


@dataclass(frozen=True)
class PairedDifference:
    """mean(first - second) over seed pairs, with its bootstrap and t intervals (None below 2 pairs)."""

    metric: str
    first: str
    second: str
    seeds: tuple[str, ...]
    differences: tuple[float, ...]
    mean: float | None
    bootstrap_ci: tuple[float, float] | None
    t_ci: tuple[float, float] | None
    left_out: int
    """Pairs without a value (a run missing the key, a target one run never reached, a failed fit)."""
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.differences)

    def verdict(self) -> str:
        """A plain sentence on the bootstrap interval of first - second."""
        if self.bootstrap_ci is None:
            return "no interval (fewer than 2 pairs)"
        low, high = self.bootstrap_ci
        if low > 0:
            return f"excludes 0: {self.first} > {self.second}"
        if high < 0:
            return f"excludes 0: {self.first} < {self.second}"
        return "includes 0: no difference shown"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["n"] = self.n
        out["verdict"] = self.verdict()
        return out


def bootstrap_mean_ci(values: Sequence[float], *, resamples: int, confidence: float,
                      rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the mean over `resamples` resamples with replacement."""
    data = np.asarray(values, dtype=np.float64)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    return (float(np.quantile(means, (1 - confidence) / 2)), float(np.quantile(means, (1 + confidence) / 2)))


def paired_difference(metric: str, first: str, second: str, a: Mapping[str, float | None],
                      b: Mapping[str, float | None], *, resamples: int, confidence: float,
                      rng: np.random.Generator, note: str = "") -> PairedDifference:
    """first - second for every seed both groups ran (`a`, `b`: seed -> value or None)."""
    common = [s for s in a if s in b]
    seeds = tuple(s for s in common if a[s] is not None and b[s] is not None)
    diffs = tuple(float(a[s]) - float(b[s]) for s in seeds)  # type: ignore[arg-type]
    mean = float(np.mean(diffs)) if diffs else None
    boot = t_ci = None
    if len(diffs) >= 2:
        boot = bootstrap_mean_ci(diffs, resamples=resamples, confidence=confidence, rng=rng)
        est = mean_ci(diffs, confidence)
        assert est.ci is not None
        t_ci = (est.mean - est.ci, est.mean + est.ci)
    return PairedDifference(metric, first, second, seeds, diffs, mean, boot, t_ci,
                            left_out=len(common) - len(seeds), note=note)
