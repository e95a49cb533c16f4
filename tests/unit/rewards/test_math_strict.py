"""The strict math layer: each mechanism of issue 19 (wrong answers paid, fair ones refused, a crash).

`tests/data/math_strict_cases.jsonl` holds one row per case: the strict verdict and reason
expected, and (`before`) the verdict of the earlier grader (`math_strict=False`) where the case
shows a mechanism: True for a wrong answer it paid, False for a fair answer it refused.
Scoring runs in this process (as in a pool worker) to keep the file fast.
"""

from __future__ import annotations

import ast
import json
from fractions import Fraction
from pathlib import Path

import pytest

from rewards import RewardConfig, score, scoring
from rewards.math_answer import answer_candidates, gsm8k_lines, strip_hidden, top_level_boxes
from rewards.math_numbers import BigNumber, int_text, merge_thousands, numbers_equal, parse_number
from rewards.math_reward import EQUAL, NOT_EQUAL, normalize_gold, verify_inline
from rewards.math_strict import normalize_unicode, parse_aime_strict, prepare

ROOT = Path(__file__).resolve().parents[3]
CASES = ROOT / "tests" / "data" / "math_strict_cases.jsonl"
ALL = ("boxed", "answer_line", "gsm8k")
STRICT = RewardConfig()
LEGACY = RewardConfig(math_strict=False)
HUGE = "7" * 5000  # past Python's 4300-digit int-string limit
HUGE_INT = 7 * (10 ** 5000 - 1) // 9  # the same number (HUGE_INT itself would raise)


@pytest.fixture(autouse=True)
def _inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "IN_WORKER", True)


