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


def render_overrides(overrides: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Identity keys a run changed on a resume (checkpoint.allow_changes, from its config_history.jsonl)."""
    if not overrides:
        return []
    lines = ["## Identity overrides", "",
             "These runs changed an identity key on a resume, deliberately (`checkpoint.allow_changes`): "
             "their steps before and after the change were trained with different settings.", ""]
    rows = [[run, c["key"], f"{c['old']} -> {c['new']}", c.get("from_step")]
            for run, changes in overrides.items() for c in changes]
    return lines + md_table(["run", "key", "old -> new", "from step"], rows)


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
    lines += render_overrides(summary.get("overrides") or {})
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
    lines += render_curves(summary.get("curves") or {}, summary["confidence"])
    lines += render_paired(summary.get("paired") or {}, summary["confidence"], fmt)
    if summary.get("mechanism"):
        lines += ["## Mechanism: token gradients zeroed by the clip", ""]
        lines.append("Each run's mean over its steps, then mean ± CI over seeds; in brackets the largest value of "
                     "any step. `dropped_token_frac_low_prob`: among tokens with p_old < 0.1, M1's \"fork\" tokens.")
        lines.append("")
        names = list(summary["groups"])
        keys = list(summary["mechanism"])
        rows = [[name] + [format_estimate(summary["mechanism"][k][name], fmt)
                          + f" [{fmt.format(summary['mechanism'][k][name]['max_step'])}]"
                          if name in summary["mechanism"][k] else "" for k in keys] for name in names]
        lines += md_table(["group"] + [f"`{k}`" for k in keys], rows)
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


def _interval(ci: Sequence[float] | None, fmt: str) -> str:
    return "" if ci is None else f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _fit_cells(fit: Mapping[str, Any] | None, reason: str | None) -> list[str]:
    if fit is None:
        return ["no fit: " + (reason or "")] + [""] * 4
    flags = []
    if not fit["bent"]:
        flags.append("C_mid past the data: A extrapolated")
    if fit["at_search_edge"]:
        flags.append("on search bound: " + ", ".join(fit["at_search_edge"]))
    if fit["r0_fitted"]:
        flags.append("R0 fitted")
    return [f"{fit['a']:.4f}", f"{fit['b']:.3f}", f"{fit['c_mid']:.4g}", f"{fit['r0']:.4f}",
            f"{fit['rmse']:.4f}" + (" (" + "; ".join(flags) + ")" if flags else "")]


def render_curves(curves: Mapping[str, Any], confidence: float) -> list[str]:
    """Fitted A, B, C_mid per group (bootstrap intervals over seeds) and per run."""
    lines: list[str] = []
    for key, section in curves.items():
        axis = section["axis"]
        lines += [f"## Compute-performance curve `{key}` vs {axis}", ""]
        lines.append(
            "ScaleRL's fit R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B) (arXiv 2510.13786, Eq. 1): A = the "
            "asymptote, B = the efficiency, C_mid = the compute at half the gain. Per group: one fit to "
            f"all its seeds' points; [..] = {confidence:.0%} percentile bootstrap interval over seeds "
            "(seeds resampled with replacement)."
        )
        lines.append("")
        rows = []
        for name, entry in section["groups"].items():
            cells = _fit_cells(entry["fit"], entry["reason"])
            ci = entry["ci"] or {}
            boot = entry["bootstrap"]
            rows.append([name, len(entry["runs"]),
                         cells[0] + (" " + _interval(ci.get("a"), "{:.4f}") if ci else ""),
                         cells[1] + (" " + _interval(ci.get("b"), "{:.3f}") if ci else ""),
                         cells[2] + (" " + _interval(ci.get("c_mid"), "{:.4g}") if ci else ""),
                         cells[3], cells[4],
                         "" if boot is None else f"{boot['resamples']} ({boot['failed']} failed)"])
        lines += md_table(["group", "runs", "A", "B", f"C_mid ({axis})", "R0", "rmse", "bootstrap"], rows)
        rows = [[name, run["seed"], *_fit_cells(run["fit"], run["reason"])]
                for name, entry in section["groups"].items() for run in entry["runs"]]
        lines += ["Per run:", ""]
        lines += md_table(["group", "seed", "A", "B", f"C_mid ({axis})", "R0", "rmse"], rows)
    return lines


def render_paired(paired: Mapping[str, Any], confidence: float, fmt: str) -> list[str]:
    """Paired differences by seed: mean, bootstrap and t intervals, and the verdict."""
    lines: list[str] = []
    for key, rows_in in paired.items():
        lines += [f"## Paired comparisons by seed `{key}`", ""]
        lines.append(
            f"first - second over the seeds both groups ran; {confidence:.0%} intervals: percentile bootstrap "
            "over seed pairs (the verdict) and paired Student-t. With fewer than ~10 pairs the bootstrap "
            "interval is too narrow (it cannot be wider than the spread of the pairs); read the t "
            "interval beside it."
        )
        lines.append("")
        rows = []
        for r in rows_in:
            mean = "" if r["mean"] is None else fmt.format(r["mean"])
            rows.append([f"{r['first']} - {r['second']}", r["metric"] + (f" ({r['note']})" if r["note"] else ""),
                         r["n"], mean, _interval(r["bootstrap_ci"], fmt), _interval(r["t_ci"], fmt), r["verdict"],
                         r["left_out"] or ""])
        lines += md_table(["pair", "metric", "pairs", "mean difference", "bootstrap CI", "t CI", "verdict",
                           "pairs left out"], rows)
    return lines
