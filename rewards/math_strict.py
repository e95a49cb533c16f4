"""Strict checks around math-verify: what its parse would drop or misread is decided here first.

Why: math-verify removes `\\text{...}` (so `500 kg` equals `500 g`), keeps only the last part of
`\\lor` / `\\\\` / `cases`, reads `\\neq 5` as 5, reduces `4 = 5` to its right-hand side and
drops `%` and some Unicode. `prepare` splits an answer into its value and what surrounds it
(unit, percent sign, words, hedges, negations, an equation's left side); `judge` compares gold and
answer on those parts, reads plain numbers exactly (`rewards.math_numbers`) and hands only the
remaining value to math-verify. Every rule is relative to the gold: what the gold itself
contains (an `or`, a `\\pm`, a list) is not held against the answer. Docs: docs/rewards-math.md.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

from rewards.extract import _brace_partners, _clean_inline
from rewards.math_numbers import BigNumber, decimals_written, digit_limit, numbers_equal, parse_number

# --------------------------------------------------------------------------- Unicode
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"), None)
_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-"))
_SUPERSCRIPT_RUN = re.compile("[" + "".join(_SUPERSCRIPTS) + "]+")
_VULGAR = {"½": (1, 2), "⅓": (1, 3), "⅔": (2, 3), "¼": (1, 4), "¾": (3, 4), "⅕": (1, 5), "⅖": (2, 5),
           "⅗": (3, 5), "⅘": (4, 5), "⅙": (1, 6), "⅚": (5, 6), "⅐": (1, 7), "⅛": (1, 8), "⅜": (3, 8),
           "⅝": (5, 8), "⅞": (7, 8), "⅑": (1, 9), "⅒": (1, 10)}
_SYMBOLS = {"\u2212": "-", "\u2013": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "√": "\\sqrt",
            "π": "\\pi ", "∞": "\\infty ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\neq ", "¬": "\\neg ",
            "°": "^\\circ ", "±": "\\pm ", "∓": "\\mp ", "∨": "\\lor ", "∧": "\\land "}


def normalize_unicode(text: str) -> str:
    """What a reader sees, in LaTeX: zero-width characters removed, `2³` -> `2^{3}`, `½` -> `\\frac{1}{2}`."""
    text = text.translate(_ZERO_WIDTH)
    if text.isascii():
        return text
    text = _SUPERSCRIPT_RUN.sub(lambda m: "^{" + "".join(_SUPERSCRIPTS[c] for c in m.group(0)) + "}", text)
    text = "".join(
        "\\frac{%d}{%d}" % _VULGAR[c] if c in _VULGAR else _SYMBOLS.get(c, c) for c in text
    )
    return unicodedata.normalize("NFKC", text)


# --------------------------------------------------------------------------- vocabulary
HEDGE_WORDS = frozenset({"or", "and", "either", "maybe", "possibly", "perhaps", "alternatively"})
NEGATION_WORDS = frozenset({"not", "no", "except", "neither", "nor", "never", "cannot", "isnt", "none"})
QUALIFIER_WORDS = frozenset({"approximately", "approx", "about", "around", "roughly", "nearly", "almost", "least",
                             "most", "more", "less", "than", "over", "under", "between", "up", "to", "within"})
CLAUSE_WORDS = frozenset({"is", "are", "was", "were", "be", "been", "if", "but", "unless", "when", "because", "since",
                          "assuming", "wrong", "incorrect", "false", "true", "guess", "sure", "probably", "likely",
                          "think", "i", "we", "it", "this", "that", "answer", "only", "for", "with", "where"})
MAX_PEELS = 8  # trailing pieces (spacing, %, degrees, unit texts) peeled off one answer
MAX_UNIT_WORDS = 3  # "miles per hour"; a longer trailing text is a clause, not a unit
FILLER_WORDS = frozenset({"the", "final", "answer", "is", "thus", "so", "therefore", "hence", "we", "get", "have",
                          "result", "equals", "a", "an", "total", "of"})
UNIT_ALIASES = {
    "cm": "centimeter", "mm": "millimeter", "m": "meter", "km": "kilometer", "metre": "meter",
    "g": "gram", "kg": "kilogram", "mg": "milligram", "s": "second", "sec": "second", "min": "minute",
    "h": "hour", "hr": "hour", "in": "inch", "ft": "foot", "feet": "foot", "yd": "yard", "mi": "mile",
    "lb": "pound", "lbs": "pound", "oz": "ounce", "l": "liter", "litre": "liter", "ml": "milliliter",
    "deg": "degree", "circ": "degree", "usd": "dollar", "mph": "mile per hour", "sq": "square",
    "units": "unit",
}
_QUALIFIER_CMDS = re.compile(r"\\(?:approx|sim|simeq|lesssim|gtrsim)(?![A-Za-z])")
_NEGATION_CMDS = re.compile(r"\\(?:neq|ne|neg|lnot|not|notin|nmid)(?![A-Za-z])|!=")
_HEDGE_CMDS = {"lor": re.compile(r"\\(?:lor|vee)(?![A-Za-z])"), "pm": re.compile(r"\\(?:pm|mp)(?![A-Za-z])"),
               "cases": re.compile(r"\\begin\s*\{cases\}")}
PERCENT_WORDS = frozenset({"percent", "pct", "percentage", "per cent"})
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LINE_BREAK = re.compile(r"\\\\")
_MATRIX = re.compile(r"\\begin\s*\{(?:[pbvBV]?matrix|smallmatrix)\}")
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textit|textbf|textsf|mbox|mathrm|operatorname)\s*"
_TEXT_GROUP = re.compile(_TEXT_CMD + r"\{([^{}]*)\}")
_TEXT_END = re.compile(_TEXT_CMD + r"\{([^{}]*)\}(?:\s*\^\s*(?:\{\s*(\d)\s*\}|(\d)))?$")
_TEXT_START = re.compile(r"^" + _TEXT_CMD + r"\{([^{}]*)\}")
_TRAIL_SPACE_ONE = re.compile(r"(?:\\[,;:! ]|\\q?quad|~|\.)$")
_PERCENT_END = re.compile(r"\\?%$")
_DEGREE_END = re.compile(r"(?:\^\s*(?:\{\s*\\circ\s*\}|\\circ)|\\degree)$")
_PLAIN_WORDS_END = re.compile(r"(?<=[\d}])\s+((?:[A-Za-z]{2,}\s+){0,3}[A-Za-z]{2,})$")
_STARTS_NUMBER = re.compile(r"[-+]?\.?\d")
_CHOICE = re.compile(r"\(?([a-z])\)")
_ALTERNATIVE = re.compile(r"\\text\s*\{\s*(?:or|and)\s*\}|\\(?:lor|vee)(?![A-Za-z])|(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])|;")
_LEAD_FILLER = re.compile(r"(?:(?:the|final|answer|is|thus|so|therefore|hence)\b[\s:,]*)+", re.IGNORECASE)
_DOLLAR = re.compile(r"\\\$|\$")
_WORD = re.compile(r"[A-Za-z]+")
_PLAIN_HEDGE = re.compile(r"(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])")
NAME = r"(?:[A-Za-z]|\\[A-Za-z]+|\\text\s*\{[A-Za-z ]+\})(?:_(?:\{[^{}]*\}|[A-Za-z0-9]))?'*(?:\([^()]*\))?"
_LHS_NAME = re.compile(NAME + r"(?:\s*(?:(?:[-+*/]|\\cdot|\\times)\s*)?" + NAME + r")*")
MAX_NAME_LEN = 64  # a left-hand side longer than this is not "a variable"


@dataclass
class Prepared:
    """An answer split into its value and what surrounds it (see module docstring)."""

    value: str
    unit: str | None = None
    percent: bool = False
    words: frozenset[str] = frozenset()
    hedges: frozenset[str] = frozenset()
    negations: frozenset[str] = frozenset()
    qualifiers: frozenset[str] = frozenset()
    text_answer: str | None = None
    parts: list[str] = field(default_factory=list)  # the value split at top-level `=`


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text.replace("'", ""))]


def _strip_trailing_space(text: str) -> str:
    """`text` without trailing spaces, TeX spacing (`\\,`, `\\quad`, `~`) and full stops (linear)."""
    while True:
        text = text.rstrip()
        m = _TRAIL_SPACE_ONE.search(text[-8:])
        if not m:
            return text
        text = text[: len(text) - (len(text[-8:]) - m.start())]


def _is_unit_text(content: str) -> bool:
    """Text that reads as a unit: at most MAX_UNIT_WORDS words, no clause words (`is wrong`, `if n > 2`).

    One letter counts only when it is a unit abbreviation (`g`, `m`, `s`; not `i`, `e`). Hedge,
    negation and qualifier words are peeled like units and judged afterwards.
    """
    words = _words(content)
    letters = "".join(words)
    if not letters or len(words) > MAX_UNIT_WORDS or set(words) & CLAUSE_WORDS:
        return False
    return len(letters) >= 2 or letters in UNIT_ALIASES


def normalize_unit(words: list[str], power: str | None) -> str:
    """`square inches` / `\\text{in}^2` -> `inch^2`: aliases, plurals and powers made comparable."""
    out: list[str] = []
    exponent = power
    for w in words:
        w = UNIT_ALIASES.get(w, w)
        if w in ("square", "cubic"):
            exponent = "2" if w == "square" else "3"
            continue
        if len(w) > 4 and w.endswith(("ches", "shes", "xes", "sses")):
            w = w[:-2]
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(UNIT_ALIASES.get(w, w))
    unit = " ".join(out)
    return unit + ("^" + exponent if exponent and exponent != "1" else "")


def text_key(text: str) -> str:
    """A word answer's comparison key: `\\text{(C)}` and `C` give `c`."""
    text = _TEXT_GROUP.sub(lambda m: m.group(1), normalize_unicode(text))
    return "".join(ch for ch in text.lower() if ch.isalnum())


