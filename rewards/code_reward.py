"""Code rewards: extract the program, run it in the sandbox, turn test outcomes into a reward.

Ground truth forms (a dict, or the same dict as a JSON string):
- `{"asserts": ["assert f(1) == 2", ...], "setup": "import math"}` (setup optional): each assert
  is one test (MBPP). `setup` runs on both sides: in the sandbox before the program, and in the
  trusted judge before the tests.
- `{"check": "def check(candidate): ...", "entry_point": "f", "setup": ...}`: one test
  (HumanEval, LeetCode). Asserts and check may add `test_setup`: code run only on the trusted
  side, after `setup` (HumanEval: the prompt's helpers, so `poly` is the data set's).
  `entry_point` may be `name`, `Solution.method` or `Solution().method`
  (then the candidate is the method bound to a fresh instance); when the check source calls
  `check(...)` itself at top level, that call is the test.
- `{"io": [{"input": "...", "output": "..."}, ...]}`: stdin/stdout cases (Codeforces); the
  expected outputs never enter the sandbox, they are compared here.

Asserts and check tests never enter the sandbox either: the trusted judge (`rewards.judge`) runs
them in this process against proxies of the program, so every comparison is made here on plain
values (docs/rewards.md, "Code: threat model").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from rewards import sandbox
from rewards import types as R
from rewards.judge import TrustedTest, compile_trusted
from rewards.config import RewardConfig
from rewards.extract import extract_code
from rewards.types import RewardResult

# harness statuses -> reasons (first failing test decides)
_STATUS_REASON = {
    "fail": R.WRONG_ANSWER,
    "timeout": R.TIMEOUT,
    "memory": R.MEMORY,
    "output_limit": R.OUTPUT_LIMIT,
    "error": R.RUNTIME_ERROR,
    "no_report": R.RUNTIME_ERROR,
    "leftover": R.RUNTIME_ERROR,
    "skipped": R.WRONG_ANSWER,
}


class BadGroundTruth(ValueError):
    """A code ground truth that matches none of the three forms."""


@dataclass(frozen=True)
class CodeTests:
    """Parsed ground truth: what goes into the sandbox (`payload`) and what stays out: the
    expected outputs (`io`) or the tests the trusted judge runs (`trusted`, asserts and check)."""

    payload: dict[str, Any]
    outputs: tuple[str, ...] = ()
    trusted: tuple[TrustedTest, ...] = ()
    test_setup: str = ""  # trusted side only, after `setup`

    @property
    def count(self) -> int:
        if self.payload["form"] == "io":
            return len(self.payload["inputs"])
        return len(self.trusted)


def _trusted(source: str, what: str) -> None:
    """Tests and setup must compile here, where they run: else the ground truth is bad."""
    try:
        compile_trusted(source, what)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        raise BadGroundTruth(f"{what}: {type(e).__name__}: {e}") from None


def _str_field(gt: dict, key: str, *, required: bool) -> str:
    value = gt.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadGroundTruth(f"ground_truth[{key!r}] must be a non-empty string, got {value!r:.80}")
    return value


def parse_ground_truth(ground_truth: Any) -> CodeTests:
    """Validate a code ground truth and split it into sandbox payload and hidden outputs."""
    gt = ground_truth
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except ValueError as e:
            raise BadGroundTruth(f"ground_truth string is not JSON: {e}") from e
    if not isinstance(gt, dict):
        raise BadGroundTruth(f"ground_truth must be a dict with 'asserts', 'check' or 'io', got {type(gt).__name__}")
    forms = [k for k in ("asserts", "check", "io") if k in gt]
    if len(forms) != 1:
        raise BadGroundTruth(f"ground_truth must have exactly one of 'asserts', 'check', 'io'; has {sorted(gt)}")
    setup = _str_field(gt, "setup", required=False)
    test_setup = _str_field(gt, "test_setup", required=False)
    form = forms[0]
    if test_setup:
        if form == "io":
            raise BadGroundTruth("ground_truth['test_setup'] applies to 'asserts' and 'check' only")
        _trusted(test_setup, "test_setup")
    if form == "asserts":
        asserts = gt["asserts"]
        if not isinstance(asserts, (list, tuple)) or not asserts or not all(isinstance(a, str) and a.strip() for a in asserts):
            raise BadGroundTruth("ground_truth['asserts'] must be a non-empty list of non-empty strings")
        if setup:
            _trusted(setup, "setup")
        for i, src in enumerate(asserts):
            _trusted(src, f"asserts[{i}]")
        return CodeTests({"form": "calls", "setup": setup}, trusted=tuple(TrustedTest(a) for a in asserts), test_setup=test_setup)
    if form == "check":
        check = _str_field(gt, "check", required=True)
        entry_point = gt.get("entry_point")
        if entry_point is not None and (not isinstance(entry_point, str) or not entry_point.strip()):
            raise BadGroundTruth(f"ground_truth['entry_point'] must be a non-empty string, got {entry_point!r:.80}")
        if setup:
            _trusted(setup, "setup")
        _trusted(check, "check")
        return CodeTests({"form": "calls", "setup": setup}, trusted=(TrustedTest(check, entry_point, is_check=True),),
                         test_setup=test_setup)
    cases = gt["io"]
    if not isinstance(cases, (list, tuple)) or not cases:
        raise BadGroundTruth("ground_truth['io'] must be a non-empty list of {'input', 'output'} cases")
    inputs, outputs = [], []
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("input"), str) or not isinstance(case.get("output"), str):
            raise BadGroundTruth(f"ground_truth['io'][{i}] must be a dict with string 'input' and 'output'")
        inputs.append(case["input"])
        outputs.append(case["output"])
    return CodeTests({"form": "io", "inputs": inputs, "setup": setup}, tuple(outputs))


def _token_equal(actual: str, expected: str, tol: float) -> bool:
    if actual == expected:
        return True
    if tol <= 0 or not any(c in expected for c in ".eE"):
        return False
    try:
        a, e = float(actual), float(expected)
    except ValueError:
        return False
    if not (math.isfinite(a) and math.isfinite(e)):
        return False
    return abs(a - e) <= tol * max(1.0, abs(e))


def outputs_match(actual: str, expected: str, tol: float) -> bool:
    """Judge stdout: same lines of whitespace-separated tokens; decimals within `tol` (rel/abs)."""
    a_lines = [line.split() for line in actual.strip().splitlines()]
    e_lines = [line.split() for line in expected.strip().splitlines()]
    a_lines = [t for t in a_lines if t]
    e_lines = [t for t in e_lines if t]
    if len(a_lines) != len(e_lines):
        return False
    for a_tok, e_tok in zip(a_lines, e_lines):
        if len(a_tok) != len(e_tok):
            return False
        if not all(_token_equal(a, e, tol) for a, e in zip(a_tok, e_tok)):
            return False
    return True


def _value(cfg: RewardConfig, fraction: float, extracted: bool) -> float:
    if cfg.code_partial_credit:
        value = cfg.wrong_reward + (cfg.correct_reward - cfg.wrong_reward) * fraction
    else:
        value = cfg.correct_reward if fraction == 1.0 else cfg.wrong_reward
    return float(value + (cfg.format_reward if extracted else 0.0))


def score_code(response: Any, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """Score a code response against its tests in the sandbox."""
    try:
        tests = parse_ground_truth(ground_truth)
    except BadGroundTruth as e:
        return RewardResult(cfg.wrong_reward, False, None, R.BAD_GROUND_TRUTH, str(e))
    program = extract_code(response, cfg.code_extraction, think=cfg.strip_think)
    if program is None:
        return RewardResult(cfg.wrong_reward, False, None, R.NO_ANSWER, "no code block found")
    plan = None
    if tests.trusted:
        setup = "\n".join(part for part in (tests.payload.get("setup"), tests.test_setup) if part)
        plan = sandbox.TrustedPlan(tests.trusted, setup, not cfg.code_partial_credit)
    report = sandbox.run_program(program, tests.payload, cfg, plan)
    return judge(report, tests, program, cfg)


def judge(report: sandbox.SandboxReport, tests: CodeTests, program: str, cfg: RewardConfig) -> RewardResult:
    """Turn the harness's per-test outcomes into a reward."""
    wrong = _value(cfg, 0.0, True)
    if report.bad_tests:
        return RewardResult(cfg.wrong_reward, False, program, R.BAD_GROUND_TRUTH, report.bad_tests)
    if report.compile_error:
        return RewardResult(wrong, False, program, R.COMPILE_ERROR, report.compile_error)
    if report.timed_out:
        return RewardResult(wrong, False, program, R.TIMEOUT, f"whole program exceeded {cfg.code_total_timeout_s:g}s")
    if report.harness_error or len(report.tests) != tests.count:
        detail = report.harness_error or f"harness returned {len(report.tests)} results for {tests.count} tests"
        return RewardResult(wrong, False, program, R.SANDBOX_ERROR, detail)
    passed = 0
    first_failure: tuple[int, str, str] | None = None
    for i, outcome in enumerate(report.tests):
        status = outcome.get("status")
        if status == "ran":
            ok = outputs_match(outcome.get("stdout", ""), tests.outputs[i], cfg.code_io_float_tolerance)
            status = "pass" if ok else "fail"
            detail = "" if ok else "wrong output"
        else:
            detail = outcome.get("detail", "")
        if status == "pass":
            passed += 1
        elif first_failure is None:
            first_failure = (i, status, detail)
    fraction = passed / tests.count
    value = _value(cfg, fraction, True)
    if first_failure is None:
        return RewardResult(value, True, program, R.CORRECT, f"{passed}/{tests.count} tests passed")
    i, status, detail = first_failure
    reason = _STATUS_REASON.get(status, R.SANDBOX_ERROR)
    detail = f"{passed}/{tests.count} tests passed; test {i}: {status} {detail}".strip()
    return RewardResult(value, False, program, reason, detail)
