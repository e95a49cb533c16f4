"""Plain numbers in answers, read exactly (no float, no rounding) and compared without exceptions.

Why: math-verify rounds numbers to 6 decimals (so `0.0` equals any answer below ~5e-7), cannot
read `1\\,000` or `0.\\overline{3}`, and Python's `int()` refuses strings of more than
`sys.get_int_max_str_digits()` digits. Numbers are read here into `Fraction`s; a plain decimal
too long for `int()` is kept as its normalised digit string and compared as text.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from fractions import Fraction

# thousands groups: 1,000  1{,}000  1\,000  1\ 000  1 000 (only groups of exactly three digits)
_THOUSANDS_SEP = r"(?:,\\[!,] ?|,|\{,\}|\\,|\\ |\\;|\\:|~| )"
_GROUPED = re.compile(r"(?<![\d.])(\d{1,3})((?:" + _THOUSANDS_SEP + r"\d{3})+)(?![\d])")
_SEP = re.compile(_THOUSANDS_SEP)
_DECIMAL = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")
_REPEATING = re.compile(r"([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}")
_SCI_E = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d+)")
_SCI_TIMES = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:\\times|\\cdot|x|\*)10\^(?:\{([+-]?\d+)\}|([+-]?\d))")
_POW10 = re.compile(r"([+-]?)10\^(?:\{([+-]?\d+)\}|([+-]?\d))")
_FRAC = re.compile(r"([+-]?)(\d*)\\frac(?:\{([+-]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")
_SLASH = re.compile(r"([+-]?)(?:(\d+) )?(\d+)/(\d+)")


@dataclass(frozen=True)
class BigNumber:
    """A plain decimal too long for `int()`: sign, integer digits (no leading zeros), fraction digits."""

    negative: bool
    integer: str
    fraction: str


Number = Fraction | BigNumber


def digit_limit() -> int:
    """Longest digit string `int()` accepts here (0 means unlimited)."""
    getter = getattr(sys, "get_int_max_str_digits", None)
    return getter() if getter else 0


def _too_long(digits: int) -> bool:
    limit = digit_limit()
    return bool(limit) and digits > limit


def int_text(value: int) -> str:
    """`str(value)` for any int, also beyond the int-string conversion limit."""
    try:
        return str(value)
    except ValueError:
        import decimal

        return str(decimal.Decimal(value))  # the decimal module has no such limit


def merge_thousands(text: str) -> str:
    """`1\\,000` / `1{,}000` / `1,000` / `1 000` -> `1000`; `1,2,3` and `4, 5` are left alone (a list)."""
    return _GROUPED.sub(lambda m: m.group(1) + _SEP.sub("", m.group(2)), text)


def _plain(text: str) -> Number | None:
    m = _DECIMAL.fullmatch(text)
    if not m or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if _too_long(len(whole) + len(frac)):
        whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
        return BigNumber(sign == "-" and (whole != "0" or bool(frac)), whole, frac)
    return Fraction(f"{sign}{whole or '0'}.{frac or '0'}")


def _scaled(mantissa: str, exponent: str) -> Fraction | None:
    exp = int(exponent)
    if _too_long(abs(exp)) or _too_long(len(mantissa)):
        return None
    return Fraction(mantissa) * Fraction(10) ** exp


def _int(text: str) -> int | None:
    return None if _too_long(len(text)) else int(text)


def parse_number(text: str) -> Number | None:
    """The exact value of a plain number written in `text`, or None when it is not one.

    Reads integers and decimals (thousands groups allowed), `1.5e-7`, `1.5 \\times 10^{-7}`,
    `10^{-7}`, `\\frac{a}{b}` (also `\\frac12`, `\\dfrac`), `a/b`, mixed numbers (`2\\frac{1}{2}`,
    `2 1/2`) and repeating decimals (`0.\\overline{3}`, `0.1\\overline{6}`).
    """
    t = text.strip().replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    t = t.replace("\\left", "").replace("\\right", "")
    while len(t) >= 2 and t[0] == "{" and t[-1] == "}":
        t = t[1:-1].strip()
    t = merge_thousands(t)
    t = re.sub(r"\s+", " ", t)
    mixed_slash = _SLASH.fullmatch(t)
    t = t.replace(" ", "")
    try:
        value = _plain(t)
        if value is not None:
            return value
        if m := _REPEATING.fullmatch(t):
            sign, whole, fixed, rep = m.groups()
            if _too_long(len(whole) + len(fixed) + len(rep)):
                return None
            base = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
            value = base + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
            return -value if sign == "-" else value
        if m := _SCI_E.fullmatch(t):
            return _scaled(m.group(1), m.group(2))
        if m := _SCI_TIMES.fullmatch(t):
            return _scaled(m.group(1), m.group(2) or m.group(3))
        if m := _POW10.fullmatch(t):
            value = _scaled("1", m.group(2) or m.group(3))
            return -value if value is not None and m.group(1) == "-" else value
        if m := _FRAC.fullmatch(t):
            sign, whole, num = m.group(1), m.group(2), m.group(3) or m.group(4)
            den = m.group(5) or m.group(6)
            return _ratio(sign, whole, num, den)
        if mixed_slash:
            sign, whole, num, den = mixed_slash.groups()
            return _ratio(sign, whole, num, den)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _ratio(sign: str, whole: str | None, num: str, den: str) -> Fraction | None:
    n, d = _int(num.lstrip("+-") or "0"), _int(den)
    w = _int(whole) if whole else 0
    if n is None or d is None or w is None or d == 0:
        return None
    if whole and num.startswith(("-", "+")):
        return None  # 2\frac{-1}{2} is not a mixed number
    value = (w + Fraction(n, d)) if whole else Fraction(n, d) * (-1 if num.startswith("-") else 1)
    return -value if sign == "-" else value


def decimals_written(text: str) -> int | None:
    """How many digits after the point a plain decimal answer shows (None: not a plain decimal)."""
    t = merge_thousands(text.strip()).replace(" ", "")
    m = _DECIMAL.fullmatch(t)
    if not m or m.group(3) is None:
        return None
    return len(m.group(3))


def numbers_equal(gold: Number, pred: Number, pred_decimals: int | None, rel_tol: float) -> bool:
    """Exact equality, or (for a decimal answer) the gold rounded to the answer's decimals.

    A decimal answer of k places is accepted for a gold it does not equal exactly only when it is
    the gold rounded to k places *and* within `rel_tol` of it relatively: `0.333333` for 1/3 is
    accepted, `0.0` for 1e-7 and `123456789.1` for 123456789 are not. `rel_tol = 0`: exact only.
    """
    if isinstance(gold, BigNumber) or isinstance(pred, BigNumber):
        return _big(gold) == _big(pred)
    if gold == pred:
        return True
    if pred_decimals is None or rel_tol <= 0 or gold == 0:
        return False
    scale = Fraction(10) ** pred_decimals
    rounded = Fraction(round(gold * scale), 1) / scale  # round half to even is fine: ties are exact
    return rounded == pred and abs(pred - gold) <= Fraction(repr(float(rel_tol))) * abs(gold)


def _big(value: Number) -> tuple[bool, str, str] | None:
    """A number as (negative, integer digits, fraction digits), when it is a terminating decimal."""
    if isinstance(value, BigNumber):
        return value.negative, value.integer, value.fraction
    d, twos, fives = value.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return None  # 1/3 has no finite decimal form: never equal to a long decimal
    places = max(twos, fives)
    scaled = abs(value) * 10 ** places
    digits = int_text(scaled.numerator).rjust(places + 1, "0")
    whole, frac = digits[: len(digits) - places] if places else digits, digits[len(digits) - places:] if places else ""
    return value < 0, whole.lstrip("0") or "0", frac.rstrip("0")
