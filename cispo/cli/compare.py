"""Compare runs across algorithms and seeds: plots (PNG) and a markdown report.

    python -m cispo.compare <run folders or multirun folders> [--out DIR] [--target-accuracy X]
                            [--metric-prefix PREFIX ...] [--group-by algorithm.name[,KEY...]]
                            [--curve-x step|tokens|time] [--baseline GROUP] [--bootstrap N] [--no-plots]

Writes `report.md`, `summary.json` (every number of the report) and PNG plots to `--out` (default:
`<input>/comparison` when there is one input). Besides means over seeds, it does ScaleRL's analysis
(cispo.report.analysis): a fitted compute-performance curve per run and per group with bootstrap
intervals over seeds, and paired comparisons between groups by seed (area under the curve, final
accuracy, fitted asymptote, compute to a target) with a plain verdict on each interval.

The code: cispo.report.runs (finding and reading runs), cispo.report.summary (means over seeds),
cispo.report.curvefit / paired / analysis (curves and paired differences), cispo.report.figures,
plots and markdown (the outputs); this module is the command line.

A run folder holds `metrics.jsonl` (written by `cispo.tracking.MetricsLogger`, or gzipped as
`metrics.jsonl.gz`, how studies/powered_study/runs keeps a study's runs) and its resolved
config as `.hydra/config.yaml` or `config.yaml` with the keys `algorithm.name` and `seed`. A multirun
folder (Hydra's `multirun/<date>/<time>/`) holds numbered run folders; any folder is searched
recursively (not inside run folders).

Metric keys read from `metrics.jsonl` (the training loop must log these names):

| key                          | meaning                                                        | plot / report            |
|------------------------------|----------------------------------------------------------------|--------------------------|
| `reward/mean`                | mean training reward of the step's batch                       | reward plot, report      |
| `eval/<set>/avg@<k>`         | eval accuracy on `<set>`, mean over k samples per problem      | accuracy plots, report   |
| `actor/entropy`              | mean per-token policy entropy                                  | plot                     |
| `response_length/mean`       | mean response length in tokens                                 | plot                     |
| `actor/is_clip_frac_high`    | fraction of tokens whose IS weight hit 1 + eps_high            | plot                     |
| `actor/is_clip_frac_low`     | fraction of tokens whose IS weight hit 1 - eps_low             | plot                     |
| `actor/dropped_token_frac`   | fraction of response tokens with exactly zero gradient         | plot, mechanism table    |
| `actor/dropped_token_frac_low_prob` | the same among tokens with p_old < 0.1 (M1's forks)     | mechanism table          |
| `time/step`                  | wall seconds of the step                                       | report; wall-clock axis  |
| `time/total_elapsed`         | wall seconds since the run started (carried over on resume)    | wall-clock axis          |
| `time/<phase>`               | seconds in a phase (generate, reward, update, ...)             | report (phase table)     |
| `rollout/tokens`             | response tokens generated in the step                          | curve axis `tokens`      |

Wall-clock is `time/total_elapsed`, or the cumulative sum of `time/step` when it is missing. A
missing key skips its plot with a warning; it never stops the comparison.

Across seeds, curves are aligned by step: the mean and a two-sided 95% Student-t confidence band
(mean ± t_{0.975, n-1} · s / sqrt(n), s the sample standard deviation) at each step; one seed gives no
band. On the wall-clock axis a point sits at the seeds' mean elapsed time for that step.
`--group-by algorithm.name,trainer.eps_high` makes one group per combination (`cispo / 4.0`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cispo.report.analysis import curve_fits, paired_comparisons
from cispo.report.figures import plot_all, plot_fit_figures
from cispo.report.markdown import format_estimate, render_report
from cispo.report.options import CompareConfig, CurveFitConfig
from cispo.report.runs import ALGORITHM_KEY, AXES, CompareError, Run, discover_runs, group_runs
from cispo.report.stats import mean_ci, t_critical
from cispo.report.summary import REWARD_KEY, seed_curve, summarize

__all__ = ["CompareConfig", "CompareError", "CurveFitConfig", "Run", "compare", "discover_runs", "main",
           "mean_ci", "seed_curve", "summarize", "t_critical"]

log = logging.getLogger(__name__)

DEFAULT_OUT_DIRNAME = "comparison"
REPORT_NAME = "report.md"
SUMMARY_NAME = "summary.json"


def compare(
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    target_accuracy: float | None = None,
    metric_prefixes: Sequence[str] = (),
    group_by: str = ALGORITHM_KEY,
    plots: bool = True,
    baseline: str | None = None,
    cfg: CompareConfig = CompareConfig(),
) -> dict[str, Any]:
    """Discover, summarise, fit, compare by seed, plot, and write `report.md` + `summary.json`."""
    if target_accuracy is not None and not math.isfinite(target_accuracy):
        raise CompareError(f"--target-accuracy must be a finite number, got {target_accuracy!r}")
    if cfg.curve.axis not in AXES:
        raise CompareError(f"--curve-x {cfg.curve.axis!r}: expected one of {', '.join(AXES)}")
    if out_dir is None:
        if len(paths) != 1:
            raise CompareError("--out is required when comparing more than one input folder")
        out_dir = Path(paths[0]) / DEFAULT_OUT_DIRNAME
    runs = discover_runs(paths, group_by)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    if baseline is not None and baseline not in groups:
        raise CompareError(f"--baseline {baseline!r} is not a group; groups: {', '.join(groups)}")
    summary = summarize(groups, target_accuracy, cfg)
    summary["overrides"] = {str(run.path): run.overrides for run in runs if run.overrides}
    rng = np.random.default_rng(cfg.bootstrap_seed)
    summary["curves"], summary["paired"] = {}, {}
    for key in summary["accuracy"]:
        summary["curves"][key] = curve_fits(groups, key, cfg, rng)
        target = summary["targets"][key]["value"]
        summary["paired"][key] = paired_comparisons(groups, key, summary["curves"][key], target, cfg, rng, baseline)
    plot_files, plot_warnings = plot_all(groups, out, metric_prefixes, cfg) if plots else ([], [])
    if plots:
        plot_files += plot_fit_figures(groups, summary["curves"], out, cfg)
    summary["warnings"] += plot_warnings
    summary["plots"] = [p.name for p in plot_files]
    for warning in summary["warnings"]:
        log.warning("%s", warning)
    report = render_report(summary, summary["plots"], reward_key=REWARD_KEY, fmt=cfg.number_format)
    (out / REPORT_NAME).write_text(report, encoding="utf-8")
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    summary["out_dir"] = str(out)
    return summary

def _print_console(summary: dict[str, Any], cfg: CompareConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for key, table in summary["accuracy"].items():
        view = Table(title=f"{key} (target {cfg.number_format.format(summary['targets'][key]['value'])})")
        for column in ("group", "final", "best", "steps to target"):
            view.add_column(column)
        for name, entry in table.items():
            steps = entry["steps_to_target"]["mean_curve"]
            view.add_row(
                name,
                format_estimate(entry["final"], cfg.number_format),
                format_estimate(entry["best"], cfg.number_format),
                "not reached" if steps is None else str(steps),
            )
        console.print(view)
    console.print(f"report: {Path(summary['out_dir']) / REPORT_NAME}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cispo.compare", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders or multirun folders")
    parser.add_argument("--out", default=None, help=f"output folder (default: <input>/{DEFAULT_OUT_DIRNAME})")
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="accuracy for 'steps to target' (default: the best accuracy the weakest group reaches)",
    )
    parser.add_argument(
        "--metric-prefix",
        action="append",
        default=[],
        help="also plot every metric whose key starts with this prefix (repeatable), e.g. actor/",
    )
    parser.add_argument("--group-by", default=ALGORITHM_KEY,
                        help="config key(s) to group runs by, comma-separated: algorithm.name,trainer.eps_high")
    parser.add_argument("--curve-x", choices=AXES, default=CurveFitConfig.axis,
                        help="compute axis of the fitted curves: step, tokens (generated) or time (wall seconds)")
    parser.add_argument("--baseline", default=None,
                        help="paired comparisons of every group against this one (default: every pair)")
    parser.add_argument("--bootstrap", type=int, default=CompareConfig.bootstrap_resamples,
                        help="bootstrap resamples for the intervals of fits and paired differences")
    parser.add_argument("--no-plots", action="store_true", help="write the report without PNG plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.bootstrap < 1:
        parser.error(f"--bootstrap must be >= 1, got {args.bootstrap}")
    cfg = CompareConfig(curve=CurveFitConfig(axis=args.curve_x), bootstrap_resamples=args.bootstrap)
    try:
        summary = compare(
            args.paths,
            args.out,
            target_accuracy=args.target_accuracy,
            metric_prefixes=args.metric_prefix,
            group_by=args.group_by,
            plots=not args.no_plots,
            baseline=args.baseline,
            cfg=cfg,
        )
    except (CompareError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_console(summary, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
