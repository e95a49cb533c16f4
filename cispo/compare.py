"""Compare runs across algorithms and seeds: plots (PNG) and a markdown report.

    python -m cispo.compare <run folders or multirun folders> [--out DIR] [--target-accuracy X]
                            [--metric-prefix PREFIX ...] [--group-by algorithm.name] [--no-plots]

Writes `report.md`, `summary.json` (every number of the report) and PNG plots to `--out` (default:
`<input>/comparison` when there is one input).

A run folder holds `metrics.jsonl` (written by `cispo.tracking.MetricsLogger`) and its resolved
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
| `actor/dropped_token_frac`   | fraction of response tokens with exactly zero gradient         | plot (M1's argument)     |
| `time/step`                  | wall seconds of the step                                       | report; wall-clock axis  |
| `time/total_elapsed`         | wall seconds since the run started (carried over on resume)    | wall-clock axis          |
| `time/<phase>`               | seconds in a phase (generate, reward, update, ...)             | report (phase table)     |

Wall-clock is `time/total_elapsed`, or the cumulative sum of `time/step` when it is missing. A
missing key skips its plot with a warning; it never stops the comparison.

Across seeds, curves are aligned by step: the mean and a two-sided 95% Student-t confidence band
(mean ± t_{0.975, n-1} · s / sqrt(n), s the sample standard deviation) at each step; one seed gives no
band. On the wall-clock axis a point sits at the seeds' mean elapsed time for that step.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cispo.report.markdown import NUMBER_FORMAT, format_estimate, render_report
from cispo.report.plots import PlotStyle, plot_curves
from cispo.report.stats import Curve, curve_across_seeds, first_step_reaching, mean_ci, t_critical
from cispo.tracking import ELAPSED_KEY, EVAL_ACCURACY_RE, METRICS_FILENAME, STEP_TIME_KEY, read_metrics

__all__ = ["CompareConfig", "CompareError", "Run", "compare", "discover_runs", "main", "mean_ci",
           "seed_curve", "summarize", "t_critical"]

log = logging.getLogger(__name__)

REWARD_KEY = "reward/mean"
ENTROPY_KEY = "actor/entropy"
RESPONSE_LENGTH_KEY = "response_length/mean"
CLIP_HIGH_KEY = "actor/is_clip_frac_high"
CLIP_LOW_KEY = "actor/is_clip_frac_low"
DROPPED_KEY = "actor/dropped_token_frac"
PHASE_PREFIX = "time/"
NOT_PHASES = (STEP_TIME_KEY, ELAPSED_KEY)

CONFIG_CANDIDATES = (Path(".hydra") / "config.yaml", Path("config.yaml"))
ALGORITHM_KEY = "algorithm.name"
SEED_KEY = "seed"
SKIP_DIRS = ("checkpoints", "wandb")  # never hold runs; can be large
DEFAULT_OUT_DIRNAME = "comparison"
REPORT_NAME = "report.md"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class CompareConfig:
    confidence: float = 0.95
    target_tolerance: float = 1e-12  # "reached" means value >= target - tolerance (float noise)
    number_format: str = NUMBER_FORMAT
    plot_style: PlotStyle = PlotStyle()


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


class CompareError(ValueError):
    """The inputs cannot be compared (no runs, a run without metrics or config, a missing key)."""


# ---------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"algorithm": {"name": "cispo"}} -> {"algorithm.name": "cispo"}; lists stay values."""
    if not isinstance(config, dict):
        return {prefix.rstrip("."): config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flattened
    group: str
    seed: Any
    records: list[dict[str, Any]]
    _elapsed: dict[int, float] | None = field(default=None, repr=False)

    def keys(self) -> set[str]:
        return {k for r in self.records for k, v in r.items() if _is_finite_number(v)} - {"step"}

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the lines with a finite value for `key`."""
        points = [(r["step"], float(r[key])) for r in self.records if _is_finite_number(r.get(key))]
        steps = np.array([p[0] for p in points], dtype=np.int64)
        values = np.array([p[1] for p in points], dtype=np.float64)
        return steps, values

    def elapsed(self) -> dict[int, float] | None:
        """Wall seconds at each step: `time/total_elapsed`, else the running sum of `time/step`."""
        if self._elapsed is None:
            if any(_is_finite_number(r.get(ELAPSED_KEY)) for r in self.records):
                self._elapsed = {
                    r["step"]: float(r[ELAPSED_KEY])
                    for r in self.records
                    if _is_finite_number(r.get(ELAPSED_KEY))
                }
            elif any(_is_finite_number(r.get(STEP_TIME_KEY)) for r in self.records):
                total, out = 0.0, {}
                for r in self.records:
                    if _is_finite_number(r.get(STEP_TIME_KEY)):
                        total += float(r[STEP_TIME_KEY])
                        out[r["step"]] = total
                self._elapsed = out
            else:
                return None
        return self._elapsed


def _find_config(folder: Path) -> Path | None:
    for candidate in CONFIG_CANDIDATES:
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def load_run(folder: Path, group_by: str = ALGORITHM_KEY) -> Run:
    import yaml

    metrics_path = folder / METRICS_FILENAME
    if not metrics_path.is_file():
        raise CompareError(f"run folder {folder} has no {METRICS_FILENAME}")
    config_path = _find_config(folder)
    if config_path is None:
        raise CompareError(
            f"run folder {folder} has {METRICS_FILENAME} but no config "
            f"({' or '.join(str(c) for c in CONFIG_CANDIDATES)})"
        )
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CompareError(f"{config_path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise CompareError(f"{config_path}: expected a mapping at the top level")
    config = flatten_config(raw)
    for key in dict.fromkeys((ALGORITHM_KEY, SEED_KEY, group_by)):
        if key not in config:
            raise CompareError(f"{config_path}: missing key {key!r} (needed to group runs by seed)")
    records = read_metrics(metrics_path)
    if not records:
        raise CompareError(f"run {folder}: {metrics_path} has no metrics lines")
    return Run(folder, config, str(config[group_by]), config[SEED_KEY], records)


def _natural_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def discover_runs(paths: Sequence[str | Path], group_by: str = ALGORITHM_KEY) -> list[Run]:
    """Every run under `paths` (run folders, or folders searched recursively for run folders)."""
    if not paths:
        raise CompareError("give at least one run folder or multirun folder")
    found: dict[Path, Run] = {}

    def visit(folder: Path, explicit: bool) -> None:
        if (folder / METRICS_FILENAME).is_file():
            resolved = folder.resolve()
            if resolved not in found:
                found[resolved] = load_run(folder, group_by)
            return
        if _find_config(folder) is not None and (explicit or folder.name.isdigit()):
            raise CompareError(f"run folder {folder} has a config but no {METRICS_FILENAME}")
        for child in sorted(folder.iterdir(), key=_natural_key):
            if child.is_dir() and not child.name.startswith(".") and child.name not in SKIP_DIRS:
                visit(child, explicit=False)

    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise CompareError(f"{path}: not a folder (expected a run folder or a multirun folder)")
        visit(path, explicit=True)
    if not found:
        raise CompareError(
            f"no runs found under {', '.join(str(p) for p in paths)}: a run folder holds "
            f"{METRICS_FILENAME} and .hydra/config.yaml or config.yaml"
        )
    return list(found.values())


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    for name, members in groups.items():
        seeds = [r.seed for r in members]
        if len(set(map(str, seeds))) != len(seeds):
            log.warning("group %r has repeated seeds %s: are these different configs?", name, seeds)
        members.sort(key=lambda r: (str(r.seed), str(r.path)))
    return dict(sorted(groups.items()))


# ---------------------------------------------------------------------------------------------------
# Curves and summaries
# ---------------------------------------------------------------------------------------------------


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
            finals, bests = [], []
            for run in members:
                _, values = run.series(key)
                if values.size:
                    finals.append(float(values[-1]))
                    bests.append(float(values.max()))
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
    summary["config_diff"], summary["config_within_group"] = config_differences(groups)
    return summary


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


# ---------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------


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


def compare(
    paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    target_accuracy: float | None = None,
    metric_prefixes: Sequence[str] = (),
    group_by: str = ALGORITHM_KEY,
    plots: bool = True,
    cfg: CompareConfig = CompareConfig(),
) -> dict[str, Any]:
    """Discover, summarise, plot, and write `report.md` + `summary.json` in `out_dir`."""
    if target_accuracy is not None and not math.isfinite(target_accuracy):
        raise CompareError(f"--target-accuracy must be a finite number, got {target_accuracy!r}")
    if out_dir is None:
        if len(paths) != 1:
            raise CompareError("--out is required when comparing more than one input folder")
        out_dir = Path(paths[0]) / DEFAULT_OUT_DIRNAME
    runs = discover_runs(paths, group_by)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    summary = summarize(groups, target_accuracy, cfg)
    plot_files, plot_warnings = plot_all(groups, out, metric_prefixes, cfg) if plots else ([], [])
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
    parser.add_argument("--group-by", default=ALGORITHM_KEY, help="config key to group runs by")
    parser.add_argument("--no-plots", action="store_true", help="write the report without PNG plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cfg = CompareConfig()
    try:
        summary = compare(
            args.paths,
            args.out,
            target_accuracy=args.target_accuracy,
            metric_prefixes=args.metric_prefix,
            group_by=args.group_by,
            plots=not args.no_plots,
            cfg=cfg,
        )
    except (CompareError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_console(summary, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
