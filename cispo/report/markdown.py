"""The markdown comparison report, rendered from the summary dict (numbers live there only)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

NUMBER_FORMAT = "{:.4f}"


def format_estimate(est: Mapping[str, Any], fmt: str = NUMBER_FORMAT) -> str:
    """`0.8100 ± 0.1271 (n=2)`; a single seed has no interval: `0.8000 (n=1)`."""
    if est["ci"] is None:
        return f"{fmt.format(est['mean'])} (n={est['n']})"
    return f"{fmt.format(est['mean'])} ± {fmt.format(est['ci'])} (n={est['n']})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def render_report(
    summary: Mapping[str, Any], plot_names: Sequence[str], *, reward_key: str, fmt: str = NUMBER_FORMAT
) -> str:
    """The report from `summary` (the dict `cispo.compare.summarize` builds)."""
    conf = f"{summary['confidence']:.0%}"
    lines = ["# Algorithm comparison", ""]
    lines.append(
        f"Mean over seeds ± half-width of the {conf} Student-t confidence interval; n = number of seeds."
    )
    lines.append("")
    lines.append("## Runs")
    lines.append("")
    rows = [
        [name, len(g["runs"]), ", ".join(map(str, g["seeds"])), "<br>".join(g["runs"])]
        for name, g in summary["groups"].items()
    ]
    lines += md_table(["group", "runs", "seeds", "folders"], rows)
    for key, per_group in summary["accuracy"].items():
        target = summary["targets"][key]
        lines.append(f"## Eval accuracy `{key}`")
        lines.append("")
        lines.append(f"Target accuracy {fmt.format(target['value'])}: {target['source']}.")
        lines.append("")
        rows = []
        for name, entry in per_group.items():
            stt = entry["steps_to_target"]
            per_seed = ", ".join("not reached" if s is None else str(s) for s in stt["per_seed"])
            rel = stt["relative_to_fastest"]
            rows.append(
                [
                    name,
                    format_estimate(entry["final"], fmt),
                    format_estimate(entry["best"], fmt),
                    "not reached" if stt["mean_curve"] is None else stt["mean_curve"],
                    "" if rel is None else f"{rel:.2f}x",
                    per_seed,
                ]
            )
        lines += md_table(
            ["group", "final", "best", "steps to target (seed mean)", "vs fastest", "per seed"], rows
        )
    if not summary["accuracy"]:
        lines += ["## Eval accuracy", "", "No run logged an eval accuracy (`eval/<set>/avg@<k>`).", ""]
    if summary["reward"]:
        lines += ["## Training reward", ""]
        rows = [
            [name, format_estimate(e["final"], fmt), format_estimate(e["best"], fmt)]
            for name, e in summary["reward"].items()
        ]
        lines += md_table(["group", f"final `{reward_key}`", "best"], rows)
    lines += ["## Time", ""]
    rows = [[name, format_estimate(e, fmt)] for name, e in summary["time_per_step"].items()]
    lines += md_table(["group", "seconds per step"], rows)
    phase_names = sorted({p for phases in summary["phases"].values() for p in phases})
    if phase_names:
        lines.append("Mean seconds per step in each phase:")
        lines.append("")
        rows = [
            [name] + [fmt.format(phases[p]) if p in phases else "" for p in phase_names]
            for name, phases in summary["phases"].items()
        ]
        lines += md_table(["group"] + phase_names, rows)
    lines += ["## Config differences between groups", ""]
    names = list(summary["groups"])
    if summary["config_diff"]:
        rows = [[f"`{k}`"] + [v[n] for n in names] for k, v in summary["config_diff"].items()]
        lines += md_table(["key"] + names, rows)
    else:
        lines += ["None (the groups share every config value).", ""]
    if summary["config_within_group"]:
        lines += ["### Keys (other than the seed) that vary inside a group", ""]
        rows = [
            [f"`{k}`", name, " | ".join(values)]
            for k, per in summary["config_within_group"].items()
            for name, values in per.items()
        ]
        lines += md_table(["key", "group", "values"], rows)
    if plot_names:
        lines += ["## Plots", ""]
        lines += [f"![{Path(name).stem}]({name})" for name in plot_names]
        lines.append("")
    if summary["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in summary["warnings"]] + [""]
    return "\n".join(lines)
