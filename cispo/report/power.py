"""How many seeds and eval problems a comparison needs: a power calculation from a study's summary.

    python -m cispo.report.power studies/cpu_study/summary.json --problems 64 --k 4 [--delta 0.05]
        [--alpha 0.05] [--power 0.8] [--plan-problems 64,128,256,512] [--seeds 5] [--out FILE]

Reads the per-seed final eval accuracy of every group from a `cispo.compare` summary.json and
prints a markdown section: the spread between seeds, the share of it that eval sampling alone
explains, and for each eval size the seeds per arm a difference of `delta` needs at level `alpha`
with power `power`, plus the difference 5 seeds can detect.

Model. A run's accuracy = the policy the run reached (training noise, variance s_t^2) + the noise of
estimating it from N problems x k samples. That estimate's variance is sum_i p_i (1 - p_i) / (k N^2)
<= p (1 - p) / (k N) (equality when every problem has the same pass rate p): the bound is used, so
s_t^2 = s^2 - p (1 - p) / (k N0) is a lower estimate and the predicted gain from a larger N an upper
one. Sample sizes: the usual t-test approximation n >= ((t_{1-a/2, df} + t_{power, df}) sd / delta)^2
(x 2 per arm for two independent arms), iterated because df depends on n (within one seed of the
exact noncentral-t answer; checked against published tables in tests). With a handful of seeds the
variance estimate is itself uncertain: the 80% upper confidence bound of sd (chi-square, df of the
pooled estimate, Wilson-Hilferty's approximation of the quantile) is shown beside the estimate.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cispo.report.stats import t_critical

MAX_SEEDS = 100_000  # the search for n stops here (a difference far below the noise)
UPPER_BOUND_LEVEL = 0.8  # one-sided level of the upper confidence bound on the seed sd
STATS = ("final", "best", "auc")  # per-run numbers a cispo.compare summary keeps per seed


def normal_quantile(p: float) -> float:
    """Phi^-1(p) by bisection on the normal CDF (erf), to 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    low, high = -40.0, 40.0
    while high - low > 1e-12:
        mid = 0.5 * (low + high)
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def t_quantile(p: float, df: int) -> float:
    """One-sided Student-t quantile: P(T_df <= t) = p."""
    if p == 0.5:
        return 0.0
    if p > 0.5:
        return t_critical(df, 2.0 * p - 1.0)
    return -t_critical(df, 1.0 - 2.0 * p)


def chi2_quantile(p: float, df: int) -> float:
    """Chi-square quantile by Wilson-Hilferty: df (1 - 2/(9 df) + z_p sqrt(2/(9 df)))^3 (~1% accurate)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + normal_quantile(p) * math.sqrt(c)) ** 3


def sd_upper_bound(sd: float, df: int, level: float = UPPER_BOUND_LEVEL) -> float:
    """One-sided `level` upper confidence bound of a standard deviation estimated with df."""
    return sd * math.sqrt(df / chi2_quantile(1.0 - level, df))


def _needed(sd: float, delta: float, alpha: float, power: float, two_sample: bool) -> int:
    if sd <= 0:
        return 2
    for n in range(2, MAX_SEEDS):
        df = 2 * n - 2 if two_sample else n - 1
        scale = math.sqrt(n / 2.0) if two_sample else math.sqrt(n)
        if scale * delta / sd >= t_quantile(1 - alpha / 2, df) + t_quantile(power, df):
            return n
    raise ValueError(f"more than {MAX_SEEDS} seeds needed (sd {sd}, delta {delta})")


def seeds_paired(sd_diff: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seed pairs for a paired t-test to detect a mean difference delta (sd of the differences)."""
    return _needed(sd_diff, delta, alpha, power, two_sample=False)


