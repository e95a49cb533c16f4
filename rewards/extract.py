"""Answer and program extraction from model responses.

Responses are hostile input: every function here runs in time linear in the response length
(no backtracking regular expressions over unbounded spans, braces matched in one pass).
"""

from __future__ import annotations

import re

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_LINE = re.compile(r"^[ \t>*#_-]*(?:final[ \t]+)?answer[ \t*_]*[:\uff1a]", re.IGNORECASE | re.MULTILINE)
_GSM8K = re.compile(r"####")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?![\d/.^_{\\])")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[ \t]*([^\s`]*)")
PYTHON_TAGS = frozenset({"python", "py", "python3", "py3", ""})


def strip_think(text: str) -> str | None:
    """The part of `text` after the reasoning block.

    After the last `</think>` when there is one; None when a `<think>` block was opened and
    never closed (the response is all reasoning, e.g. truncated); the text itself otherwise.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return text[close + len(THINK_CLOSE):]
    if THINK_OPEN in text:
        return None
    return text


def _brace_partners(text: str) -> dict[int, int]:
    """Map each unescaped `{` to its matching `}` (one linear pass; unmatched opens absent)."""
    partners: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character: \{ \} \\ are not grouping braces
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            partners[stack.pop()] = i
        i += 1
    return partners


def last_boxed(text: str) -> tuple[int, str] | None:
    """(position, content) of the last non-empty, balanced `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5`."""
    spans = [(m.start(), m.end()) for m in _BOX_CMD.finditer(text)]
    if not spans:
        return None
    partners = _brace_partners(text)
    for start, end in reversed(spans):
        argument = box_argument(text, end, partners)
        if argument is not None and argument[0]:
            return start, argument[0]
    return None


def box_argument(text: str, after: int, partners: dict[int, int]) -> tuple[str, int] | None:
    """(content, end) of the argument of a box command ending at ``after``: a balanced ``{...}`` or one bare
    token (``\\boxed 5``); None when the brace is unbalanced (e.g. a truncated response)."""
    j = after
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        close = partners.get(j)
        if close is None:
            return None
        return text[j + 1:close].strip(), close + 1
    k = j
    while k < len(text) and not text[k].isspace() and text[k] not in "$}":
        k += 1
    return text[j:k].strip(), k


def _clean_inline(value: str) -> str:
    """Strip markdown emphasis, math delimiters and a trailing full stop from a one-line answer."""
    value = value.strip()
    for _ in range(3):
        before = value
        value = value.strip().strip("*_").strip()
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(value) >= len(left) + len(right) and value.startswith(left) and value.endswith(right):
                value = value[len(left):len(value) - len(right)].strip()
        if value.endswith(".") and not value[:-1].rstrip().endswith("."):
            value = value[:-1].rstrip()
        if value == before:
            break
    return value


def last_answer_line(text: str) -> tuple[int, str] | None:
    """(position, value) of the last `Answer: ...` line (DAPO's format; `**Final Answer:**` too)."""
    last = None
    for m in _ANSWER_LINE.finditer(text):
        last = m
    if last is None:
        return None
    line_end = text.find("\n", last.end())
    value = text[last.end():] if line_end < 0 else text[last.end():line_end]
    if not value.strip("*_ \t"):
        # "Answer:" alone on its line: take the next non-empty line.
        rest = "" if line_end < 0 else text[line_end + 1:]
        for line in rest.splitlines():
            if line.strip():
                value = line
                break
    boxed = last_boxed(value)
    value = boxed[1] if boxed else _clean_inline(value)
    return (last.start(), value) if value else None


def normalize_number_text(value: str) -> str:
    """`$1,234.50` -> `1234.50`: drop currency signs and thousands separators (GSM8K style)."""
    value = value.strip().replace("\\$", "").replace("$", "")
    value = _THOUSANDS.sub("", value)
    return value.strip()


def last_gsm8k(text: str) -> tuple[int, str] | None:
    """(position, value) of the last `#### N` answer."""
    last = None
    for m in _GSM8K.finditer(text):
        last = m
    if last is None:
        return None
    line_end = text.find("\n", last.end())
    value = text[last.end():] if line_end < 0 else text[last.end():line_end]
    value = _clean_inline(normalize_number_text(value.lstrip("#")))
    number = _LEADING_NUMBER.match(value)
    if number:  # GSM8K answers are numbers: "18 dollars" -> "18"
        value = number.group(0)
    return (last.start(), value) if value else None


_EXTRACTORS = {"boxed": last_boxed, "answer_line": last_answer_line, "gsm8k": last_gsm8k}


def extract_math_answer(text: str, formats: tuple[str, ...], *, think: bool = True) -> str | None:
    """The answer the response commits to: among the accepted formats, the one written last."""
    if not isinstance(text, str):
        return None
    body = strip_think(text) if think else text
    if body is None:
        return None
    best: tuple[int, str] | None = None
    for fmt in formats:
        found = _EXTRACTORS[fmt](body)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    return best[1] if best else None


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """All closed fenced code blocks as (language tag lowercased, code), in order."""
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    lang = ""
    body: list[str] = []
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, lang, body = m.group(1), m.group(2).lower(), []
            continue
        if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not m.group(2) and line.strip() == m.group(1):
            blocks.append((lang, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    return blocks


def extract_code(text: str, mode: str, *, think: bool = True) -> str | None:
    """The program in a response: last fenced python block (default), last block of any language, or raw."""
    if not isinstance(text, str):
        return None
    body = strip_think(text) if think else text
    if body is None:
        return None
    if mode == "raw":
        return body if body.strip() else None
    blocks = fenced_blocks(body)
    if mode == "last_python_block":
        blocks = [b for b in blocks if b[0] in PYTHON_TAGS]
    elif mode != "last_block":
        raise ValueError(f"reward.code_extraction: unknown mode {mode!r}")
    for _, code in reversed(blocks):
        if code.strip():
            return code
    return None
