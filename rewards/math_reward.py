"""Math and AIME rewards: answer extraction plus `math-verify` equivalence.

With `math_strict` (the default) the answer is chosen by `rewards.math_answer` (one visible
final answer) and judged by `rewards.math_strict` (units, words, equations, exact numbers)
before math-verify sees what is left; the earlier grader is kept as the non-strict path.

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
from rewards.math_answer import answer_candidates, answer_key, hedged_around
from rewards.math_numbers import digit_limit, int_text
from rewards.math_strict import EQUAL as S_EQUAL, MULTIPLE, StrictOptions, is_list, judge, parse_aime_strict
from rewards.types import RewardResult

# verdicts of one equivalence check
EQUAL = "equal"
NOT_EQUAL = "not_equal"
BAD_GOLD = "bad_gold"
TIMED_OUT = "timeout"

VerifyFn = Callable[..., tuple[str, str]]  # (gold, pred, timeout_s[, rel_tol]) -> (verdict, detail)

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
        return int_text(ground_truth)  # beyond Python's int-string limit too
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
    limit = digit_limit()
    if (limit and len(text) > limit) or not _PLAIN_NUMBER.fullmatch(text):
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


def _numerically_close(gold_parsed: list, pred_parsed: list, rel_tol: float) -> bool:
    """math-verify's "equal" held to a relative tolerance when both sides are plain numbers.

    math-verify rounds numbers to 6 decimals, so `0` equals `10^{-7}`; here both are evaluated
    to 30 digits and must agree within `rel_tol` relatively (a zero gold: the answer must be 0).
    Anything that is not a finite number (sets, equations, symbols) keeps math-verify's verdict.
    """
    import sympy

    g = next((x for x in gold_parsed if not isinstance(x, str)), None)
    p = next((x for x in pred_parsed if not isinstance(x, str)), None)
    if not (getattr(g, "is_number", False) and getattr(p, "is_number", False)):
        return True
    try:
        gv, pv = sympy.N(g, 30), sympy.N(p, 30)
        if not (gv.is_finite and pv.is_finite):
            return True
        if gv == 0:
            return bool(abs(pv) == 0)
        return bool(abs(pv - gv) <= sympy.Float(rel_tol, 30) * abs(gv))
    except Exception:  # noqa: BLE001 - an evaluation failure keeps math-verify's verdict
        return True


def verify_inline(gold: str, pred: str, timeout_s: float, rel_tol: float | None = None) -> tuple[str, str]:
    """math-verify equivalence in this process, under a soft deadline. Returns (verdict, detail).

    rel_tol: when given, an "equal" between two numbers must also hold within this relative
    tolerance (`_numerically_close`); None keeps math-verify's verdict as is.
    """
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
            if equal and rel_tol is not None and not _numerically_close(gold_parsed, pred_parsed, rel_tol):
                return NOT_EQUAL, f"numbers differ by more than the relative tolerance {rel_tol:g}"
    except MathTimeout:
        return TIMED_OUT, f"math-verify exceeded {timeout_s:g}s"
    except RecursionError:
        return NOT_EQUAL, "math-verify hit the recursion limit"
    except Exception as e:  # noqa: BLE001 - e.g. sympy on a number past the int-string limit
        return NOT_EQUAL, f"math-verify failed: {type(e).__name__}"
    return (EQUAL if equal else NOT_EQUAL), ""


def warm_up() -> None:
    """Import math-verify and run one check, so the first real check is not charged for it."""
    verify_inline("1", "1", 60.0)


def _result(cfg: RewardConfig, correct: bool, extracted: str | None, reason: str, detail: str = "") -> RewardResult:
    value = cfg.correct_reward if correct else cfg.wrong_reward
    if extracted is not None:
        value += cfg.format_reward
    return RewardResult(float(value), bool(correct), extracted, reason, detail)


def _show(value: Any) -> str:
    """A short repr for messages; an int past the int-string limit is described, not printed."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * digit_limit() > 0:
        return f"<int of about {int(value.bit_length() * 0.30103)} digits>"
    return repr(value)[:80]