def seeds_two_sample(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds per arm for a two-sample t-test (equal arms, common sd) to detect delta."""
    return _needed(sd, delta, alpha, power, two_sample=True)


def detectable_paired(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The difference n seed pairs detect with the given power."""
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd_diff / math.sqrt(n)


def detectable_two_sample(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The difference n seeds per arm detect with the given power."""
    return (t_quantile(1 - alpha / 2, 2 * n - 2) + t_quantile(power, 2 * n - 2)) * sd * math.sqrt(2.0 / n)


def eval_noise_variance(accuracy: float, problems: int, k: int) -> float:
    """Upper bound of the variance of avg@k over `problems` problems: p (1 - p) / (k N)."""
    return accuracy * (1.0 - accuracy) / (k * problems)


@dataclass(frozen=True)
class SeedSpread:
    """Between-seed spread of one metric in a finished study."""

    key: str
    stat: str
    values: dict[str, list[float]]
    seeds: dict[str, list[str]]
    sd: dict[str, float]
    pooled_sd: float
    pooled_df: int
    paired_sd: dict[str, float]
    """sd of the per-seed differences, per pair of groups ("a - b")."""
    pooled_paired_sd: float | None
    pooled_paired_df: int
    mean_accuracy: float


def seed_spread(summary: Mapping[str, Any], key: str | None = None, stat: str = "final") -> SeedSpread:
    """The spread of `stat` (final or best) of `key` over seeds, from a cispo.compare summary."""
    accuracy = summary.get("accuracy") or {}
    if not accuracy:
        raise ValueError("the summary has no eval accuracy (summary['accuracy'] is empty)")
    if key is None:
        key = sorted(accuracy)[0]
    if key not in accuracy:
        raise ValueError(f"key {key!r} not in the summary; it has {sorted(accuracy)}")
    values, seeds, sd = {}, {}, {}
    if stat not in STATS:
        raise ValueError(f"stat {stat!r}: expected one of {STATS}")
    for name, entry in accuracy[key].items():
        if not entry.get(stat):
            raise ValueError(f"{key}: group {name!r} has no per-seed {stat!r} (a summary from an older cispo.compare?)")
        values[name] = [float(v) for v in entry[stat]["values"]]
        seeds[name] = [str(s) for s in summary["groups"][name]["seeds"]]
        if len(values[name]) >= 2:
            sd[name] = float(np.std(values[name], ddof=1))
    df = sum(len(values[n]) - 1 for n in sd)
    if df < 1:
        raise ValueError(f"{key}: no group has two seeds; the spread between seeds is unknown")
    pooled = math.sqrt(sum((len(values[n]) - 1) * sd[n] ** 2 for n in sd) / df)
    paired, pdf, pss = {}, 0, 0.0
    for a, b in itertools.combinations(sorted(values), 2):
        by_seed_b = dict(zip(seeds[b], values[b]))
        diffs = [va - by_seed_b[s] for s, va in zip(seeds[a], values[a]) if s in by_seed_b]
        if len(diffs) >= 2:
            paired[f"{a} - {b}"] = float(np.std(diffs, ddof=1))
            pdf += len(diffs) - 1
            pss += (len(diffs) - 1) * paired[f"{a} - {b}"] ** 2
    mean = float(np.mean([v for vs in values.values() for v in vs]))
    return SeedSpread(key, stat, values, seeds, sd, pooled, df, paired, math.sqrt(pss / pdf) if pdf else None, pdf, mean)


def render(spread: SeedSpread, *, problems: int, k: int, delta: float, alpha: float, power: float,
           plan_problems: Sequence[int], seeds: int, evals: int = 1) -> str:
    """The markdown section: inputs, then seeds needed per eval size. `evals`: independent evals
    averaged into the per-run number (1 for final/best; about the number of evals for auc)."""

    def eval_var(n_problems: int) -> float:
        return eval_noise_variance(spread.mean_accuracy, n_problems, k) / evals

    e0 = eval_var(problems)
    train_var = max(0.0, spread.pooled_sd ** 2 - e0)
    upper = sd_upper_bound(spread.pooled_sd, spread.pooled_df)
    lines = [f"Metric: `{spread.key}`, {spread.stat} of each run; a difference of {delta:g} at two-sided "
             f"alpha = {alpha:g} with power {power:g}.", "",
             "| group | per-seed values | sd over seeds |", "|---|---|---|"]
    for name, vals in spread.values.items():
        sd = spread.sd.get(name)
        lines.append(f"| {name} | {', '.join(f'{v:.4f}' for v in vals)} | {'' if sd is None else f'{sd:.4f}'} |")
    lines += ["", f"- pooled sd over seeds: **{spread.pooled_sd:.4f}** (df {spread.pooled_df}; "
              f"{UPPER_BOUND_LEVEL:.0%} upper bound {upper:.4f})"]
    if spread.pooled_paired_sd is not None:
        pairs = ", ".join(f"{p} {v:.4f}" for p, v in spread.paired_sd.items())
        lines.append(f"- sd of the per-seed differences: {pairs}; pooled **{spread.pooled_paired_sd:.4f}** "
                     f"(df {spread.pooled_paired_df}); sqrt(2) x pooled sd = {math.sqrt(2) * spread.pooled_sd:.4f} "
                     "is what independent arms would give")
    lines.append(f"- eval sampling noise at N = {problems} problems x k = {k}"
                 + (f", averaged over {evals} evals" if evals > 1 else "") + " (mean accuracy "
                 f"{spread.mean_accuracy:.3f}): sd <= {math.sqrt(e0):.4f}, i.e. <= "
                 f"{e0 / spread.pooled_sd ** 2:.0%} of the variance; the rest, sd >= {math.sqrt(train_var):.4f}, "
                 "is training noise that more eval problems cannot remove")
    lines += ["", f"| eval problems N (k = {k}) | sd of a run's accuracy | seeds per arm, two-sample (sd estimate / "
              f"{UPPER_BOUND_LEVEL:.0%} bound) | seed pairs, paired (observed differences) | difference {seeds} seeds "
              "per arm detect | difference "
              f"{seeds} pairs detect |", "|---|---|---|---|---|---|"]
    for n_problems in plan_problems:
        e = eval_var(n_problems)
        sd = math.sqrt(train_var + e)
        sd_up = math.sqrt(max(0.0, upper ** 2 - e0) + e)
        two = f"{seeds_two_sample(sd, delta, alpha, power)} / {seeds_two_sample(sd_up, delta, alpha, power)}"
        paired = mde_paired = ""
        if spread.pooled_paired_sd is not None:
            sd_d = math.sqrt(max(0.0, spread.pooled_paired_sd ** 2 - 2 * e0) + 2 * e)
            paired = str(seeds_paired(sd_d, delta, alpha, power))
            mde_paired = f"{detectable_paired(sd_d, seeds, alpha, power):.3f}"
        lines.append(f"| {n_problems} | {sd:.4f} | {two} | {paired} | "
                     f"{detectable_two_sample(sd, seeds, alpha, power):.3f} | {mde_paired} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(prog="python -m cispo.report.power", description=__doc__.split("\n")[0])
    parser.add_argument("summary", help="summary.json written by cispo.compare")
    parser.add_argument("--problems", type=int, required=True, help="eval problems N of that study")
    parser.add_argument("--k", type=int, required=True, help="samples per problem k of that study")
    parser.add_argument("--key", default=None, help="eval accuracy key (default: the first in the summary)")
    parser.add_argument("--stat", choices=STATS, default="final",
                        help="per-run number: final accuracy, best, or auc (mean accuracy over the run's steps)")
    parser.add_argument("--delta", type=float, default=0.05, help="difference to detect (accuracy, 0.05 = 5 points)")
    parser.add_argument("--alpha", type=float, default=0.05, help="two-sided significance level")
    parser.add_argument("--power", type=float, default=0.8, help="probability of detecting delta")
    parser.add_argument("--plan-problems", default="64,128,256,512", help="eval sizes to plan for, comma-separated")
    parser.add_argument("--evals-per-run", type=int, default=1,
                        help="evals averaged into the per-run number (for --stat auc: the number of evals of a run)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm for the detectable-difference columns")
    parser.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        plan = [int(p) for p in args.plan_problems.split(",")]
        summary = json.loads(Path(args.summary).read_text(encoding="utf-8"))
        text = render(seed_spread(summary, args.key, args.stat), problems=args.problems, k=args.k, delta=args.delta,
                      alpha=args.alpha, power=args.power, plan_problems=plan, seeds=args.seeds,
                      evals=args.evals_per_run)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {args.summary}: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
