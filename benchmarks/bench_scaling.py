"""Scaling of our RL step on this machine: step time as the rollout batch and the response length
double, and 1 vs 2 DeepSpeed ranks. Reports the slope (time ratio per doubling: 2.0 = linear, lower
= the fixed costs and batching absorb part of the growth).

SmolLM2-135M WITHOUT the warm start, so responses run to ``max_tokens`` (a warm-started model answers
in ~8 tokens and the length knob would change nothing); dynamic sampling off, so every step does the
same work; no eval. Every point is a fresh run; the first and the last step are not counted.

    .venv/bin/python benchmarks/bench_scaling.py
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step_vs_trl import HERE, run_ours  # noqa: E402

RESULT = HERE / "results" / "scaling.md"
BASE = ["model.warmstart.steps=0", "group_size=4", "trainer.mini_batch_size=8"]
# (label, prompts per step, max new tokens, trainer ranks)
POINTS = [("batch", 4, 32, 1), ("batch", 8, 32, 1), ("batch", 16, 32, 1),
          ("length", 8, 64, 1), ("length", 8, 128, 1),
          ("ranks", 8, 32, 2)]


def overrides(prompts: int, tokens: int, ranks: int) -> list[str]:
    out = BASE + [f"prompts_per_step={prompts}", f"rollout.sampling.max_tokens={tokens}"]
    if ranks > 1:
        # Two ranks share the 2 cores with the engine: each rank takes half a logical CPU in Ray and
        # one torch thread (ZeRO-2 shards the optimizer state; gradients all-reduce over gloo).
        out += [f"trainer.world_size={ranks}", "trainer.zero_stage=2", "trainer.num_cpus_per_rank=0.5",
                "trainer.torch_threads=1"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for label, prompts, tokens, ranks in POINTS:
        with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
            t0 = time.perf_counter()
            r = run_ours("smollm2", args.steps, overrides(prompts, tokens, ranks), Path(tmp))
        step = statistics.median(r["step_s"])
        rows.append((label, prompts, tokens, ranks, step, r["response_tokens"], r["phases"], r["padding"]))
        print(f"{label}: prompts {prompts} tokens {tokens} ranks {ranks}: {step:.1f} s/step "
              f"(mean response {r['response_tokens']:.0f} tokens; run {time.perf_counter() - t0:.0f} s)", flush=True)
    write_result(rows, args)
    return 0


def slope(rows: list, label: str, key: int) -> str:
    pts = sorted((r[key], r[4]) for r in rows if r[0] == label or (r[1], r[2], r[3]) == (8, 32, 1))
    if len(pts) < 2:
        return "n/a"
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    per_doubling = (y1 / y0) ** (1 / math.log2(x1 / x0))
    return f"x{per_doubling:.2f} per doubling ({x0} -> {x1})"


def write_result(rows: list, args: argparse.Namespace) -> None:
    lines = ["# Scaling of our step on this machine", "",
             f"`.venv/bin/python benchmarks/bench_scaling.py --steps {args.steps}` (load average at the end "
             f"{os.getloadavg()[0]:.1f}). SmolLM2-135M fp32 without warm start (responses run to the length cap), "
             "G = 4, mini-batch 8, CISPO, no dynamic sampling, no eval; median s/step over the counted steps.", "",
             "| varied | prompts x G | max new tokens | mean response tokens | trainer ranks | s/step | phases (median s) "
             "| padding share of the update's positions |",
             "|---|---|---|---|---|---|---|---|"]
    for label, prompts, tokens, ranks, step, resp, ph, pad in rows:
        phase_text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(ph.items(), key=lambda kv: -kv[1]) if v >= 0.05)
        lines.append(f"| {label} | {prompts} x 4 | {tokens} | {resp:.0f} | {ranks} | {step:.1f} | {phase_text} | {pad:.1%} |")
    lines += ["", f"Slope, batch: {slope(rows, 'batch', 1)}; length: {slope(rows, 'length', 2)}."]
    base = next(r for r in rows if (r[1], r[2], r[3]) == (8, 32, 1))
    two = next((r for r in rows if r[3] == 2), None)
    if two:
        lines.append(f"2 ranks vs 1 (8 x 4, 32 tokens): {two[4] / base[4]:.2f}x the step time.")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