def _guarded(fn: Callable[..., RewardResult], cfg: RewardConfig, *args: Any, **kwargs: Any) -> RewardResult:
    """Run a scorer; an unexpected exception becomes an `internal_error` result, never a raise."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the API promises never to raise on model output
        return RewardResult(cfg.wrong_reward, False, None, R.INTERNAL_ERROR, f"{type(e).__name__}: {e}"[:300])


def strict_options(cfg: RewardConfig) -> StrictOptions:
    """The strict layer's relaxations, from the reward config."""
    return StrictOptions(cfg.math_ignore_units, cfg.math_allow_equations, cfg.math_ignore_text, cfg.math_rel_tol)


def score_math(response: Any, ground_truth: Any, cfg: RewardConfig, *, verify: VerifyFn) -> RewardResult:
    """Score a math response; `verify` runs the (possibly slow) equivalence check. Never raises."""
    scorer = _score_math_strict if cfg.math_strict else _score_math_legacy
    return _guarded(scorer, cfg, response, ground_truth, cfg, verify=verify)


_VERDICT_REASON = {S_EQUAL: R.CORRECT, MULTIPLE: R.MULTIPLE_ANSWERS, TIMED_OUT: R.TIMEOUT}


def _final_candidates(response: Any, cfg: RewardConfig) -> tuple[list[Any], RewardResult | None]:
    """The answers a response writes, or the result that refuses it: no answer at all, or a final answer
    that is one side of an "or" (both strict scorers start here)."""
    candidates = answer_candidates(response, cfg.math_formats, think=cfg.strip_think) if isinstance(response, str) else None
    if not candidates:
        return [], _result(cfg, False, None, R.NO_ANSWER)
    if not cfg.math_allow_multiple_answers and hedged_around(response, cfg.math_formats, think=cfg.strip_think):
        return candidates, _result(cfg, False, candidates[-1].text, R.MULTIPLE_ANSWERS,
                                   "the final answer is one side of an 'or'")
    return candidates, None


def _score_math_strict(response: Any, ground_truth: Any, cfg: RewardConfig, *, verify: VerifyFn) -> RewardResult:
    gold = normalize_gold(ground_truth)
    if gold is None:
        return R.RewardResult(cfg.wrong_reward, False, None, R.BAD_GROUND_TRUTH, f"unusable ground truth {_show(ground_truth)}")
    candidates, refused = _final_candidates(response, cfg)
    if refused is not None:
        return refused
    extracted = candidates[-1].text
    opts = strict_options(cfg)
    distinct: list[str] = []
    keys: set[str] = set()
    for c in reversed(candidates):
        key = answer_key(c.text)
        if key not in keys:
            keys.add(key)
            distinct.append(c.text)
    to_judge = distinct if len(distinct) > 1 and not cfg.math_allow_multiple_answers else distinct[:1]
    if len(to_judge) > cfg.math_max_answers_checked:
        return _result(cfg, False, extracted, R.MULTIPLE_ANSWERS, f"{len(to_judge)} differing final answers")
    if len(to_judge) > 1 and is_list(gold):  # a multi-part gold: "(a) \boxed{3} (b) \boxed{4}" for "3, 4"
        joined = ", ".join(c.text for c in candidates if c.fmt == "boxed")
        if judge(gold, joined, opts, verify, cfg.math_timeout_s)[0] == S_EQUAL:
            return _result(cfg, True, joined, R.CORRECT)
    for text in to_judge:
        verdict, detail = judge(gold, text, opts, verify, cfg.math_timeout_s)
        if verdict == BAD_GOLD:
            return R.RewardResult(cfg.wrong_reward, False, extracted, R.BAD_GROUND_TRUTH, detail)
        if verdict != S_EQUAL:
            if len(to_judge) > 1 and verdict != TIMED_OUT:
                return _result(cfg, False, extracted, R.MULTIPLE_ANSWERS,
                               f"{len(to_judge)} differing final answers; {text[:60]!r}: {detail or verdict}")
            return _result(cfg, False, extracted, _VERDICT_REASON.get(verdict, R.WRONG_ANSWER), detail)
    return _result(cfg, True, extracted, R.CORRECT)


