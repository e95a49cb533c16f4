"""Which text of a response is its final answer (strict mode): one answer, at the end, visible.

Why: taking "the box that starts last" grades a position, not an answer. A second box after an
"or", a box nested in the final one, or a box inside an HTML/TeX comment or `\\phantom` would be
what gets graded. Here hidden text is removed first (a reader never sees it), every answer the
response writes is collected (top-level boxes, `Answer:` lines, `####` lines that hold a number),
and the caller refuses a response whose answers disagree or whose final answer stands next to an
"or". A retraction ("Wait, ...") between two answers keeps only the later one. Linear time on any
input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.extract import (
    _ANSWER_LINE,
    _BOX_CMD,
    _brace_partners,
    _clean_inline,
    box_argument,
    normalize_number_text,
    strip_think,
)

_HIDING_CMD = re.compile(r"\\(?:phantom|hphantom|vphantom|iffalse)(?![A-Za-z])")
_GSM8K_LINE = re.compile(r"^[ \t]*####[ \t]*(.*)$", re.MULTILINE)
_STARTS_NUMERIC = re.compile(r"^[-+\u2212]?\\?\$?[ \t]*\.?\d")
_RETRACTION = re.compile(
    r"\b(?:wait|actually|correction|mistake|recheck|re-check|error|wrong|instead|oops|revis(?:e|ed|ing)|reconsider)\b",
    re.IGNORECASE,
)
_OR = re.compile(r"\bor\b", re.IGNORECASE)
_OR_AFTER = re.compile(
    r"[\s.,;:)$}]*(?:\\text\s*\{\s*)?\(?\s*or\s+(?:maybe\s+|possibly\s+|perhaps\s+)?[\s$(}]*(?:[-+]?\d|\\frac|\\sqrt|\\boxed)",
    re.IGNORECASE,
)
_OR_BEFORE = re.compile(r"(?:\d|\})[\s$)]*(?:\\text\s*\{\s*)?\bor\b\s*\}?[\s$(]*(?:\\\(|\\\[)?\s*$", re.IGNORECASE)
HEDGE_WINDOW = 200  # characters looked at on each side of the final answer for an "or"
_PROSE = re.compile(r"(?:\b[A-Za-z]{2,}\b[^A-Za-z\\]+){3}")


@dataclass(frozen=True)
class Candidate:
    """One answer the response writes: where it starts, its text, and its format."""

    pos: int
    text: str
    fmt: str
    end: int = -1  # where the answer's markup ends (-1: unknown)


def strip_hidden(text: str) -> str:
    """The text a reader sees: HTML comments, TeX `%` comments, `\\phantom{...}` (and the h/v
    forms) and `\\iffalse ... \\fi` removed. An unclosed `<!--` hides the rest of the text; which
    `%` is a comment: `_drop_tex_comment`.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        start = text.find("<!--", i)
        if start < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        end = text.find("-->", start + 4)
        i = n if end < 0 else end + 3
    text = "".join(out)
    text = "\n".join(_drop_tex_comment(line) for line in text.split("\n"))
    if not _HIDING_CMD.search(text):
        return text
    partners = _brace_partners(text)
    out, i = [], 0
    for m in _HIDING_CMD.finditer(text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        if m.group(0) == "\\iffalse":
            fi = text.find("\\fi", m.end())
            i = n if fi < 0 else fi + 3
            continue
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        close = partners.get(j) if j < len(text) and text[j] == "{" else None
        i = len(text) if close is None and j < len(text) and text[j] == "{" else (close + 1 if close is not None else j)
    out.append(text[i:])
    return "".join(out)


def _drop_tex_comment(line: str) -> str:
    """The line up to its TeX comment, if any (one pass).

    A `%` is a percent sign, not a comment, when escaped (`\\%`), right after a digit (one space
    allowed), or inside an open brace group of its line (`\\boxed{28 %}`: a comment there would
    leave the group unclosed).
    """
    depth, i, n = 0, 0, len(line)
    while i < n:
        ch = line[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        elif ch == "%":
            k = i - 1 if i > 0 and line[i - 1] != " " else i - 2
            if depth == 0 and not (k >= 0 and line[k].isdigit()):
                return line[:i]
        i += 1
    return line


def top_level_boxes(text: str) -> list[Candidate]:
    """Every non-empty, balanced `\\boxed{}`/`\\fbox{}` (or `\\boxed 5`) not inside another box."""
    found: list[Candidate] = []
    partners = _brace_partners(text)
    covered_until = -1
    for m in _BOX_CMD.finditer(text):
        if m.start() < covered_until:
            continue  # nested in the previous box: part of that answer
        argument = box_argument(text, m.end(), partners)
        if argument is None:
            continue  # unbalanced (e.g. truncated): not an answer
        content, end = argument
        if end > m.end() and text[end - 1] == "}":
            covered_until = end  # a braced box covers what is nested in it
        if content:
            found.append(Candidate(m.start(), content, "boxed", end))
    return found


def gsm8k_lines(text: str) -> list[Candidate]:
    """`#### N` lines: `####` at the start of a line followed by something that starts with a number.

    `#### Verification` (a markdown heading) is not an answer. The whole rest of the line is
    the answer (`#### 5 or 6` is two answers, not 5), with `$` and thousands commas dropped.
    """
    found = []
    for m in _GSM8K_LINE.finditer(text):
        value = _clean_inline(normalize_number_text(m.group(1)))
        if value and _STARTS_NUMERIC.match(value):
            found.append(Candidate(m.start(), value, "gsm8k", m.end()))
    return found


def answer_lines(text: str) -> list[Candidate]:
    """Every `Answer: ...` line (DAPO's format; `**Final Answer:**` too); an empty one takes the next non-empty line."""
    found = []
    for m in _ANSWER_LINE.finditer(text):
        line_end = text.find("\n", m.end())
        line_end = len(text) if line_end < 0 else line_end
        value, end = text[m.end():line_end], line_end
        if not value.strip("*_ \t"):
            start = line_end + 1
            while start < len(text):
                nxt = text.find("\n", start)
                nxt = len(text) if nxt < 0 else nxt
                if text[start:nxt].strip():
                    value, end = text[start:nxt], nxt
                    break
                start = nxt + 1
        value = _clean_inline(value)
        if value:
            found.append(Candidate(m.start(), value, "answer_line", end))
    return found


def hedged_around(response: str, formats: tuple[str, ...], *, think: bool = True) -> bool:
    """Whether the final answer is written as one side of an "or": `\\boxed{5} or 6`, `3 or \\boxed{5}`."""
    body = strip_think(response) if think else response
    if body is None:
        return False
    body = strip_hidden(body)
    found = answer_candidates(body, formats, think=False) or []
    if not found or found[-1].end < 0:
        return False
    final = found[-1]
    line_start = body.rfind("\n", 0, final.pos) + 1
    line_end = body.find("\n", final.end)
    line_end = len(body) if line_end < 0 else line_end
    head = body[max(line_start, final.pos - HEDGE_WINDOW):final.pos]
    return bool(_OR_AFTER.match(body, final.end, min(line_end, final.end + HEDGE_WINDOW)) or _OR_BEFORE.search(head))


def answer_candidates(response: str, formats: tuple[str, ...], *, think: bool = True) -> list[Candidate] | None:
    """All visible answers in the response, in the order written; None when the response is all reasoning."""
    body = strip_think(response) if think else response
    if body is None:
        return None
    body = strip_hidden(body)
    found: list[Candidate] = []
    if "boxed" in formats:
        found += top_level_boxes(body)
    if "answer_line" in formats:
        found += [c for c in answer_lines(body) if not ("boxed" in formats and _BOX_CMD.search(body, c.pos, c.end))]
    if "gsm8k" in formats:
        found += gsm8k_lines(body)
    found.sort(key=lambda c: c.pos)
    # a retraction ("Wait, ...", "Actually ...") between answers supersedes what was written before it;
    # "wait, or maybe" is a hedge, not a retraction
    for k in range(len(found) - 1, 0, -1):
        gap = body[max(found[k - 1].end, found[k - 1].pos):found[k].pos]
        if _RETRACTION.search(gap) and not _OR.search(gap):
            found = found[k:]
            break
    if found:  # an `Answer:` line of prose that an answer follows is a heading, not an answer
        found = [c for c in found if not (c.fmt == "answer_line" and c is not found[-1] and _PROSE.search(c.text + " "))]
    return found


def answer_key(text: str) -> str:
    """A comparison key for telling identical answers apart from differing ones (textual)."""
    key = _clean_inline(text)
    key = key.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    return "".join(key.split())
