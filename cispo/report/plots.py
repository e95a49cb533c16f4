"""PNG plots of per-group mean curves with confidence bands, vs step and vs wall-clock.

Uses matplotlib's object API with the Agg canvas directly (no pyplot, no global backend state), so
it works headless and inside other programs that use matplotlib themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import numpy as np

from cispo.report.options import PlotStyle
from cispo.report.stats import Curve

AXES = ("step", "time")
SECONDS_PER = {"hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


def file_stem(key: str) -> str:
    """A file name for a metric key: `eval/aime24/avg@32` -> `eval_aime24_avg_at_32`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key.replace("@", "_at_").replace("/", "_"))


def time_unit(max_seconds: float, style: PlotStyle) -> tuple[str, float]:
    for unit, seconds in SECONDS_PER.items():
        if max_seconds >= style.switch_unit_after * seconds or unit == "seconds":
            return unit, seconds
    raise AssertionError("unreachable")


def plot_curves(
    curves: Mapping[str, Curve],
    labels: Mapping[str, str],
    *,
    key: str,
    title: str,
    out_dir: Path,
    style: PlotStyle = PlotStyle(),
) -> tuple[list[Path], list[str]]:
    """Write `<key>_vs_step.png` and `<key>_vs_time.png` (the latter only when some curve has
    wall-clock times). Returns (files written, warnings). Colours follow the order of `curves`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written: list[Path] = []
    warnings: list[str] = []
    for axis in AXES:
        if axis == "time":
            known = [c.elapsed[np.isfinite(c.elapsed)] for c in curves.values()]
            if not any(k.size for k in known):
                warnings.append(f"no wall-clock times for {key!r}: its time plot skipped")
                continue
            unit, scale = time_unit(max(float(k.max()) for k in known if k.size), style)
        fig = Figure(figsize=style.figure_size, dpi=style.dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for index, (name, curve) in enumerate(curves.items()):
            color = f"C{index % 10}"
            if axis == "step":
                x = curve.steps.astype(np.float64)
                keep = np.ones(x.size, dtype=bool)
            else:
                x = curve.elapsed / scale
                keep = np.isfinite(x)
            marker = "." if keep.sum() <= style.max_points_with_markers else None
            ax.plot(x[keep], curve.mean[keep], color=color, marker=marker, label=labels[name])
            band = keep & np.isfinite(curve.ci)
            if band.any():
                low, high = curve.mean - curve.ci, curve.mean + curve.ci
                ax.fill_between(x[band], low[band], high[band], color=color, alpha=style.band_alpha,
                                linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("step" if axis == "step" else f"wall-clock ({unit})")
        ax.set_ylabel(key)
        ax.grid(True, alpha=style.grid_alpha)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{file_stem(key)}_vs_{axis}.png"
        fig.savefig(path)
        written.append(path)
    return written, warnings


def plot_fits(
    points: Mapping[str, list[tuple[np.ndarray, np.ndarray]]],
    fits: Mapping[str, Mapping[str, float] | None],
    *,
    key: str,
    axis: str,
    axis_label: str,
    title: str,
    out_dir: Path,
    dense_points: int,
    style: PlotStyle = PlotStyle(),
) -> Path:
    """`fit_<key>_vs_<axis>.png`: each group's runs as points (one colour per group) and its fitted
    curve R(C) as a line, labelled with A, B and C_mid; a group without a fit shows points only."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cispo.report.curvefit import saturating_curve

    fig = Figure(figsize=style.figure_size, dpi=style.dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    top = max((float(x.max()) for runs in points.values() for x, _ in runs if x.size), default=1.0)
    dense = np.linspace(0.0, top, dense_points)
    for index, (name, runs) in enumerate(points.items()):
        color = f"C{index % 10}"
        for x, y in runs:
            ax.plot(x, y, linestyle="none", marker=".", color=color, alpha=style.band_alpha * 2)
        fit = fits.get(name)
        if fit is None:
            ax.plot([], [], linestyle="none", marker=".", color=color, label=f"{name} (n={len(runs)}, no fit)")
            continue
        label = f"{name} (n={len(runs)}): A={fit['a']:.3f} B={fit['b']:.2f} C_mid={fit['c_mid']:.3g}"
        ax.plot(dense, saturating_curve(dense, fit["r0"], fit["a"], fit["b"], fit["c_mid"]), color=color,
                label=label)
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(axis_label)
    ax.set_ylabel(key)
    ax.grid(True, alpha=style.grid_alpha)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / f"fit_{file_stem(key)}_vs_{axis}.png"
    fig.savefig(path)
    return path
