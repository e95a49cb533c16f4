"""Dynamic sampling: generated vs kept groups and generation seconds per kept group, before/after
keep-rate round sizing, at the CPU-study setting (``experiment=cpu_study``, CISPO, one seed).

All runs use the same seed, data order and model; only the dynamic-sampling overrides differ:
``oversample`` (round 0 = prompts_per_step, each refill 1.5 x the groups missing) vs ``keep_rate``
(each round sized from the keep rate observed so far; also with no binomial margin and a larger cap).
Evaluation is off (it is the same for all).
The two runs sample different prompts after the first refill, so their rewards differ; compare the
totals, not step by step.

    .venv/bin/python benchmarks/bench_dynamic_sampling.py                 # both runs, then the table
    .venv/bin/python benchmarks/bench_dynamic_sampling.py --from-runs DIR  # only the table from DIR/<variant>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = HERE / "results" / "dynamic_sampling.md"
# Run name -> the overrides that distinguish it (the first is the baseline of the ratio).
VARIANTS = {
    "oversample": ("algorithm.refill_sizing=oversample",),
    "keep_rate": ("algorithm.refill_sizing=keep_rate",),
    "keep_rate_z0": ("algorithm.refill_sizing=keep_rate", "algorithm.refill_z=0", "algorithm.max_round_factor=6"),
}


def train_command(variant: str, steps: int, seed: int, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cispo.train", "experiment=cpu_study", "algorithm=cispo", f"seed={seed}",
            f"total_steps={steps}", "eval.at_start=false", "eval.sets=[]", *VARIANTS[variant], f"run_dir={run_dir}"]


def read_steps(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r.get("step", 0) >= 1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def summary_row(sizing: str, steps: list[dict]) -> tuple[str, dict[str, float]]:
    def total(key: str) -> float:
        return sum(float(r.get(key, 0.0)) for r in steps)

    kept, seen, gen = total("dynamic_sampling/groups_kept"), total("dynamic_sampling/groups_seen"), total("time/generate")
    informative = seen - total("dynamic_sampling/dropped_zero_variance")
    out = {"steps": len(steps), "rounds": total("dynamic_sampling/rounds"), "seen": seen, "kept": kept,
           "keep_rate": informative / seen if seen else float("nan"), "surplus": informative - kept,
           "per_group": gen / seen if seen else float("nan"),
           "shortfall": total("dynamic_sampling/shortfall"), "generate_s": gen,
           "per_kept": gen / kept if kept else float("nan"), "step_s": total("time/step")}
    per_step = ", ".join(f"{int(r['dynamic_sampling/rounds'])}r {int(r['dynamic_sampling/groups_seen'])}/"
                         f"{int(r['dynamic_sampling/groups_kept'])}" for r in steps)
    line = (f"| `{sizing}` | {out['rounds']:.0f} | {out['seen']:.0f} | {out['kept']:.0f} | {out['shortfall']:.0f} | "
            f"{out['keep_rate']:.2f} | {out['surplus']:.0f} | {out['generate_s']:.1f} | {out['per_group']:.3f} | "
            f"**{out['per_kept']:.2f}** | {out['step_s']:.1f} | {per_step} |")
    return line, out


def write_table(runs: Path, steps: int, seed: int, load: str) -> str:
    lines, totals = [], {}
    for variant in VARIANTS:
        if not (runs / variant / "metrics.jsonl").is_file():
            continue
        line, totals[variant] = summary_row(variant, read_steps(runs / variant))
        lines.append(line)
    base = totals["oversample"]["per_kept"]
    gains = ", ".join(f"`{name}` {base / t['per_kept']:.2f}x" for name, t in totals.items() if name != "oversample")
    commands = "\n".join("    python " + " ".join(repr(a) if "[" in a else a  # quoted for a shell
                                                     for a in train_command(v, steps, seed, Path("<dir>") / v)[1:])
                          for v in VARIANTS)
    text = f"""# Dynamic sampling: one larger round instead of several small ones

`experiment=cpu_study`, CISPO, seed {seed}, {steps} steps, 8 prompts x G = 4 per step, evaluation off;
only the dynamic-sampling overrides differ (below). CPU: {cpu_model()}, {os.cpu_count()} cores; load:
{load}. Generate s: wall time of the `generate` phase (rollout engine) summed over the steps; keep
rate: groups with reward variance / groups generated; surplus: informative groups generated beyond
the 8 a step trains on (dropped); shortfall: groups missing after the last round (the step trains on
fewer).

| variant | rounds | groups generated | groups kept | shortfall | keep rate | surplus | generate s | s / group generated | s / kept group | step s (sum) | per step: rounds generated/kept |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Generation seconds per kept group, lower than `oversample` by: {gains}.

What it shows (this draw): keep-rate sizing fills the batch where the old rule ran out of rounds
(shortfall column: the step then trains on fewer groups), in fewer, larger rounds that cost less per
group generated ({totals['oversample']['per_group']:.3f} -> {min(t['per_group'] for t in totals.values()):.3f} s). Part of that gain goes to the surplus: a
round sized to fill the batch usually overshoots, and the extra informative groups are dropped,
while the old rule, never full, keeps every informative group (exactly 1/p generated per kept group).
Round sizing alone cannot beat the per-group ratio, {totals['oversample']['per_group'] / min(t['per_group'] for t in totals.values()):.2f}x here, even with no surplus: at a
keep rate p at least 1/p groups are generated per kept group (p = {totals['oversample']['keep_rate']:.2f}), so the issue's
1.5x is not met this way. What would meet it: carry the surplus
informative groups into the next step (one step stale; CISPO's IS weight corrects for it) instead of
dropping them, and cheaper generation per group (larger engine batches).
The machine was shared with other engineers' jobs: each figure is one draw.

Reproduce:

    .venv/bin/python benchmarks/bench_dynamic_sampling.py --steps {steps} --seed {seed}
    # = one run per variant:
{commands}
"""
    RESULT.write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cispo-bench-dynamic-sampling"))
    parser.add_argument("--from-runs", type=Path, default=None, help="summarise DIR/<variant> runs already made")
    parser.add_argument("--load", default=None, help="load average to record (default: now)")
    args = parser.parse_args()
    load = args.load or " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = args.from_runs
    if runs is None:
        runs = args.out
        for variant in VARIANTS:
            run_dir = runs / variant
            if run_dir.exists():
                raise SystemExit(f"{run_dir} exists: remove it (a run there would resume, not start afresh)")
            subprocess.run(train_command(variant, args.steps, args.seed, run_dir), cwd=ROOT, check=True)
    print(write_table(runs, args.steps, args.seed, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