def _score_math_legacy(response: Any, ground_truth: Any, cfg: RewardConfig, *, verify: VerifyFn) -> RewardResult:
    """The grader before the strict layer (`math_strict=False`): the answer written last, math-verify's verdict."""
    extracted = extract_math_answer(response, cfg.math_formats, think=cfg.strip_think)
    gold = normalize_gold(ground_truth)
    if gold is None:
        return R.RewardResult(cfg.wrong_reward, False, extracted, R.BAD_GROUND_TRUTH,
                              f"unusable ground truth {_show(ground_truth)}")
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
    limit = digit_limit()
    if limit and len(value) > limit:
        return None  # int() would raise; no AIME answer is that long
    if value.endswith("."):
        value = value[:-1]
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"\d+\.0*", value):
        return int(value.split(".")[0])
    return None


def score_aime(response: Any, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """Score an AIME response: integer answers in [aime_min, aime_max], compared exactly. Never raises."""
    return _guarded(_score_aime_strict if cfg.math_strict else _score_aime_legacy, cfg, response, ground_truth, cfg)


def _aime_gold_text(ground_truth: Any) -> Any:
    if isinstance(ground_truth, str) and "####" in ground_truth:
        return ground_truth.rsplit("####", 1)[1]
    if isinstance(ground_truth, str) and last_boxed(ground_truth):
        return last_boxed(ground_truth)[1]
    return ground_truth


def _score_aime_strict(response: Any, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    digits = len(int_text(cfg.aime_max))
    gold, _ = parse_aime_strict(_aime_gold_text(ground_truth), digits)
    if gold is None or not cfg.aime_min <= gold <= cfg.aime_max:
        return R.RewardResult(
            cfg.wrong_reward, False, None, R.BAD_GROUND_TRUTH,
            f"AIME ground truth must be an integer in [{cfg.aime_min}, {cfg.aime_max}], got {_show(ground_truth)}",
        )
    candidates, refused = _final_candidates(response, cfg)
    if refused is not None:
        return refused
    extracted = candidates[-1].text
    parsed = [parse_aime_strict(c.text, digits) for c in candidates]
    pred, why = parsed[-1]
    if not cfg.math_allow_multiple_answers and len({answer_key(c.text) for c in candidates}) > 1:
        if len({v for v, _ in parsed}) > 1 or pred is None:
            return _result(cfg, False, extracted, R.MULTIPLE_ANSWERS, f"{len(candidates)} differing final answers")
    if pred is None:
        reason = R.MULTIPLE_ANSWERS if why == "multiple" else R.WRONG_ANSWER
        return _result(cfg, False, extracted, reason, f"answer is {why}")
    if not cfg.aime_min <= pred <= cfg.aime_max:
        return _result(cfg, False, extracted, R.WRONG_ANSWER, f"answer {pred} outside [{cfg.aime_min}, {cfg.aime_max}]")
    return _result(cfg, pred == gold, extracted, R.CORRECT if pred == gold else R.WRONG_ANSWER)


def _score_aime_legacy(response: Any, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """The AIME grader before the strict layer (`math_strict=False`)."""
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
            f"AIME ground truth must be an integer in [{cfg.aime_min}, {cfg.aime_max}], got {_show(ground_truth)}",
        )
    if extracted is None:
        return _result(cfg, False, None, R.NO_ANSWER)
    pred = parse_aime_int(extracted)
    if pred is None:
        return _result(cfg, False, extracted, R.WRONG_ANSWER, "answer is not an integer")
    if not cfg.aime_min <= pred <= cfg.aime_max:
        return _result(cfg, False, extracted, R.WRONG_ANSWER, f"answer {pred} outside [{cfg.aime_min}, {cfg.aime_max}]")
    return _result(cfg, pred == gold, extracted, R.CORRECT if pred == gold else R.WRONG_ANSWER)