def split_top_level(text: str, sep: str) -> list[str]:
    """`text` split at `sep` characters outside (), [], {} (and not part of `<=`, `>=`, `!=`, `==`)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            if sep == "=" and ((i > 0 and text[i - 1] in "<>!=:") or (i + 1 < len(text) and text[i + 1] == "=")):
                continue
            if sep == "," and i > 0 and text[i - 1] == "\\":
                continue  # \, is TeX spacing, not a comma
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def prepare(text: str) -> Prepared:
    """Split one answer (or gold) into value, unit, percent sign, words, hedges, negations."""
    t = _clean_inline(normalize_unicode(text)).replace("\\displaystyle", "").replace("\\dfrac", "\\frac")
    t = t.replace("\\tfrac", "\\frac")
    t = _unwrap_boxes(t)  # a box inside the answer is part of it: \boxed{3 \text{ or } \boxed{5}} is "3 or 5"
    t = _DOLLAR.sub("", t).strip()
    if (m := _TEXT_GROUP.fullmatch(t)) and _STARTS_NUMBER.match(m.group(1).strip()):
        t = m.group(1).strip()  # \text{5 cm} is 5 cm
    unit_words: list[str] = []
    power: str | None = None
    percent = False
    for _ in range(MAX_PEELS):  # peel what follows the value: spacing, %, degrees, \text units, plain unit words
        t = _strip_trailing_space(t)
        if m := _PERCENT_END.search(t):
            percent, t = True, t[:m.start()]
            continue
        if m := _DEGREE_END.search(t):
            unit_words, t = ["degree"] + unit_words, t[:m.start()]
            continue
        if (m := _TEXT_END.search(t)) and _is_unit_text(m.group(1)):
            head = t[:m.start()].strip()
            if not head or not _strip_trailing_space(head):
                break  # the whole answer is words: a word answer, not a unit
            unit_words = _words(m.group(1)) + unit_words
            power = m.group(2) or m.group(3) or power
            t = head
            continue
        if (m := _PLAIN_WORDS_END.search(t)) and parse_number(t[:m.start()]) is not None:
            words = _words(m.group(1))
            if _is_unit_text(m.group(1)) and all(len(w) >= 3 or w in UNIT_ALIASES for w in words):
                unit_words, t = words + unit_words, t[:m.start()]
                continue
        break
    words: set[str] = set()
    if m := _TEXT_START.match(t):
        lead = _words(m.group(1))
        if lead and set(lead) <= FILLER_WORDS and t[m.end():].strip():
            t = t[m.end():].strip()
    if (m := _LEAD_FILLER.match(t)) and m.end() < len(t) and re.match(r"[-+\d\\($.]", t[m.end():]):
        t = t[m.end():]  # "The answer is 204"
    parts = split_top_level(t, "=")
    lhs_end = len(parts[0]) if len(parts) >= 2 and _TEXT_GROUP.fullmatch(parts[0]) else -1  # \text{Area} = 5
    for g in _TEXT_GROUP.finditer(t):
        if g.end() > lhs_end and sum(map(len, _WORD.findall(g.group(1)))) >= 2:
            words.update(_words(g.group(1)))
    plain = _TEXT_GROUP.sub(" ", t)
    stripped = _TEXT_GROUP.sub("", t)
    text_answer = None
    has_letters = any(_WORD.search(g.group(1)) for g in _TEXT_GROUP.finditer(t))
    if has_letters and not re.sub(r"[\s(){}\[\].,:;\\]", "", stripped):
        text_answer = text_key(t)
    hedges = {name for name, rx in _HEDGE_CMDS.items() if rx.search(t)}
    if _LINE_BREAK.search(t) and not _MATRIX.search(t):
        hedges.add("line_break")
    all_words = words | set(unit_words)
    hedges |= {"word:" + w for w in all_words & HEDGE_WORDS}
    hedges |= {"word:" + w.lower() for w in _PLAIN_HEDGE.findall(plain)}
    if len(split_top_level(t, ",")) > 1 and parse_number(t) is None:  # 1,000 is a number, 4, 5 a list
        hedges.add("list")
    if len(split_top_level(t, ";")) > 1:
        hedges.add("list;")
    negations = {m.group(0) for m in _NEGATION_CMDS.finditer(t)} | (all_words & NEGATION_WORDS)
    qualifiers = (all_words & QUALIFIER_WORDS) | {m.group(0) for m in _QUALIFIER_CMDS.finditer(t)}
    if unit_words and unit_words[-1] in PERCENT_WORDS:
        percent, unit_words = True, unit_words[:-1]
    unit_words = [w for w in unit_words if w not in HEDGE_WORDS | NEGATION_WORDS | QUALIFIER_WORDS]
    unit = normalize_unit(unit_words, power) if unit_words else None
    return Prepared(
        value=t.strip(), unit=unit, percent=percent, words=frozenset(words - HEDGE_WORDS - NEGATION_WORDS - QUALIFIER_WORDS),
        hedges=frozenset(hedges), negations=frozenset(negations), qualifiers=frozenset(qualifiers),
        text_answer=text_answer, parts=parts,
    )


def _unwrap_boxes(text: str) -> str:
    """`\\boxed{X}` -> `X` everywhere in `text` (linear: one pass over the braces, one over the text)."""
    if not _BOX_OPEN.search(text):
        return text
    partners = _brace_partners(text)
    keep = [True] * len(text)
    for m in _BOX_OPEN.finditer(text):
        close = partners.get(m.end() - 1)
        if close is not None:
            keep[m.start():m.end()] = [False] * (m.end() - m.start())
            keep[close] = False
    return "".join(ch for ch, k in zip(text, keep) if k).strip()


def is_list(text: str) -> bool:
    """Whether an answer is a top-level list (`3, 4`; not `(3, 4)`, not `1,000`)."""
    value = _clean_inline(normalize_unicode(text))
    return len(split_top_level(value, ",")) > 1 and parse_number(value) is None


def is_variable(lhs: str) -> bool:
    """`x`, `a_1`, `f(3)`, `m+n`, `\\theta`: a name (or names), not a number or an expression of numbers."""
    lhs = lhs.strip()
    return len(lhs) <= MAX_NAME_LEN and bool(_LHS_NAME.fullmatch(lhs))


# --------------------------------------------------------------------------- verdicts
EQUAL, NOT_EQUAL, MULTIPLE = "equal", "not_equal", "multiple"

VerifyFn = Callable[..., tuple[str, str]]


@dataclass(frozen=True)
class StrictOptions:
    """The relaxations of the strict layer (RewardConfig fields of the same names)."""

    ignore_units: bool = False
    allow_equations: bool = False
    ignore_text: bool = False
    rel_tol: float = 1e-6


def _gold_value(g: Prepared) -> tuple[str, str | None, bool]:
    """(value, variable, is a general equation) of a prepared gold."""
    if len(g.parts) >= 2:
        if is_variable(g.parts[0]):
            return g.parts[-1], "".join(g.parts[0].split()), False
        return g.value, None, True
    return g.value, None, False


def judge(gold: str, pred: str, opts: StrictOptions, verify: VerifyFn, timeout_s: float, depth: int = 0) -> tuple[str, str]:
    """(verdict, detail) for one answer against one gold: EQUAL, NOT_EQUAL, MULTIPLE or verify's own verdict."""
    g, p = prepare(gold), prepare(pred)
    if g.text_answer is not None:
        key = text_key(pred)
        same = key == g.text_answer or p.text_answer == g.text_answer
        plain_pred = _clean_inline(_TEXT_GROUP.sub(lambda t: t.group(1), pred)).lower()
        if not same and len(g.text_answer) == 1 and (m := _CHOICE.match(plain_pred)):
            same = m.group(1) == g.text_answer  # "(C) 12" for the choice (C)
        return (EQUAL, "") if same else (NOT_EQUAL, "word answer differs from the gold's")
    extra = p.hedges - g.hedges
    if extra and "," in gold and extra <= {"word:or", "word:and", "lor", "list;"} and depth == 0:
        # a list gold: "x = 1 or x = 2" is the list "1, 2"
        parts = split_top_level(_ALTERNATIVE.sub(",", p.value), ",")
        values = [q.split("=")[-1].strip() if len(split_top_level(q, "=")) == 2 and is_variable(q.split("=")[0]) else q
                  for q in parts if q]
        return judge(gold, ", ".join(values), opts, verify, timeout_s, depth=1)
    if extra - ({"list"} if "," in gold else set()):
        return MULTIPLE, f"the answer hedges or lists several values ({', '.join(sorted(extra))})"
    if extra := p.negations - g.negations:
        return NOT_EQUAL, f"the answer is negated ({', '.join(sorted(extra))})"
    if not opts.ignore_text:
        if extra := p.qualifiers - g.qualifiers:
            return NOT_EQUAL, f"the answer is qualified ({', '.join(sorted(extra))})"
        if extra := p.words - g.words - FILLER_WORDS:
            return NOT_EQUAL, f"the answer has words the gold does not ({', '.join(sorted(extra))[:80]})"
    if not opts.ignore_units and p.unit and g.unit and p.unit != g.unit:
        return NOT_EQUAL, f"unit {p.unit!r} differs from the gold's {g.unit!r}"
    gv, g_var, g_equation = _gold_value(g)
    pv = _TEXT_GROUP.sub(" ", p.value).strip() if opts.ignore_text else p.value
    if len(p.parts) >= 2 and not g_equation:
        if is_variable(p.parts[0]):
            pv = p.parts[-1]
            if g_var and "".join(p.parts[0].split()) != g_var:
                return NOT_EQUAL, f"the answer is for {p.parts[0]!r}, the gold for {g_var!r}"
            pn_last = parse_number(pv)
            for middle in p.parts[1:-1]:
                mn = parse_number(middle)
                if mn is not None and pn_last is not None and not numbers_equal(pn_last, mn, None, 0.0):
                    return NOT_EQUAL, "the answer's chain of equalities is false"
        elif not opts.allow_equations:
            return NOT_EQUAL, "an equation is accepted only as `variable = value`"
    gn, pn = parse_number(gv), parse_number(pv)
    if gn is not None and pn is not None:
        decimals = decimals_written(pv)
        ok = numbers_equal(gn, pn, decimals, opts.rel_tol)
        if p.percent != g.percent and not isinstance(gn, BigNumber) and not isinstance(pn, BigNumber):
            if p.percent:  # 25% for 0.25; 10% for a gold 10 written without its sign, but 0.5% is not 0.5
                ok = pn / 100 == gn or (ok and abs(gn) >= 1)
            else:  # gold 50%: 50 (sign left out) or 0.5
                ok = ok or numbers_equal(gn / 100, pn, decimals, opts.rel_tol)
        return (EQUAL, "") if ok else (NOT_EQUAL, "numbers differ")
    if not gv or not pv:
        return NOT_EQUAL, "empty value"
    if _too_many_digits(gv) or _too_many_digits(pv):
        same = "".join(gv.split()) == "".join(pv.split())
        return (EQUAL, "") if same else (NOT_EQUAL, "numbers too long for math-verify differ")
    if "".join(gv.split()) == "".join(pv.split()):
        return EQUAL, ""
    return verify(gv, pv, timeout_s, opts.rel_tol)


