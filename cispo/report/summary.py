"""Summary statistics of a comparison: final / best accuracy over seeds, steps to a target,
training reward, time per step and per phase, and the config keys that differ between groups.

Across seeds, curves are aligned by step: the mean and a two-sided Student-t confidence band
(mean ± t_{(1+c)/2, n-1} · s / sqrt(n), s the sample standard deviation) at each step; one seed gives no
band. On the wall-clock axis a point sits at the seeds' mean elapsed time for that step.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from cispo.report.options import CompareConfig
from cispo.report.paired import mean_over_range
from cispo.report.runs import SEED_KEY, Run
from cispo.report.stats import Curve, curve_across_seeds, first_step_reaching, mean_ci
from cispo.tracking.console import EVAL_ACCURACY_RE
from cispo.tracking import ELAPSED_KEY, STEP_TIME_KEY

REWARD_KEY = "reward/mean"
# MiniMax-M1's mechanism, reported next to the outcome: how many token gradients the clip zeroes.
MECHANISM_KEYS = ("actor/dropped_token_frac", "actor/dropped_token_frac_low_prob", "actor/is_clip_frac_high",
                  "actor/is_clip_frac_low")
PHASE_PREFIX = "time/"
NOT_PHASES = (STEP_TIME_KEY, ELAPSED_KEY)


def seed_curve(runs: Sequence[Run], key: str, confidence: float) -> Curve | None:
    """Mean and CI of `key` across runs (seeds), aligned by step."""
    series = [dict(zip(*(a.tolist() for a in run.series(key)))) for run in runs]
    return curve_across_seeds(series, [run.elapsed() for run in runs], confidence)


def eval_keys(runs: Sequence[Run]) -> list[str]:
    return sorted({k for run in runs for k in run.keys() if EVAL_ACCURACY_RE.match(k)})


def summarize(
    groups: dict[str, list[Run]], target_accuracy: float | None, cfg: CompareConfig
) -> dict[str, Any]:
    """Every number of the report (also written as summary.json)."""
    all_runs = [r for members in groups.values() for r in members]
    summary: dict[str, Any] = {
        "groups": {
            name: {"runs": [str(r.path) for r in members], "seeds": [r.seed for r in members]}
            for name, members in groups.items()
        },
        "confidence": cfg.confidence,
        "accuracy": {},
        "reward": {},
        "targets": {},
        "time_per_step": {},
        "phases": {},
        "warnings": [],
    }
    for key in eval_keys(all_runs) + [REWARD_KEY]:
        table: dict[str, Any] = {}
        curves: dict[str, Curve] = {}
        for name, members in groups.items():
            finals, bests, aucs = [], [], []
            for run in members:
                steps, values = run.series(key)
                if values.size:
                    finals.append(float(values[-1]))
                    bests.append(float(values.max()))
                if values.size >= 2:  # mean over the run's steps: the area under its curve / its length
                    aucs.append(mean_over_range(steps.astype(np.float64), values, float(steps[0]), float(steps[-1])))
            if not finals:
                summary["warnings"].append(f"{name}: no run logged {key!r}")
                continue
            curve = seed_curve(members, key, cfg.confidence)
            assert curve is not None
            curves[name] = curve
            table[name] = {
                "final": mean_ci(finals, cfg.confidence).as_dict(),
                "best": mean_ci(bests, cfg.confidence).as_dict(),
                "best_of_mean_curve": float(curve.mean.max()),
                "auc": mean_ci(aucs, cfg.confidence).as_dict() if aucs else None,
            }
        if not table:
            continue
        if key == REWARD_KEY:
            summary["reward"] = table
            continue
        if target_accuracy is not None:
            target, source = float(target_accuracy), "given (--target-accuracy)"
        else:
            weakest = min(table, key=lambda g: table[g]["best_of_mean_curve"])
            target = table[weakest]["best_of_mean_curve"]
            source = f"best of the seed-mean curve of the weakest group ({weakest})"
        summary["targets"][key] = {"value": target, "source": source}
        for name, curve in curves.items():
            per_seed = []
            for run in groups[name]:
                steps, values = run.series(key)
                per_seed.append(first_step_reaching(steps, values, target, cfg.target_tolerance))
            table[name]["steps_to_target"] = {
                "mean_curve": first_step_reaching(curve.steps, curve.mean, target, cfg.target_tolerance),
                "per_seed": per_seed,
            }
        reached = [t["steps_to_target"]["mean_curve"] for t in table.values()]
        fastest = min((s for s in reached if s is not None), default=None)
        for entry in table.values():
            steps_needed = entry["steps_to_target"]["mean_curve"]
            entry["steps_to_target"]["relative_to_fastest"] = (
                None if steps_needed is None or not fastest else steps_needed / fastest
            )
        summary["accuracy"][key] = table
    for name, members in groups.items():
        run_means = [float(v.mean()) for v in (r.series(STEP_TIME_KEY)[1] for r in members) if v.size]
        if run_means:
            summary["time_per_step"][name] = mean_ci(run_means, cfg.confidence).as_dict()
        else:
            summary["warnings"].append(f"{name}: no {STEP_TIME_KEY!r} logged; time per step unknown")
        phase_keys = sorted(
            {k for r in members for k in r.keys() if k.startswith(PHASE_PREFIX) and k not in NOT_PHASES}
        )
        phases = {}
        for key in phase_keys:
            means = [float(v.mean()) for v in (r.series(key)[1] for r in members) if v.size]
            phases[key[len(PHASE_PREFIX):]] = float(np.mean(means))
        summary["phases"][name] = phases
    summary["mechanism"] = mechanism(groups, cfg)
    summary["config_diff"], summary["config_within_group"] = config_differences(groups)
    return summary


def mechanism(groups: dict[str, list[Run]], cfg: CompareConfig) -> dict[str, dict[str, Any]]:
    """Per key of MECHANISM_KEYS and group: each run's mean over its steps, then mean ± CI over seeds."""
    out: dict[str, dict[str, Any]] = {}
    for key in MECHANISM_KEYS:
        for name, members in groups.items():
            run_means = [float(v.mean()) for v in (r.series(key)[1] for r in members) if v.size]
            if run_means:
                est = mean_ci(run_means, cfg.confidence).as_dict()
                est["max_step"] = max(float(r.series(key)[1].max()) for r in members if r.series(key)[1].size)
                out.setdefault(key, {})[name] = est
    return out


def _config_value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def config_differences(
    groups: dict[str, list[Run]]
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, list[str]]]]:
    """(keys whose value differs between groups, keys other than the seed that vary inside a group).

    A group's value for a key is the run's value if all its runs agree, else "varies: a | b"; a key
    missing from a run shows as `<missing>`."""
    missing = "<missing>"
    keys = sorted({k for members in groups.values() for r in members for k in r.config})
    across: dict[str, dict[str, str]] = {}
    within: dict[str, dict[str, list[str]]] = {}
    for key in keys:
        per_group: dict[str, str] = {}
        for name, members in groups.items():
            values = sorted({_config_value(r.config[key]) if key in r.config else missing for r in members})
            per_group[name] = values[0] if len(values) == 1 else "varies: " + " | ".join(values)
            if len(values) > 1 and key != SEED_KEY:
                within.setdefault(key, {})[name] = values
        if len(set(per_group.values())) > 1:
            across[key] = per_group
    return across, within
