"""ScaleRL's compute-performance curve, fitted by least squares, with a bootstrap over seeds.

    R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)        (Khatri et al. 2025, arXiv 2510.13786, Eq. 1)

R: eval accuracy; C: compute (steps, generated tokens or wall seconds); R0: the start; A: the
asymptote (the accuracy the recipe saturates at); B: the efficiency (steepness); C_mid: the compute
at which half of the gain A - R0 is reached. R(0) = R0.

No scipy: R is linear in (R0, A) once B and C_mid are fixed, so the fit is a 2-D search over
(log B, log C_mid) with (R0, A) solved in closed form at every point ("variable projection"),
a coarse grid over the whole range, then small grids that close in on the best point. A grid cannot be sent
off by a bad starting point the way a local optimiser can,
and it is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cispo.report.options import CurveFitConfig

PARAMS = ("r0", "a", "b", "c_mid")


class CurveFitError(ValueError):
    """The points cannot identify the curve (too few compute values, nothing finite)."""


def _fraction_done(c: np.ndarray, b: np.ndarray | float, log_c_mid: np.ndarray | float) -> np.ndarray:
    """1 / (1 + (C_mid / C)^B) = logistic(B (log C - log C_mid)), 0 at C = 0; b and log_c_mid of
    shape [k] give rows [k, n]. Written with tanh so no power over- or underflows."""
    c = np.asarray(c, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_c = np.log(c)  # -inf at C = 0: logistic(-inf) = 0
    z = np.asarray(b, dtype=np.float64)[..., None] * (log_c - np.asarray(log_c_mid, dtype=np.float64)[..., None])
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def saturating_curve(c: np.ndarray | Sequence[float], r0: float, a: float, b: float, c_mid: float) -> np.ndarray:
    """R(C) of ScaleRL's Eq. 1 at each C (C >= 0)."""
    s = _fraction_done(np.asarray(c, dtype=np.float64), float(b), math.log(c_mid))
    return r0 + (a - r0) * s


@dataclass(frozen=True)
class CurveFit:
    r0: float
    a: float
    b: float
    c_mid: float
    rmse: float
    n_points: int
    r0_fitted: bool
    max_c: float
    """The largest compute in the data: C_mid beyond it means the curve has not bent yet."""
    at_search_edge: tuple[str, ...]
    """Parameters that ended on a bound of their search range (A, B or C_mid): not identified."""

    @property
    def bent(self) -> bool:
        return self.c_mid <= self.max_c

    def __call__(self, c: np.ndarray | Sequence[float]) -> np.ndarray:
        return saturating_curve(c, self.r0, self.a, self.b, self.c_mid)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at_search_edge"] = list(self.at_search_edge)
        out["bent"] = self.bent
        return out


