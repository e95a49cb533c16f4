"""Dynamic sampling: generated vs kept groups and generation seconds per kept group, before/after
keep-rate round sizing, at the CPU-study setting (``experiment=cpu_study``, CISPO, one seed).

Both runs use the same seed, data order and model; only ``algorithm.refill_sizing`` differs:
``oversample`` (round 0 = prompts_per_step, each refill 1.5 x the groups missing) vs ``keep_rate``
(each round sized from the keep rate observed so far). Evaluation is off (it is the same for both).
The two runs sample different prompts after the first refill, so their rewards differ; compare the
totals, not step by step.

    .venv/bin/python benchmarks/bench_dynamic_sampling.py                 # both runs, then the table
    .venv/bin/python benchmarks/bench_dynamic_sampling.py --from-runs DIR  # only the table from DIR/<sizing>
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
SIZINGS = ("oversample", "keep_rate")


def train_command(sizing: str, steps: int, seed: int, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cispo.train", "experiment=cpu_study", "algorithm=cispo", f"seed={seed}",
            f"total_steps={steps}", "eval.at_start=false", "eval.sets=[]", f"algorithm.refill_sizing={sizing}",
            f"run_dir={run_dir}"]


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
    out = {"steps": len(steps), "rounds": total("dynamic_sampling/rounds"), "seen": seen, "kept": kept,
           "shortfall": total("dynamic_sampling/shortfall"), "generate_s": gen,
           "per_kept": gen / kept if kept else float("nan"), "step_s": total("time/step")}
    per_step = ", ".join(f"{int(r['dynamic_sampling/rounds'])}r {int(r['dynamic_sampling/groups_seen'])}/"
                         f"{int(r['dynamic_sampling/groups_kept'])}" for r in steps)
    line = (f"| `{sizing}` | {out['steps']} | {out['rounds']:.0f} | {out['seen']:.0f} | {out['kept']:.0f} | "
            f"{out['shortfall']:.0f} | {out['seen'] / max(out['kept'], 1):.2f} | {out['generate_s']:.1f} | "
            f"{out['per_kept']:.2f} | {out['step_s']:.1f} | {per_step} |")
    return line, out


def write_table(runs: Path, steps: int, seed: int, load: str) -> str:
    lines, totals = [], {}
    for sizing in SIZINGS:
        line, totals[sizing] = summary_row(sizing, read_steps(runs / sizing))
        lines.append(line)
    before, after = totals["oversample"], totals["keep_rate"]
    gain = before["per_kept"] / after["per_kept"] if after["per_kept"] else float("nan")
    cmd = " ".join(train_command("<sizing>", steps, seed, Path("<dir>/<sizing>"))[1:])
    text = f"""# Dynamic sampling: one larger round instead of several small ones

`experiment=cpu_study`, CISPO, seed {seed}, {steps} steps, 8 prompts x G = 4 per step, evaluation off;
only `algorithm.refill_sizing` differs. CPU: {cpu_model()}, {os.cpu_count()} cores; load average at the
start: {load}. Generation seconds are wall time of the `generate` phase (rollout engine), summed over
the steps.

| sizing | steps | rounds | groups generated | groups kept | shortfall | generated / kept | generate s | generate s / kept group | step s (total) | per step: rounds generated/kept |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

Generation seconds per kept group: **{before['per_kept']:.2f} -> {after['per_kept']:.2f} s ({gain:.2f}x lower)**.

Reproduce (the machine was shared; the ratio is one draw):

    .venv/bin/python benchmarks/bench_dynamic_sampling.py --steps {steps} --seed {seed}
    # = for each <sizing> in oversample, keep_rate:
    python {cmd}
"""
    RESULT.write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cispo-bench-dynamic-sampling"))
    parser.add_argument("--from-runs", type=Path, default=None, help="summarise DIR/<sizing> runs already made")
    parser.add_argument("--load", default=None, help="load average to record (default: now)")
    args = parser.parse_args()
    load = args.load or " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = args.from_runs
    if runs is None:
        runs = args.out
        for sizing in SIZINGS:
            run_dir = runs / sizing
            if run_dir.exists():
                raise SystemExit(f"{run_dir} exists: remove it (a run there would resume, not start afresh)")
            subprocess.run(train_command(sizing, args.steps, args.seed, run_dir), cwd=ROOT, check=True)
    print(write_table(runs, args.steps, args.seed, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
