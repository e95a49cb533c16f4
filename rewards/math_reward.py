"""Math and AIME rewards: answer extraction plus `math-verify` equivalence.

math-verify can hang on pathological input and its own timeout relies on SIGALRM (main thread
only). Here the equivalence check is a separate step, `verify_inline`, run inside a pool worker
process (`rewards.batch`) under a soft SIGALRM deadline, with the pool killing the worker if
even that does not fire: callers never call math-verify in their own process.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Callable, Iterator

from rewards import types as R
from rewards.config import RewardConfig
from rewards.extract import _clean_inline, extract_math_answer, last_boxed, normalize_number_text
from rewards.types import RewardResult

# verdicts of one equivalence check
EQUAL = "equal"
NOT_EQUAL = "not_equal"
BAD_GOLD = "bad_gold"
TIMED_OUT = "timeout"

VerifyFn = Callable[[str, str, float], tuple[str, str]]

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_AIME_WRAPPER = re.compile(r"^\\(?:text|mathrm|textbf|mathbf|mbox)\s*\{(.*)\}$", re.DOTALL)
_AIME_JUNK = re.compile(r"\\[,!;: ]|\{,\}|[\s,$]")


class MathTimeout(BaseException):
    """Raised by the soft deadline; a BaseException so math-verify's `except Exception` can't eat it."""


def normalize_gold(ground_truth: Any) -> str | None:
    """A math ground truth as one LaTeX answer string, or None when it is unusable.

    Accepts ints, floats (`27.0` -> `27`), LaTeX strings with or without `$`, a `\\boxed{}`
    answer, or a whole GSM8K solution ending in `#### N`.
    """
    if isinstance(ground_truth, bool) or ground_truth is None:
        return None
    if isinstance(ground_truth, int):
        return str(ground_truth)
    if isinstance(ground_truth, float):
        if not math.isfinite(ground_truth):
            return None
        return str(int(ground_truth)) if ground_truth.is_integer() else repr(ground_truth)
    if not isinstance(ground_truth, str):
        return None
    text = ground_truth.strip()
    if "####" in text:
        text = normalize_number_text(text.rsplit("####", 1)[1])
    boxed = last_boxed(text)
    if boxed is not None:
        text = boxed[1]
    text = _clean_inline(text)
    return text or None


def _as_fraction(text: str) -> Fraction | None:
    text = normalize_number_text(text)
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def obviously_equal(gold: str, pred: str) -> bool:
    """Cheap sufficient test for equality (identical text, or equal plain decimal numbers)."""
    if "".join(gold.split()) == "".join(pred.split()):
        return True
    g, p = _as_fraction(gold), _as_fraction(pred)
    return g is not None and p is not None and g == p


@contextmanager
def soft_deadline(seconds: float) -> Iterator[None]:
    """Raise MathTimeout after `seconds` (only on the main thread; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _fire(signum: int, frame: Any) -> None:
        raise MathTimeout()

    previous = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@functools.lru_cache(maxsize=1)
def _math_verify() -> Any:
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
    return math_verify


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> list:
    mv = _math_verify()
    return mv.parse("$" + gold + "$", parsing_timeout=None)


def _parse_pred(pred: str) -> list:
    """Parse an extracted answer: as a boxed LaTeX answer first, then as inline math, then plain."""
    mv = _math_verify()
    first: list | None = None
    for text in ("\\boxed{" + pred + "}", "$" + pred + "$", pred):
        parsed = mv.parse(text, parsing_timeout=None)
        if first is None:
            first = parsed
        if any(not isinstance(p, str) for p in parsed):
            return parsed
    return first or []


def verify_inline(gold: str, pred: str, timeout_s: float) -> tuple[str, str]:
    """math-verify equivalence in this process, under a soft deadline. Returns (verdict, detail)."""
    mv = _math_verify()
    try:
        with soft_deadline(timeout_s):
            gold_parsed = _parse_gold(gold)
            if not gold_parsed:
                return BAD_GOLD, f"math-verify could not parse the ground truth {gold[:80]!r}"
            pred_parsed = _parse_pred(pred)
            if not pred_parsed:
                return NOT_EQUAL, "answer could not be parsed"
            equal = mv.verify(gold_parsed, pred_parsed, timeout_seconds=None)
    except MathTimeout:
        return TIMED_OUT, f"math-verify exceeded {timeout_s:g}s"
    except RecursionError:
        return NOT_EQUAL, "math-verify hit the recursion limit"
    return (EQUAL if equal else NOT_EQUAL), ""


def warm_up() -> None:
    """Import math-verify and run one check, so the first real check is not charged for it."""
    verify_inline("1", "1", 60.0)


def _result(cfg: RewardConfig, correct: bool, extracted: str | None, reason: str, detail: str = "") -> RewardResult:
    value = cfg.correct_reward if correct else cfg.wrong_reward
    if extracted is not None:
        value += cfg.format_reward
    return RewardResult(float(value), bool(correct), extracted, reason, detail)


def score_math(response: Any, ground_truth: Any, cfg: RewardConfig, *, verify: VerifyFn) -> RewardResult:
    """Score a math response; `verify` runs the (possibly slow) equivalence check."""
    extracted = extract_math_answer(response, cfg.math_formats, think=cfg.strip_think)
    gold = normalize_gold(ground_truth)
    if gold is None:
        return R.RewardResult(cfg.wrong_reward, False, extracted, R.BAD_GROUND_TRUTH, f"unusable ground truth {ground_truth!r:.80}")
    if extracted is None:
        return _result(cfg, False, None, R.NO_ANSWER)
    if obviously_equal(gold, extracted):
        return _result(cfg, True, extracted, R.CORRECT)
    verdict, detail = verify(gold, extracted, cfg.math_timeout_s)
    if verdict == EQUAL:
        return _result(cfg, True, extracted, R.CORRECT)
    if verdict == BAD_GOLD:
        return R.RewardResult(cfg.wrong_reward, False, extracted, R.BAD_GROUND_TRUTH, detail)
    if verdict == TIMED_OUT:
        return _result(cfg, False, extracted, R.TIMEOUT, detail)
    return _result(cfg, False, extracted, R.WRONG_ANSWER, detail)


def parse_aime_int(text: Any) -> int | None:
    """An AIME-style integer from text: leading zeros, `\\,`, commas, `\\text{}` tolerated."""
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, int):
        return text
    if isinstance(text, float):
        return int(text) if math.isfinite(text) and text.is_integer() else None
    if not isinstance(text, str):
        return None
    value = _clean_inline(text)
    for _ in range(3):
        m = _AIME_WRAPPER.match(value)
        if not m:
            break
        value = m.group(1).strip()
    value = _AIME_JUNK.sub("", value).lstrip("+")
    if value.endswith("."):
        value = value[:-1]
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"\d+\.0*", value):
        return int(value.split(".")[0])
    return None