def _project(y: np.ndarray, s: np.ndarray, r0: float | None, a_bounds: tuple[float, float]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best (R0, A) and the squared error for each row of s (shape [k, n]), in closed form.

    R0 fixed: A - R0 = sum(s (y - R0)) / sum(s^2). R0 free: the 2x2 normal equations of
    y = R0 (1 - s) + A s. A is clipped to its bounds and R0 re-solved given A (the constrained
    optimum of a convex quadratic with one box-constrained variable)."""
    low, high = a_bounds
    with np.errstate(divide="ignore", invalid="ignore"):
        s11 = (s * s).sum(axis=1)
        if r0 is not None:
            r0v = np.full(s.shape[0], r0)
            a = np.clip(r0 + (s * (y - r0)).sum(axis=1) / s11, low, high)
        else:
            t = 1.0 - s
            s00, s01 = (t * t).sum(axis=1), (t * s).sum(axis=1)
            b0, b1 = (t * y).sum(axis=1), (s * y).sum(axis=1)
            det = s00 * s11 - s01 * s01
            a_free = (s00 * b1 - s01 * b0) / det
            a = np.clip(a_free, low, high)
            r0v = np.where(a == a_free, (b0 * s11 - b1 * s01) / det, (b0 - s01 * a) / s00)
        pred = r0v[:, None] + (a - r0v)[:, None] * s
        sse = ((y - pred) ** 2).sum(axis=1)
    sse = np.where(np.isfinite(sse), sse, np.inf)
    return r0v, a, sse


def fit_curve(c: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
              cfg: CurveFitConfig = CurveFitConfig()) -> CurveFit:
    """Least-squares fit of R(C) to the points (c_i, y_i) (any number of runs pooled)."""
    c = np.asarray(c, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if c.shape != y.shape or c.ndim != 1:
        raise CurveFitError(f"compute and values must be 1-D of the same length, got {c.shape} and {y.shape}")
    ok = np.isfinite(c) & np.isfinite(y)
    if (c[ok] < 0).any():
        raise CurveFitError(f"compute must be >= 0, got {c[ok].min()}")
    c, y = c[ok], y[ok]
    if not c.size or c.max() <= 0:
        raise CurveFitError("no point with compute > 0")
    max_c = float(c.max())
    keep = (c == 0) | (c >= cfg.fit_from_fraction * max_c)
    c, y = c[keep], y[keep]
    distinct = np.unique(c[c > 0]).size
    if distinct < cfg.min_points:
        raise CurveFitError(f"{distinct} distinct compute values > 0; the fit needs >= {cfg.min_points} "
                            "(A, B and C_mid are not identified by fewer)")
    at_zero = c == 0
    r0 = float(y[at_zero].mean()) if cfg.fix_r0 and at_zero.any() else None
    bounds = np.array([[math.log(cfg.efficiency_bounds[0]), math.log(cfg.efficiency_bounds[1])],
                       [math.log(cfg.midpoint_range[0] * max_c), math.log(cfg.midpoint_range[1] * max_c)]])
    center, half = bounds.mean(axis=1), (bounds[:, 1] - bounds[:, 0]) / 2
    best = (math.inf, 0.0, 0.0, 0.0, 0.0)
    improvement = 1e-26 * float(((y - y.mean()) ** 2).sum()) + 1e-300  # below: float noise, not a move
    points, shrinks, rounds = cfg.grid_points, 0, 0
    while shrinks <= cfg.zoom_rounds and rounds <= cfg.max_rounds:
        rounds += 1
        lo = np.maximum(center - half, bounds[:, 0])
        hi = np.minimum(center + half, bounds[:, 1])
        u, v = np.meshgrid(np.linspace(lo[0], hi[0], points), np.linspace(lo[1], hi[1], points))
        u, v = u.ravel(), v.ravel()
        s = _fraction_done(c, np.exp(u), v)
        r0s, a_s, sse = _project(y, s, r0, cfg.asymptote_bounds)
        i = int(np.argmin(sse))
        gain = best[0] - float(sse[i])
        if gain > 0:
            best = (float(sse[i]), float(u[i]), float(v[i]), float(r0s[i]), float(a_s[i]))
        center = np.array([best[1], best[2]])
        row, col = divmod(i, points)
        inner = 0 < row < points - 1 and 0 < col < points - 1
        if shrinks == 0 or inner or not gain > improvement:
            # The minimum is inside this window: close in. A better point on the window's edge (a
            # long, curved valley: A, B and C_mid trade off when the curve has barely bent) moves
            # the window at the same size.
            half = cfg.zoom_margin_cells * (hi - lo) / (points - 1)
            shrinks += 1
        points = cfg.zoom_grid_points
    if not math.isfinite(best[0]):
        raise CurveFitError("no finite least-squares solution (degenerate points)")
    sse, u, v, r0_fit, a = best
    cell = 0.5 * (bounds[:, 1] - bounds[:, 0]) / (cfg.grid_points - 1)  # half a cell of the first grid
    edge = []
    if a in cfg.asymptote_bounds:
        edge.append("a")
    if u - bounds[0, 0] < cell[0] or bounds[0, 1] - u < cell[0]:
        edge.append("b")
    if v - bounds[1, 0] < cell[1] or bounds[1, 1] - v < cell[1]:
        edge.append("c_mid")
    return CurveFit(r0=r0_fit, a=a, b=math.exp(u), c_mid=math.exp(v), rmse=math.sqrt(sse / c.size),
                    n_points=int(c.size), r0_fitted=r0 is None, max_c=max_c, at_search_edge=tuple(edge))


@dataclass(frozen=True)
class BootstrapFit:
    """Percentile intervals of each parameter over fits to resampled seeds."""

    ci: dict[str, tuple[float, float]]
    resamples: int
    failed: int


def bootstrap_fit(runs: Sequence[tuple[np.ndarray, np.ndarray]], cfg: CurveFitConfig, *, resamples: int,
                  confidence: float, rng: np.random.Generator) -> BootstrapFit | None:
    """Resample whole runs (seeds) with replacement, pool their points, refit; percentile CIs.

    Seeds are the independent unit: points of one run are correlated, so they are resampled
    together. Fits of the same multiset of seeds are computed once. None with fewer than 2 runs."""
    n = len(runs)
    if n < 2:
        return None
    cache: dict[tuple[int, ...], CurveFit | None] = {}
    values: dict[str, list[float]] = {p: [] for p in PARAMS}
    failed = 0
    for _ in range(resamples):
        key = tuple(sorted(rng.integers(0, n, size=n).tolist()))
        if key not in cache:
            try:
                cache[key] = fit_curve(np.concatenate([runs[i][0] for i in key]),
                                       np.concatenate([runs[i][1] for i in key]), cfg)
            except CurveFitError:
                cache[key] = None
        fit = cache[key]
        if fit is None:
            failed += 1
            continue
        for p in PARAMS:
            values[p].append(getattr(fit, p))
    if failed == resamples:
        return BootstrapFit({}, resamples, failed)
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    ci = {p: (float(np.quantile(v, q[0])), float(np.quantile(v, q[1]))) for p, v in values.items()}
    return BootstrapFit(ci, resamples, failed)
