"""Measure the reward package on the shared data sets; writes benchmarks/results/rewards.md.

    nice -n 5 .venv/bin/python benchmarks/bench_rewards.py            # everything
    nice -n 5 .venv/bin/python benchmarks/bench_rewards.py --only code --limit 20

Code: every reference solution of HumanEval (164), MBPP (399) and LeetCode test (200) must
pass, and a deliberately broken version of each (its entry point's return value perturbed)
must fail; throughput is programs scored per second with the default pool.
Math: accuracy on tests/data/math_reward_cases.jsonl, agreement with the labelled core rows of
eval/math_grader_cases.jsonl, and responses per second.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rewards import RewardConfig, score_batch  # noqa: E402
from rewards import code_data  # noqa: E402
from rewards.batch import default_workers  # noqa: E402

DATA = Path(os.environ.get("CISPO_DATA", ROOT / "data"))
CASES = ROOT / "tests" / "data" / "math_reward_cases.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "rewards.md"
CHUNK = 64
RETRY_FACTOR = 4  # a reference that timed out is re-run with this many times the limits

# Appended to a reference solution: wraps the entry point so every return value is wrong.
PERTURB = '''

def __perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "#"
    if isinstance(value, list):
        return value + [None]
    if isinstance(value, tuple):
        return value + (None,)
    if isinstance(value, (set, frozenset)):
        return set(value) | {None}
    if isinstance(value, dict):
        return {**value, "__broken__": None}
    if value is None:
        return -1
    return object()
'''


def broken_function(program: str, name: str) -> str:
    return program + PERTURB + f'''
__original = {name}
def {name}(*args, **kwargs):
    return __perturb(__original(*args, **kwargs))
'''


def broken_solution(program: str, method: str) -> str:
    return program + PERTURB + f'''
__original = Solution.{method}
def __wrapped(self, *args, **kwargs):
    return __perturb(__original(self, *args, **kwargs))
Solution.{method} = __wrapped
'''


def mbpp_entry_point(row: dict) -> str | None:
    """The function an MBPP test calls that the reference solution defines."""
    names = re.findall(r"([A-Za-z_]\w*)\s*\(", row["test_list"][0])
    return next((n for n in names if re.search(rf"def\s+{n}\s*\(", row["code"])), None)


def fence(program: str) -> str:
    return "Here is my solution.\n```python\n" + program + "\n```\n"


def load_code(limit: int | None) -> list[dict]:
    """(dataset, id, reference response, broken response, ground truth) rows."""
    rows = []
    with gzip.open(DATA / "code" / "HumanEval.jsonl.gz", "rt") as fh:
        he = [json.loads(line) for line in fh]
    for r in he[:limit]:
        ref = code_data.humaneval_reference(r)
        rows.append(dict(dataset="humaneval", id=r["task_id"], gt=code_data.humaneval_ground_truth(r),
                         good=fence(ref), bad=fence(broken_function(ref, r["entry_point"]))))
    mbpp = json.loads((DATA / "code" / "prime_new_mbpp.json").read_text())
    for r in mbpp[:limit]:
        entry = mbpp_entry_point(r)
        ref = code_data.mbpp_reference(r)
        rows.append(dict(dataset="mbpp", id=r["task_id"], gt=code_data.mbpp_ground_truth(r), good=fence(ref),
                         bad=fence(broken_function(ref, entry)) if entry else None))
    lc = json.loads((DATA / "code" / "rllm_leetcode_test.json").read_text())
    for i, r in enumerate(lc[:limit]):
        gt = code_data.leetcode_ground_truth(r)
        method = gt["entry_point"].split(".")[-1]
        ref = code_data.leetcode_reference(r)
        rows.append(dict(dataset="leetcode", id=i, gt=gt, good=fence(ref), bad=fence(broken_solution(ref, method))))
    return rows


def run_items(items: list, cfg: RewardConfig, desc: str) -> tuple[list, float]:
    results = []
    start = time.perf_counter()
    with tqdm(total=len(items), desc=desc, unit="item") as bar:
        for i in range(0, len(items), CHUNK):
            chunk = items[i:i + CHUNK]
            results += score_batch(chunk, config=cfg)
            bar.update(len(chunk))
    return results, time.perf_counter() - start


def bench_code(limit: int | None) -> list[str]:
    cfg = RewardConfig()
    rows = load_code(limit)
    score_batch([("math", "\\boxed{1}", "1")])  # start the pool outside the timing
    good_items = [("code", r["good"], r["gt"]) for r in rows]
    good, t_good = run_items(good_items, cfg, "reference solutions")
    bad_rows = [r for r in rows if r["bad"] is not None]
    bad, t_bad = run_items([("code", r["bad"], r["gt"]) for r in bad_rows], cfg, "broken solutions")
    lines = ["## Code", "", f"Default pool: {default_workers()} workers; default limits "
             f"({cfg.code_test_timeout_s:g}s per test, {cfg.code_total_timeout_s:g}s per program, "
             f"{cfg.code_memory_mb} MiB).", "",
             "| data set | references | pass | broken versions | fail | reasons of broken |", "|---|---|---|---|---|---|"]
    failures = []
    for ds in ("humaneval", "mbpp", "leetcode"):
        g = [(r, res) for r, res in zip(rows, good) if r["dataset"] == ds]
        b = [(r, res) for r, res in zip(bad_rows, bad) if r["dataset"] == ds]
        n_pass = sum(res.correct for _, res in g)
        n_fail = sum(not res.correct for _, res in b)
        reasons = collections.Counter(res.reason for _, res in b)
        lines.append(f"| {ds} | {len(g)} | {n_pass} | {len(b)} | {n_fail} | {dict(reasons)} |")
        failures += [f"- {ds} {r['id']}: reference failed: {res.reason} {res.detail[:200]}" for r, res in g if not res.correct]
        failures += [f"- {ds} {r['id']}: broken version passed" for r, res in b if res.correct]
    slow = [(r, res) for r, res in zip(rows, good) if res.reason == "timeout"]
    if slow:
        patient = cfg.replace(code_test_timeout_s=cfg.code_test_timeout_s * RETRY_FACTOR,
                              code_total_timeout_s=cfg.code_total_timeout_s * RETRY_FACTOR)
        retried = score_batch([("code", r["good"], r["gt"]) for r, _ in slow], config=patient)
        for (r, _), res in zip(slow, retried):
            failures.append(f"- {r['dataset']} {r['id']}: re-run with {RETRY_FACTOR}x the time limits: {res.reason} "
                            f"({res.detail[:120]})")
    n = len(good_items) + len(bad_rows)
    lines += ["", f"Throughput: {n} programs in {t_good + t_bad:.1f}s = **{n / (t_good + t_bad):.1f} programs/s** "
              f"(references {len(good_items) / t_good:.1f}/s, broken {len(bad_rows) / t_bad:.1f}/s)."]
    no_bad = [r["id"] for r in rows if r["bad"] is None]
    if no_bad:
        lines.append(f"MBPP rows without a recognisable entry point (no broken version): {no_bad}")
    lines += ["", "Mismatches:" if failures else "Mismatches: none.", *failures, ""]
    return lines + (bench_leetcode_nodes(cfg) if limit is None else [])


def bench_leetcode_nodes(cfg: RewardConfig) -> list[str]:
    """LeetCode train rows whose tests build linked lists or trees: the judge passes nodes across."""
    with gzip.open(DATA / "code" / "rllm_leetcode_train.json.gz", "rt") as fh:
        rows = json.load(fh)
    picked = []
    for i, r in enumerate(rows):
        source = r["tests"]["functional"] if isinstance(r["tests"], dict) else str(r["tests"])
        if any(k in source for k in ("list_node", "tree_node", ".next")):
            gt = code_data.leetcode_ground_truth(r)
            ref = code_data.leetcode_reference(r)
            picked.append((i, fence(ref), fence(broken_solution(ref, gt["entry_point"].split(".")[-1])), gt))
    good, _ = run_items([("code", g, gt) for _, g, _, gt in picked], cfg, "leetcode train (nodes) references")
    bad, _ = run_items([("code", b, gt) for _, _, b, gt in picked], cfg, "leetcode train (nodes) broken")
    lines = [f"LeetCode train rows with `list_node`/`tree_node` tests (not in the throughput above): "
             f"{len(picked)} references, **{sum(r.correct for r in good)} pass**; broken versions: "
             f"**{sum(not r.correct for r in bad)} fail**."]
    lines += [f"- train {i}: reference failed: {r.reason} {r.detail[:160]}" for (i, *_), r in zip(picked, good) if not r.correct]
    lines += [f"- train {i}: broken version passed (the perturbed method calls itself: perturbations cancel)"
              for (i, *_), r in zip(picked, bad) if r.correct]
    return lines + [""]


def bench_math() -> list[str]:
    cfg = RewardConfig()
    cases = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    score_batch([("math", "\\boxed{1}", "1")])
    items = [(c["kind"], c["response"], c["ground_truth"]) for c in cases]
    results, elapsed = run_items(items, cfg, "math table")
    ok = [res.correct == c["expected"] for c, res in zip(cases, results)]
    wrong = [f"- {c['id']}: expected {c['expected']}, got {res.reason} ({res.extracted!r})" for c, res, k in zip(cases, results, ok) if not k]
    grader = [json.loads(line) for line in (DATA / "eval" / "math_grader_cases.jsonl").read_text().splitlines()]
    core = [r for r in grader if r["core"]]
    g_items = [("math", r["pred"] if r["category"] == "boxed_in_response" else "\\boxed{" + r["pred"] + "}", r["gold"]) for r in core]
    g_results, g_elapsed = run_items(g_items, cfg, "grader core rows")
    agree = [bool(res.correct) == bool(r["expected_equal"]) for r, res in zip(core, g_results)]
    misses = [f"- {r['id']}: pred {r['pred'][:60]!r} gold {r['gold'][:40]!r} expected {r['expected_equal']}, got {res.reason}"
              for r, res, a in zip(core, g_results, agree) if not a]
    kinds = collections.Counter(c["kind"] for c in cases)
    return [
        "## Math", "",
        f"Table tests/data/math_reward_cases.jsonl: {len(cases)} cases ({dict(kinds)}), "
        f"**{sum(ok)}/{len(cases)} scored as expected**; {len(cases) / elapsed:.1f} responses/s "
        f"({default_workers()} workers).",
        *wrong, "",
        f"eval/math_grader_cases.jsonl core rows: **{sum(agree)}/{len(core)} agree** with the labels; "
        f"{len(core) / g_elapsed:.1f} responses/s (symbolic-heavy rows).",
        *misses, "",
    ]


def load_golds(per_set: int) -> dict[str, list]:
    """Ground truths of every shared math data set, as stored (a deterministic sample of big ones)."""
    def jsonl(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def spread(rows: list, n: int) -> list:
        step = max(1, len(rows) // n)
        return rows[::step][:n]

    e, t = DATA / "eval", DATA / "train"
    math_train = [r["answer"] for r in json.loads((t / "math_train_rllm.json").read_text()) if r["answer"]]
    return {
        "aime2024 (int)": [r["answer"] for r in jsonl(e / "aime2024.jsonl")],
        "aime2025 (int)": [r["answer"] for r in jsonl(e / "aime2025.jsonl")],
        "amc23 (float)": [r["answer"] for r in jsonl(e / "amc23_test.jsonl")],
        "math500 (LaTeX)": [r["answer"] for r in jsonl(e / "math500_test.jsonl")],
        "gsm8k test (#### N)": spread([r["answer"] for r in jsonl(e / "gsm8k_test.jsonl")], per_set),
        "gsm8k train (#### N)": spread([r["answer"] for r in jsonl(t / "gsm8k_train.jsonl")], per_set),
        "math_train_rllm (LaTeX)": spread(math_train, per_set),
        "deepmath (LaTeX)": spread([r["ground_truth"] for r in jsonl(t / "deepmath_5k_roll.jsonl")], per_set),
    }


def bench_golds(per_set: int) -> list[str]:
    """Every stored answer style is usable: its own answer, boxed, is correct; its neighbour's is not."""
    from rewards.math_reward import EQUAL, normalize_gold, parse_aime_int, verify_inline

    cfg = RewardConfig()
    lines = ["## Ground-truth styles of the shared math data", "",
             "Each stored answer, normalised, must be understood: math-verify (called directly, no text "
             "short-cut) finds it equal to itself (AIME: it is an integer in range). A response "
             "`\\boxed{answer}` made from the next row's answer must score wrong unless the two are equal "
             "(full `score` pipeline).", "",
             "| data set | rows | understood | neighbour's answer wrong (of differing) |", "|---|---|---|---|"]
    problems = []
    for name, golds in load_golds(per_set).items():
        kind = "aime" if name.startswith("aime") else "math"
        norm = [normalize_gold(g) for g in golds]
        understood = []
        for g, n in tqdm(list(zip(golds, norm)), desc=name + " own", unit="item"):
            if kind == "aime":
                understood.append(parse_aime_int(g) is not None)
            else:
                understood.append(n is not None and verify_inline(n, n, cfg.math_timeout_s)[0] == EQUAL)
        nxt = [("\\boxed{" + str(norm[(i + 1) % len(norm)]) + "}", g) for i, g in enumerate(golds)]
        res_nxt, _ = run_items([(kind, r, g) for r, g in nxt], cfg, name + " neighbour")
        differing = [(i, res) for i, res in enumerate(res_nxt) if norm[i] != norm[(i + 1) % len(norm)]]
        lines.append(f"| {name} | {len(golds)} | {sum(understood)} | "
                     f"{sum(not r.correct for _, r in differing)} / {len(differing)} |")
        problems += [f"- {name}: stored answer {str(golds[i])[-60:]!r} not understood" for i, ok in enumerate(understood) if not ok]
        problems += [f"- {name}: neighbour {norm[(i + 1) % len(norm)]!r} accepted for {norm[i]!r}"
                     for i, r in differing if r.correct]
    return lines + ["", *(problems or ["No exceptions."]), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("code", "math", "golds"), default=None)
    ap.add_argument("--golds-per-set", type=int, default=300, help="rows sampled from each large math set")
    ap.add_argument("--limit", type=int, default=None, help="rows per code data set (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write the results file")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    out = ["# Reward benchmarks", "",
           f"Machine: {os.cpu_count()} CPUs, shared (1-minute load average {load:.1f} at the start); "
           "command: `nice -n 5 .venv/bin/python benchmarks/bench_rewards.py`", ""]
    if args.only in (None, "code"):
        out += bench_code(args.limit)
    if args.only in (None, "math"):
        out += bench_math()
    if args.only in (None, "golds"):
        out += bench_golds(args.golds_per_set)
    out.append(f"1-minute load average at the end: {os.getloadavg()[0]:.1f}.")
    text = "\n".join(out)
    print(text)
    if not args.no_write and args.only is None and args.limit is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