def score_aime(response: Any, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """Score an AIME response: integer answers in [aime_min, aime_max], compared exactly."""
    extracted = extract_math_answer(response, cfg.math_formats, think=cfg.strip_think)
    gold_text = ground_truth
    if isinstance(ground_truth, str) and "####" in ground_truth:
        gold_text = ground_truth.rsplit("####", 1)[1]
    elif isinstance(ground_truth, str) and last_boxed(ground_truth):
        gold_text = last_boxed(ground_truth)[1]
    gold = parse_aime_int(gold_text)
    if gold is None or not cfg.aime_min <= gold <= cfg.aime_max:
        return R.RewardResult(
            cfg.wrong_reward, False, extracted, R.BAD_GROUND_TRUTH,
            f"AIME ground truth must be an integer in [{cfg.aime_min}, {cfg.aime_max}], got {ground_truth!r:.80}",
        )
    if extracted is None:
        return _result(cfg, False, None, R.NO_ANSWER)
    pred = parse_aime_int(extracted)
    if pred is None:
        return _result(cfg, False, extracted, R.WRONG_ANSWER, "answer is not an integer")
    if not cfg.aime_min <= pred <= cfg.aime_max:
        return _result(cfg, False, extracted, R.WRONG_ANSWER, f"answer {pred} outside [{cfg.aime_min}, {cfg.aime_max}]")
    return _result(cfg, pred == gold, extracted, R.CORRECT if pred == gold else R.WRONG_ANSWER)