def _cases() -> list[dict]:
    return [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the case table
def test_strict_case_table_covers_every_mechanism() -> None:
    cases = _cases()
    assert {c["mechanism"] for c in cases} == {"crash", "extract", "aime", "parse", "fair"}
    paid_before = [c for c in cases if c["before"] is True and not c["expected"]]
    refused_before = [c for c in cases if c["before"] is False and c["expected"]]
    assert len(paid_before) >= 35 and len(refused_before) >= 18


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_strict_case(case: dict) -> None:
    r = scoring.score_with_config(case["kind"], case["response"], case["ground_truth"], STRICT)
    assert (r.correct, r.reason) == (case["expected"], case["reason"]), (case["note"], r.detail)
    assert r.score == (1.0 if case["expected"] else 0.0)
    if case["before"] is not None:  # the mechanism: the earlier grader got this one wrong
        before = scoring.score_with_config(case["kind"], case["response"], case["ground_truth"], LEGACY)
        assert before.correct == case["before"], case["note"]


# ----------------------------------------------------------------------------- 1. no crash
def test_huge_numbers_never_raise() -> None:
    assert normalize_gold(HUGE_INT) == HUGE
    assert int_text(-(10 ** 5000)) == "-1" + "0" * 5000
    assert score("math", "\\boxed{" + HUGE + "}", HUGE_INT).correct
    assert not score("math", "\\boxed{" + HUGE + "8}", HUGE_INT).correct
    assert score("math", "\\boxed{" + HUGE + ".000}", HUGE).correct  # compared as digit strings
    r = score("aime", "\\boxed{" + HUGE + "}", 77)
    assert (r.correct, r.reason) == (False, "wrong_answer")
    assert score("aime", "\\boxed{77}", HUGE).reason == "bad_ground_truth"
    assert score("math", "\\boxed{" + HUGE + "+1}", "5").reason == "wrong_answer"


def test_unexpected_exception_is_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from rewards import math_reward

    def boom(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(math_reward, "judge", boom)
    r = score("math", "\\boxed{1}", "1")
    assert (r.correct, r.reason) == (False, "internal_error") and "KeyError" in r.detail


# ----------------------------------------------------------------------------- 2. extraction
def test_strip_hidden() -> None:
    assert strip_hidden("a <!-- \\boxed{5} --> b") == "a  b"
    assert strip_hidden("a <!-- never closed \\boxed{5}") == "a "
    assert strip_hidden("x % \\boxed{5}\ny") == "x \ny"
    assert strip_hidden("50% of 10 is \\boxed{5}") == "50% of 10 is \\boxed{5}"  # a percent sign
    assert strip_hidden("\\boxed{28 %}") == "\\boxed{28 %}"  # inside a brace group: not a comment
    assert strip_hidden("so \\phantom{\\boxed{5}} \\boxed{3}") == "so  \\boxed{3}"


def test_top_level_boxes_and_gsm8k_lines() -> None:
    boxes = top_level_boxes("\\boxed{3 \\boxed{5}} and \\fbox{7} and \\boxed{} and \\boxed{9")
    assert [b.text for b in boxes] == ["3 \\boxed{5}", "7"]  # nested stays inside; empty/unclosed skipped
    assert [c.text for c in gsm8k_lines("#### 18 dollars\n#### Verification\n x #### 3\n  #### $1,234")] == ["18 dollars", "1234"]


def test_candidates_and_retractions() -> None:
    texts = lambda r: [c.text for c in answer_candidates(r, ALL)]  # noqa: E731
    assert texts("\\boxed{3} or \\boxed{5}") == ["3", "5"]
    assert texts("\\boxed{3}. Actually, \\boxed{5}") == ["5"]
    assert texts("**Answer:**\nWe have that the sum is even, so\n\\boxed{4}") == ["4"]  # prose answer line is a heading
    assert answer_candidates("<think>\\boxed{1}", ALL) is None


# ----------------------------------------------------------------------------- 3/5. numbers
@pytest.mark.parametrize(
    "text, value",
    [("1\\,000", Fraction(1000)), ("1{,}000", Fraction(1000)), ("7,425,000", Fraction(7425000)),
     ("11,\\! 111", Fraction(11111)), ("0.\\overline{3}", Fraction(1, 3)), ("0.1\\overline{6}", Fraction(1, 6)),
     ("2\\frac{1}{2}", Fraction(5, 2)), ("2 1/2", Fraction(5, 2)), ("-\\frac{3}{4}", Fraction(-3, 4)),
     ("\\frac12", Fraction(1, 2)), ("1.5e-7", Fraction(3, 20_000_000)), ("5 x 10^3", Fraction(5000)),
     ("10^{-7}", Fraction(1, 10 ** 7)), ("1,2,3", None), ("4, 5", None), ("12 - 7", None), ("x", None)],
)
def test_parse_number(text: str, value: Fraction | None) -> None:
    assert parse_number(text) == value


def test_numbers_equal_relative_not_absolute() -> None:
    third = Fraction(1, 3)
    assert numbers_equal(third, Fraction("0.333333"), 6, 1e-6)  # the gold rounded to 6 places
    assert not numbers_equal(third, Fraction("0.333333"), 6, 0.0)  # exact only
    assert not numbers_equal(third, Fraction("0.3333"), 4, 1e-6)  # rounded, but 1e-4 off
    assert not numbers_equal(Fraction(1, 10 ** 7), Fraction(0), 1, 1e-6)  # 0.0 for 1e-7
    assert not numbers_equal(Fraction(123456789), Fraction("123456789.1"), 1, 1e-6)
    big = parse_number(HUGE)
    assert isinstance(big, BigNumber) and numbers_equal(big, parse_number(HUGE + ".0"), 1, 1e-6)
    assert not numbers_equal(Fraction(5), big, None, 1e-6)
    assert merge_thousands("1\\,000 and 4, 5 and 1,2,3 and 1 000 000") == "1000 and 4, 5 and 1,2,3 and 1000000"


def test_verify_inline_holds_math_verify_to_the_relative_tolerance() -> None:
    assert verify_inline("0.0000001", "0.0", 5.0)[0] == EQUAL  # math-verify alone rounds to 6 decimals
    assert verify_inline("0.0000001", "0.0", 5.0, 1e-6)[0] == NOT_EQUAL
    assert verify_inline("\\sqrt{2}", "1.414214", 5.0, 1e-6)[0] == EQUAL
    assert verify_inline("\\sqrt{2}", "\\sqrt{2}", 5.0, 0.0)[0] == EQUAL


# ----------------------------------------------------------------------------- AIME
@pytest.mark.parametrize(
    "text, expected",
    [("033", (33, "")), ("1\\,000", (1000, "")), ("4, 5", (None, "multiple")), ("1,2,3", (None, "multiple")),
     ("1 2 3", (None, "not an integer")), ("30^\\circ", (30, "")), ("x = 42", (42, "")), ("\\text{12}", (12, "")),
     ("12.0", (12, "")), ("12.5", (None, "not an integer")), ("\\neq 5", (None, "negated")),
     (HUGE, (None, "out of range")), ("0" * 5000 + "7", (7, "")), (5, (5, "")), (True, (None, "not an integer"))],
)
def test_parse_aime_strict(text, expected) -> None:
    assert parse_aime_strict(text, 4) == expected


# ----------------------------------------------------------------------------- 4. parse
def test_normalize_unicode() -> None:
    assert normalize_unicode("5\u200b0") == "50"
    assert normalize_unicode("2³") == "2^{3}"
    assert normalize_unicode("3½") == "3\\frac{1}{2}"
    assert normalize_unicode("\u22125") == "-5"


def test_prepare_splits_value_unit_and_words() -> None:
    p = prepare("864 \\mbox{ inches}^2")
    assert (p.value, p.unit) == ("864", "inch^2")
    assert prepare("864\\text{ square inches}").unit == "inch^2"
    assert prepare("500 \\text{ g}").unit == "gram"
    p = prepare("28 \\text{ percent}")
    assert (p.value, p.percent, p.unit) == ("28", True, None)
    assert prepare("\\frac{270}{7}^\\circ").unit == "degree"
    assert prepare("5 \\text{ or more}").hedges == {"word:or"}
    assert prepare("\\text{approximately } 5").qualifiers == {"approximately"}
    assert prepare("\\text{(C)}").text_answer == "c"
    assert prepare("x = 2 = 2").parts == ["x", "2", "2"]


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "option, response, gold",
    [
        ("math_allow_multiple_answers", "\\boxed{3} or \\boxed{5}", "5"),
        ("math_ignore_units", "\\boxed{500 \\text{ kg}}", "500 \\text{ g}"),
        ("math_allow_equations", "\\boxed{4 = 5}", "5"),
        ("math_ignore_text", "\\boxed{\\text{about } 5}", "5"),
    ],
)
def test_each_relaxation_is_a_named_option(option: str, response: str, gold: str) -> None:
    assert not score("math", response, gold).correct
    assert score("math", response, gold, **{option: True}).correct


def test_rel_tol_option() -> None:
    assert score("math", "\\boxed{0.333333}", "\\frac13").correct
    assert not score("math", "\\boxed{0.333333}", "\\frac13", math_rel_tol=0.0).correct
    with pytest.raises(ValueError, match="reward.math_rel_tol"):
        RewardConfig(math_rel_tol=1.5)
    with pytest.raises(ValueError, match="reward.math_strict must be a bool"):
        RewardConfig(math_strict="yes")


def test_legacy_mode_is_the_earlier_grader() -> None:
    # the earlier grader takes the answer written last and trusts math-verify
    assert score("math", "\\boxed{3} or \\boxed{5}", "5", math_strict=False).correct
    assert score("math", "\\boxed{4 = 5}", "5", math_strict=False).correct


# ----------------------------------------------------------------------------- structure
def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_import_circle_and_no_cispo() -> None:
    rewards_dir = ROOT / "rewards"
    assert "rewards.scoring" not in _imports(rewards_dir / "batch.py")
    for path in rewards_dir.glob("*.py"):
        assert not any(m == "cispo" or m.startswith(("cispo.", "rollout")) for m in _imports(path)), path.name
