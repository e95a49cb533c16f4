"""Settings of a comparison (`python -m cispo.compare`): one dataclass, every default documented here."""

from __future__ import annotations

from dataclasses import dataclass, field

from cispo.report.markdown import NUMBER_FORMAT


@dataclass(frozen=True)
class PlotStyle:
    """How the comparison's figures look."""

    figure_size: tuple[float, float] = (7.0, 4.5)
    dpi: int = 110
    band_alpha: float = 0.2
    grid_alpha: float = 0.3
    max_points_with_markers: int = 30
    switch_unit_after: float = 2.0  # use minutes from 2 minutes on, hours from 2 hours on


@dataclass(frozen=True)
class CurveFitConfig:
    """ScaleRL's compute-performance curve (Khatri et al. 2025, arXiv 2510.13786, Eq. 1):
    R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B), fitted by least squares to eval accuracy vs compute."""

    axis: str = "step"
    """Compute C: `step`, `tokens` (generated response tokens) or `time` (wall seconds). ScaleRL uses
    GPU-hours; at a fixed batch, steps and tokens are proportional to it."""
    fix_r0: bool = True
    """R0 = the mean accuracy at C = 0 (the eval before training) when the runs logged one, as in
    ScaleRL where R0 is the starting pass rate; else R0 is fitted with A, B, C_mid."""
    fit_from_fraction: float = 0.0
    """Leave out points with 0 < C < this fraction of the largest C (ScaleRL fits from ~1.5k
    GPU-hours on, past the noisy start); the C = 0 point always stays (it sets R0)."""
    min_points: int = 4
    """Distinct C > 0 values a fit needs; with fewer, A, B and C_mid are not identified (3 free
    parameters) and no fit is reported."""
    asymptote_bounds: tuple[float, float] = (0.0, 1.0)
    """A is a pass rate: ScaleRL bounds it by 1."""
    efficiency_bounds: tuple[float, float] = (0.05, 20.0)
    """Search range of B (ScaleRL's fitted B are ~1-3)."""
    midpoint_range: tuple[float, float] = (0.01, 100.0)
    """Search range of C_mid, as multiples of the largest C. A C_mid past the largest C means the
    curve has not bent within the run: A is then an extrapolation (flagged in the report)."""
    grid_points: int = 41
    """Grid points per nonlinear parameter (log B, log C_mid) of the first search, over the whole
    range: it finds the basin, so no starting guess is needed."""
    zoom_grid_points: int = 11
    """Grid points per parameter of each later round, around the best point so far."""
    zoom_margin_cells: float = 2.0
    """Each later round spans +- this many cells of the previous round's grid (0.4x per round at
    11 points: 25 rounds reach ~1e-10 of the range)."""
    zoom_rounds: int = 25
    """Rounds after the first that narrow the window (a round whose best point is on the window's
    edge moves the window instead)."""
    max_rounds: int = 400
    """Cap on all rounds of one fit (moves included)."""
    dense_points: int = 200
    """Points on each fitted curve in the plots."""


@dataclass(frozen=True)
class CompareConfig:
    confidence: float = 0.95
    """Level of every interval (Student-t over seeds, bootstrap percentiles)."""
    target_tolerance: float = 1e-12
    """"Reached" means value >= target - tolerance (float noise)."""
    number_format: str = NUMBER_FORMAT
    plot_style: PlotStyle = PlotStyle()
    curve: CurveFitConfig = field(default_factory=CurveFitConfig)
    bootstrap_resamples: int = 2000
    """Resamples of seeds (fit parameters) and of seed pairs (paired differences)."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap's random generator: the same inputs give the same report."""