_DIGIT_RUN = re.compile(r"\d+")


def _too_many_digits(text: str) -> bool:
    limit = digit_limit()
    return bool(limit) and any(len(m.group(0)) > limit for m in _DIGIT_RUN.finditer(text))


# --------------------------------------------------------------------------- AIME
_AIME_WRAPPER = re.compile(r"^\\(?:text|mathrm|textbf|mathbf|mbox|boxed)\s*\{(.*)\}$", re.DOTALL)
_AIME_GROUPED = re.compile(r"\d{1,3}(?:(?:,|\{,\}|\\,|\\ | )\d{3})+")
_AIME_SPACES = re.compile(r"\\[,!;: ]|~|\s")


def parse_aime_strict(text: object, max_digits: int) -> tuple[int | None, str]:
    """(integer, "") or (None, why) for an AIME answer; never merges a list (`4, 5`) into one number.

    Tolerates leading zeros, thousands groups, `\\text{}`/`\\mathbf{}` wrappers, `$`, a trailing
    full stop or `.0`, degrees (`30^\\circ`) and `x = 42`. A hedge (`4, 5`, `3 or 5`, `\\pm`) is
    reported as "multiple"; a number longer than `max_digits` (after leading zeros) is out of
    range without ever being converted.
    """
    if isinstance(text, bool) or text is None:
        return None, "not an integer"
    if isinstance(text, int):
        return text, ""
    if isinstance(text, float):
        return (int(text), "") if text == text and abs(text) != float("inf") and text.is_integer() else (None, "not an integer")
    if not isinstance(text, str):
        return None, "not an integer"
    p = prepare(text)
    if p.hedges:
        return None, "multiple"
    if p.negations:
        return None, "negated"
    value = p.value
    if len(p.parts) == 2 and is_variable(p.parts[0]):
        value = p.parts[1]
    for _ in range(3):
        m = _AIME_WRAPPER.match(value)
        if not m:
            break
        value = m.group(1).strip()
    value = value.strip().lstrip("+")
    if _AIME_GROUPED.fullmatch(value):
        value = re.sub(r"\D", "", value)  # 1,000 or 1\,000; "1 2 3" and "4, 5" are not groups
    m = re.fullmatch(r"(\d+)(?:\.0*)?", value)
    if not m:
        return None, "not an integer"
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > max_digits:
        return None, "out of range"
    return int(digits), ""
