"""Math reward throughput (responses per second) and verdicts, for one copy of `rewards/`.

    flock /tmp/cispo-heavy.lock nice -n 5 .venv/bin/python benchmarks/bench_rewards_math.py \
        --label after --write
    # "before": the same workload on an older tree, e.g. the code at commit ebc90c2:
    git archive ebc90c2 rewards | tar -x -C /tmp/before
    flock /tmp/cispo-heavy.lock nice -n 5 .venv/bin/python benchmarks/bench_rewards_math.py \
        --rewards-root /tmp/before --label "before (ebc90c2)" --write

Workload: the 189-row case table (tests/data/math_reward_cases.jsonl), the 169 core rows of
data/eval/math_grader_cases.jsonl and the strict-layer cases (tests/data/math_strict_cases.jsonl).
Each response is scored in this process, one core, the way a pool worker scores it (math-verify
inline, no pool overhead), so the figure is the grader's own cost per response. Each repeat
starts with math-verify's parse cache cleared. With `--write` one row per label is kept in
benchmarks/results/rewards_math.md (a row with the same label is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "rewards_math.md"
TABLE = ROOT / "tests" / "data" / "math_reward_cases.jsonl"
GRADER = ROOT / "data" / "eval" / "math_grader_cases.jsonl"
STRICT = ROOT / "tests" / "data" / "math_strict_cases.jsonl"
HEADER = [
    "# Math reward throughput",
    "",
    "Responses scored per second on one core, in process (as a pool worker scores them), median "
    "of the repeats; workload and command in `benchmarks/bench_rewards_math.py`. `table`, `grader` "
    "and `strict` are how many verdicts agree with the labels of each workload part; `raised`: responses "
    "for which `score` raised an exception. Three table rows are labelled wrong since the strict "
    "grader (`8,09` and `8\\,09` for 809, a box and an `Answer:` line that disagree): the earlier "
    "grader's 186/189 are those three.",
    "",
    "| label | responses | repeats | responses/s | table | grader core | strict cases | raised | load avg |",
    "|---|---|---|---|---|---|---|---|---|",
]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def workload() -> list[tuple[str, str, str, object, bool]]:
    """(part, kind, response, ground truth, expected verdict) for every response of the workload."""
    items = [("table", c["kind"], c["response"], c["ground_truth"], bool(c["expected"])) for c in _jsonl(TABLE)]
    for r in _jsonl(GRADER):
        if r["core"]:
            response = r["pred"] if r["category"] == "boxed_in_response" else "\\boxed{" + r["pred"] + "}"
            items.append(("grader", "math", response, r["gold"], bool(r["expected_equal"])))
    items += [("strict", c["kind"], c["response"], c["ground_truth"], bool(c["expected"])) for c in _jsonl(STRICT)]
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rewards-root", default=str(ROOT), help="folder holding the rewards/ package to measure")
    ap.add_argument("--label", default="current")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--legacy", action="store_true", help="score with math_strict=False (the earlier grader's rules)")
    ap.add_argument("--write", action="store_true", help="keep the row in benchmarks/results/rewards_math.md")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.rewards_root).resolve()))
    from rewards import scoring
    from rewards import math_reward
    from rewards.config import DEFAULT_CONFIG

    config = DEFAULT_CONFIG.replace(math_strict=False) if args.legacy else DEFAULT_CONFIG

    print("rewards from", Path(scoring.__file__).resolve().parent, file=sys.stderr)
    scoring.IN_WORKER = True  # math-verify inline, as in a pool worker
    math_reward.warm_up()
    items = workload()
    def one(kind: str, response: str, gold: object) -> bool | None:
        try:
            return scoring.score_with_config(kind, response, gold, config).correct
        except Exception:  # noqa: BLE001 - the older grader raised on some inputs: counted, not fatal
            return None

    rates, verdicts = [], None
    for _ in range(args.repeats):
        math_reward._parse_gold.cache_clear()
        start = time.perf_counter()
        verdicts = [one(k, resp, gt) for _, k, resp, gt, _ in items]
        rates.append(len(items) / (time.perf_counter() - start))
    agree = {part: [0, 0] for part in ("table", "grader", "strict")}
    for (part, *_, expected), got in zip(items, verdicts or []):
        agree[part][0] += got == expected
        agree[part][1] += 1
    cells = [f"{a}/{n}" if n else "-" for a, n in agree.values()]
    raised = sum(v is None for v in verdicts or [])
    row = (f"| {args.label} | {len(items)} | {args.repeats} | {statistics.median(rates):.1f} | "
           f"{' | '.join(cells)} | {raised} | {os.getloadavg()[0]:.1f} |")
    print(row)
    if args.write:
        old = RESULTS.read_text().splitlines() if RESULTS.exists() else []
        rows = [line for line in old if line.startswith("| ") and not line.startswith("| label")
                and not line.startswith("|---") and not line.startswith(f"| {args.label} |")]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(HEADER + rows + [row]) + "\n")


if __name__ == "__main__":
    main()
