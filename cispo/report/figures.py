"""Which plots a comparison draws: the fixed metric list, every eval accuracy key, any metric under
a --metric-prefix, and the compute-performance fits (data points and fitted curves)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cispo.report.options import CompareConfig
from cispo.report.plots import plot_curves, plot_fits
from cispo.report.runs import AXIS_LABELS, Run
from cispo.report.summary import REWARD_KEY, eval_keys, seed_curve

ENTROPY_KEY = "actor/entropy"
RESPONSE_LENGTH_KEY = "response_length/mean"
CLIP_HIGH_KEY = "actor/is_clip_frac_high"
CLIP_LOW_KEY = "actor/is_clip_frac_low"
DROPPED_KEY = "actor/dropped_token_frac"


@dataclass(frozen=True)
class PlotSpec:
    key: str
    title: str


FIXED_PLOTS = (
    PlotSpec(REWARD_KEY, "Training reward"),
    PlotSpec(ENTROPY_KEY, "Policy entropy"),
    PlotSpec(RESPONSE_LENGTH_KEY, "Response length (tokens)"),
    PlotSpec(CLIP_HIGH_KEY, "IS weight clipped above (fraction of tokens)"),
    PlotSpec(CLIP_LOW_KEY, "IS weight clipped below (fraction of tokens)"),
    PlotSpec(DROPPED_KEY, "Tokens with zero gradient (fraction)"),
)


def plot_all(
    groups: dict[str, list[Run]], out_dir: Path, metric_prefixes: Sequence[str], cfg: CompareConfig
) -> tuple[list[Path], list[str]]:
    runs = [r for members in groups.values() for r in members]
    specs = list(FIXED_PLOTS[:1])
    specs += [PlotSpec(k, f"Eval accuracy {k}") for k in eval_keys(runs)]
    specs += list(FIXED_PLOTS[1:])
    known = {s.key for s in specs}
    all_keys = sorted({k for r in runs for k in r.keys()})
    files: list[Path] = []
    warnings: list[str] = []
    for prefix in metric_prefixes:
        matching = [k for k in all_keys if k.startswith(prefix) and k not in known]
        if not matching and not any(k.startswith(prefix) for k in known):
            warnings.append(f"--metric-prefix {prefix!r} matches no metric")
        for key in matching:
            specs.append(PlotSpec(key, key))
            known.add(key)
    if not eval_keys(runs):
        warnings.append("no eval accuracy keys (eval/<set>/avg@<k>) in any run: accuracy plots skipped")
    for spec in specs:
        curves = {name: seed_curve(members, spec.key, cfg.confidence) for name, members in groups.items()}
        present = {name: curve for name, curve in curves.items() if curve is not None}
        if not present:
            warnings.append(f"metric {spec.key!r} not found in any run: plot skipped")
            continue
        warnings += [f"{name}: metric {spec.key!r} not logged; left out of its plot"
                     for name, curve in curves.items() if curve is None]
        labels = {name: f"{name} (n={len(groups[name])})" for name in present}
        title = f"{spec.title}: mean ± {cfg.confidence:.0%} CI over seeds"
        written, warn = plot_curves(present, labels, key=spec.key, title=title, out_dir=out_dir,
                                    style=cfg.plot_style)
        files += written
        warnings += warn
    return files, warnings


def plot_fit_figures(groups: dict[str, list[Run]], curves: dict[str, dict[str, Any]], out_dir: Path,
                     cfg: CompareConfig) -> list[Path]:
    """`fit_<key>_vs_<axis>.png` per eval key: every run's points and each group's fitted curve."""
    files = []
    for key, section in curves.items():
        axis = section["axis"]
        points = {name: [run.points(key, axis) for run in members] for name, members in groups.items()}
        fits = {name: entry["fit"] for name, entry in section["groups"].items()}
        title = f"{key}: R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B), fit to all seeds"
        files.append(plot_fits(points, fits, key=key, axis=axis, axis_label=AXIS_LABELS[axis], title=title,
                               out_dir=out_dir, dense_points=cfg.curve.dense_points, style=cfg.plot_style))
    return files
