"""ScaleRL's analysis on top of the summary: a compute-performance curve per run and per group
(bootstrap intervals over seeds), and paired comparisons between groups by seed.

For each eval accuracy key, summary["curves"][key] holds every run's fit and each group's fit to
its seeds' pooled points; summary["paired"][key] lists, for each pair of groups and each metric,
the mean difference over seeds run by both, its intervals and a verdict (cispo.report.paired).

Per-run metrics compared by seed:
- `auc`: mean accuracy over the compute range both runs cover (area under the curve / range);
- `final`: the last eval accuracy;
- `asymptote`: the fitted A (runs whose fit is not identified are left out);
- `compute_to_target`: the compute at the first eval reaching the target accuracy (lower is
  faster; pairs where a run never reached it are left out and counted).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from cispo.report.curvefit import CurveFitError, bootstrap_fit, fit_curve
from cispo.report.options import CompareConfig
from cispo.report.paired import first_reaching, mean_over_range, paired_difference
from cispo.report.runs import Run

METRICS = ("auc", "final", "asymptote", "compute_to_target")


def _fit_or_reason(x: np.ndarray, y: np.ndarray, cfg: CompareConfig) -> tuple[dict | None, str | None]:
    try:
        return fit_curve(x, y, cfg.curve).as_dict(), None
    except CurveFitError as exc:
        return None, str(exc)


def curve_fits(groups: dict[str, list[Run]], key: str, cfg: CompareConfig,
               rng: np.random.Generator) -> dict[str, Any]:
    """Fits of `key` vs the configured compute axis: per run, and per group with bootstrap CIs."""
    axis = cfg.curve.axis
    out: dict[str, Any] = {"axis": axis, "groups": {}}
    for name, members in groups.items():
        runs, points = [], []
        for run in members:
            x, y = run.points(key, axis)
            fit, reason = _fit_or_reason(x, y, cfg) if x.size else (None, f"no {key!r} with a known {axis}")
            runs.append({"path": str(run.path), "seed": run.seed, "fit": fit, "reason": reason})
            if x.size:
                points.append((x, y))
        entry: dict[str, Any] = {"runs": runs, "fit": None, "reason": None, "ci": None, "bootstrap": None}
        if points:
            entry["fit"], entry["reason"] = _fit_or_reason(np.concatenate([p[0] for p in points]),
                                                           np.concatenate([p[1] for p in points]), cfg)
        else:
            entry["reason"] = f"no run logged {key!r} with a known {axis}"
        if entry["fit"] is not None:
            boot = bootstrap_fit(points, cfg.curve, resamples=cfg.bootstrap_resamples,
                                 confidence=cfg.confidence, rng=rng)
            if boot is not None:
                entry["ci"] = {p: list(v) for p, v in boot.ci.items()} or None
                entry["bootstrap"] = {"resamples": boot.resamples, "failed": boot.failed}
        out["groups"][name] = entry
    return out


def _by_seed(members: list[Run]) -> dict[str, Run]:
    out: dict[str, Run] = {}
    for run in members:
        out.setdefault(str(run.seed), run)  # a repeated seed is warned about by group_runs
    return out


def group_pairs(names: list[str], baseline: str | None) -> list[tuple[str, str]]:
    """Every pair of groups in order, or (group, baseline) for each other group."""
    if baseline is None:
        return list(itertools.combinations(names, 2))
    if baseline not in names:
        raise ValueError(f"--baseline {baseline!r} is not a group; groups: {', '.join(names)}")
    return [(name, baseline) for name in names if name != baseline]


def paired_comparisons(groups: dict[str, list[Run]], key: str, curves: dict[str, Any], target: float | None,
                       cfg: CompareConfig, rng: np.random.Generator, baseline: str | None = None
                       ) -> list[dict[str, Any]]:
    """Every metric of METRICS for every pair of groups, paired by seed."""
    axis = cfg.curve.axis
    fits = {name: {str(r["seed"]): r["fit"] for r in entry["runs"]} for name, entry in curves["groups"].items()}
    rows = []
    for first, second in group_pairs(list(groups), baseline):
        a_runs, b_runs = _by_seed(groups[first]), _by_seed(groups[second])
        values: dict[str, tuple[dict, dict]] = {m: ({}, {}) for m in METRICS}
        for seed in (s for s in a_runs if s in b_runs):
            (xa, ya), (xb, yb) = a_runs[seed].points(key, axis), b_runs[seed].points(key, axis)
            if xa.size and xb.size:
                low, high = max(xa[0], xb[0]), min(xa[-1], xb[-1])
                ok = high > low
                values["auc"][0][seed] = mean_over_range(xa, ya, low, high) if ok else None
                values["auc"][1][seed] = mean_over_range(xb, yb, low, high) if ok else None
            for side, (x, y) in enumerate(((xa, ya), (xb, yb))):
                values["final"][side][seed] = float(y[-1]) if y.size else None
                hit = first_reaching(x, y, target, cfg.target_tolerance) if y.size and target is not None else None
                values["compute_to_target"][side][seed] = hit
            for side, name in enumerate((first, second)):
                fit = fits.get(name, {}).get(seed)
                values["asymptote"][side][seed] = None if fit is None else fit["a"]
        for metric in METRICS:
            a_vals, b_vals = values[metric]
            note = ""
            if metric == "compute_to_target":
                note = f"{axis} to reach {target:.4f}; lower is faster" if target is not None else "no target"
            elif metric == "auc":
                note = f"mean over the common {axis} range"
            result = paired_difference(metric, first, second, a_vals, b_vals, resamples=cfg.bootstrap_resamples,
                                       confidence=cfg.confidence, rng=rng, note=note)
            rows.append(result.as_dict())
    return rows
