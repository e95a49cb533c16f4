"""One mapping per data source: raw row -> (prompt, ground truth, id), with field-level validation.

A mapper raises `FieldError(field, problem)`; the loader turns it into an error naming the file and
row (or a counted skip). The mapping of every source is documented in docs/data.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cispo.config.data import PROMPT_PLACEHOLDER, ColumnMap
from rewards.code_data import LEETCODE_PRELUDE as LEETCODE_SETUP
from rewards.code_data import BadTestsError, codeforces_ground_truth, humaneval_ground_truth
from cispo.data.types import GroundTruth

AIME_ANSWER_MAX = 999
GSM8K_MARKER = "####"
_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_LEETCODE_CALL = re.compile(r"^check\((?P<entry>Solution\(\)\.\w+)\)\s*$")

HUMANEVAL_TEMPLATE = (
    "Complete the following Python function. Write the whole function, with its signature and the "
    "imports it needs, in a single ```python code block.\n\n```python\n" + PROMPT_PLACEHOLDER + "```"
)
MBPP_TEMPLATE = (
    PROMPT_PLACEHOLDER + "\n\nWrite the Python function, with the imports it needs, in a single "
    "```python code block."
)
CODEFORCES_TEMPLATE = (
    PROMPT_PLACEHOLDER + "\n\nWrite a Python 3 program that reads the input from standard input and "
    "writes the answer to standard output. Put the whole program in a single ```python code block."
)


class FieldError(ValueError):
    """A problem with one field of one raw row (the loader adds file and row)."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field, self.problem = field_name, problem
        super().__init__(f"field {field_name!r}: {problem}")


@dataclass(frozen=True)
class Mapped:
    prompt: str
    ground_truth: GroundTruth
    id: str | None
    """`None`: the loader numbers the row (`{data_source}-{index}`)."""


Mapper = Callable[[dict[str, Any], ColumnMap], Mapped]


@dataclass(frozen=True)
class Source:
    name: str
    reward_kind: str
    mapper: Mapper
    template: str = PROMPT_PLACEHOLDER
    file_pattern: str | None = None
    """Regex searched in the lower-case file name for auto-detection; `None` = never detected."""


# ---- field helpers -------------------------------------------------------------------------------


def _get(raw: dict[str, Any], key: str) -> Any:
    value = raw.get(key)
    if value is None:
        raise FieldError(key, "missing or null")
    return value


def text_field(raw: dict[str, Any], key: str) -> str:
    value = _get(raw, key)
    if not isinstance(value, str):
        raise FieldError(key, f"expected a string, got {type(value).__name__} {value!r:.80}")
    if not value.strip():
        raise FieldError(key, "empty")
    return value


def number_to_text(value: float | int) -> str:
    """`27.0` -> `27` (AMC answers are floats of whole numbers), `2.5` -> `2.5`."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)


def answer_field(raw: dict[str, Any], key: str) -> str:
    """A math answer: a non-empty string, or a number written without a spurious `.0`."""
    value = _get(raw, key)
    if isinstance(value, bool):
        raise FieldError(key, f"expected a string or number, got bool {value!r}")
    if isinstance(value, (int, float)):
        try:
            return number_to_text(value)
        except ValueError as exc:
            raise FieldError(key, str(exc)) from exc
    if not isinstance(value, str):
        raise FieldError(key, f"expected a string or number, got {type(value).__name__} {value!r:.80}")
    if not value.strip():
        raise FieldError(key, "empty answer")
    return value.strip()


def id_field(raw: dict[str, Any], key: str) -> str:
    value = _get(raw, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldError(key, f"expected a string or integer id, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise FieldError(key, "empty id")
    return text


def str_list_field(raw: dict[str, Any], key: str, *, allow_empty: bool) -> list[str]:
    value = _get(raw, key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FieldError(key, f"expected a list of strings, got {value!r:.80}")
    if not value and not allow_empty:
        raise FieldError(key, "empty list")
    return list(value)


# ---- math sources --------------------------------------------------------------------------------


def map_aime(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    value = _get(raw, "answer")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= AIME_ANSWER_MAX:
        raise FieldError("answer", f"expected an integer in 0..{AIME_ANSWER_MAX}, got {value!r:.80}")
    return Mapped(text_field(raw, "problem"), str(value), id_field(raw, "id"))


def map_math500(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    return Mapped(text_field(raw, "problem"), answer_field(raw, "answer"), id_field(raw, "unique_id"))


def map_math(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    return Mapped(text_field(raw, "problem"), answer_field(raw, "answer"), None)


def map_amc(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    prompt_key = "problem" if raw.get("problem") is not None else "question"
    return Mapped(text_field(raw, prompt_key), answer_field(raw, "answer"), id_field(raw, "id"))


def gsm8k_answer(solution: str) -> str:
    """The number after the last `####`, thousands separators removed (`1,000` -> `1000`)."""
    if GSM8K_MARKER not in solution:
        raise FieldError("answer", f"no {GSM8K_MARKER!r} line in the solution")
    answer = solution.rsplit(GSM8K_MARKER, 1)[1].strip()
    if not answer:
        raise FieldError("answer", f"nothing after {GSM8K_MARKER!r}")
    if _NUMBER_WITH_COMMAS.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer


def map_gsm8k(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    return Mapped(text_field(raw, "question"), gsm8k_answer(text_field(raw, "answer")), None)


def map_deepmath(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    return Mapped(text_field(raw, "prompt"), answer_field(raw, "ground_truth"), id_field(raw, "id"))


# ---- code sources --------------------------------------------------------------------------------


def map_humaneval(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    """The check, and the prompt's own helpers (``poly`` of HumanEval/32, ...) as trusted test setup: a
    program cannot redefine a helper that the check calls (docs/rewards.md)."""
    fields = {"test": text_field(raw, "test"), "entry_point": text_field(raw, "entry_point"),
              "prompt": text_field(raw, "prompt")}
    return Mapped(fields["prompt"], humaneval_ground_truth(fields), id_field(raw, "task_id"))


def map_mbpp(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    asserts = str_list_field(raw, "test_list", allow_empty=False)
    imports = str_list_field(raw, "test_imports", allow_empty=True)
    prompt = raw.get("instruction")
    if prompt is None:  # other MBPP copies: show the first assert so the function name is known
        prompt = text_field(raw, "prompt") + "\n" + asserts[0]
    else:
        prompt = text_field(raw, "instruction")
    return Mapped(prompt, {"asserts": asserts, "setup": "\n".join(imports)}, id_field(raw, "task_id"))


def split_leetcode_check(functional: str) -> tuple[str, str]:
    """`def check(candidate): ...` + trailing `check(Solution().method)` -> (check code, entry point).

    The entry point is `Solution().method`: the sandbox runs `check(<entry_point>)` after the
    candidate's code, exactly the call the data set ends with, so the call is removed from `check`.
    """
    lines = functional.rstrip().splitlines()
    match = _LEETCODE_CALL.match(lines[-1].strip()) if lines else None
    if match is None or "def check(candidate)" not in functional:
        raise FieldError(
            "tests.functional",
            "expected 'def check(candidate): ...' ending with a 'check(Solution().<method>)' line",
        )
    return "\n".join(lines[:-1]).rstrip() + "\n", match.group("entry")


def map_leetcode(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    tests = _get(raw, "tests")
    if not isinstance(tests, dict):
        raise FieldError("tests", f"expected an object with 'functional', got {type(tests).__name__}")
    functional = tests.get("functional")
    if not isinstance(functional, str) or not functional.strip():
        raise FieldError("tests.functional", f"expected a non-empty string, got {functional!r:.80}")
    check, entry_point = split_leetcode_check(functional)
    truth = {"check": check, "entry_point": entry_point, "setup": LEETCODE_SETUP}
    return Mapped(text_field(raw, "problem"), truth, None)


def map_codeforces(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
    try:
        truth = codeforces_ground_truth(raw)
    except BadTestsError as e:
        raise FieldError(e.field, e.problem) from None
    return Mapped(text_field(raw, "problem"), truth, None)


# ---- user files ----------------------------------------------------------------------------------


def generic_ground_truth(raw: dict[str, Any], key: str, reward_kind: str) -> GroundTruth:
    """Math: a string or number. Code: an object, or a JSON string of one (parquet/CSV-friendly)."""
    if reward_kind != "code":
        return answer_field(raw, key)
    value = _get(raw, key)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(key, f"code ground truth: expected an object or a JSON object string ({exc})")
    if not isinstance(value, dict) or not value:
        raise FieldError(key, f"code ground truth: expected a non-empty object, got {value!r:.80}")
    return value


def make_generic_mapper(reward_kind: str) -> Mapper:
    def map_generic(raw: dict[str, Any], columns: ColumnMap) -> Mapped:
        if columns.prompt is None or columns.ground_truth is None:
            raise ValueError("the generic source needs columns.prompt and columns.ground_truth")
        truth = generic_ground_truth(raw, columns.ground_truth, reward_kind)
        row_id = id_field(raw, columns.id) if columns.id is not None else None
        return Mapped(text_field(raw, columns.prompt), truth, row_id)

    return map_generic


SOURCES: dict[str, Source] = {
    source.name: source
    for source in (
        Source("aime", "aime", map_aime, file_pattern=r"aime"),
        Source("math500", "math", map_math500, file_pattern=r"math[-_]?500"),
        Source("math", "math", map_math, file_pattern=r"^math(_train\w*)?\.(json|jsonl|parquet)"),
        Source("amc", "math", map_amc, file_pattern=r"amc"),
        Source("gsm8k", "math", map_gsm8k, file_pattern=r"gsm8k"),
        Source("deepmath", "math", map_deepmath, file_pattern=r"deepmath"),
        Source("humaneval", "code", map_humaneval, HUMANEVAL_TEMPLATE, file_pattern=r"humaneval"),
        Source("mbpp", "code", map_mbpp, MBPP_TEMPLATE, file_pattern=r"mbpp"),
        Source("leetcode", "code", map_leetcode, file_pattern=r"leetcode"),
        Source("codeforces", "code", map_codeforces, CODEFORCES_TEMPLATE, file_pattern=r"codeforces"),
    )
}
GENERIC = "generic"
ARITHMETIC = "arithmetic"
SOURCE_NAMES = (*SOURCES, GENERIC, ARITHMETIC)


def detect_source(path: str | Path) -> str | None:
    """The source whose pattern the file name matches first, or None."""
    file_name = Path(path).name.lower()
    for source in SOURCES.values():
        if source.file_pattern is not None and re.search(source.file_pattern, file_name):
            return source.name
    return None


def get_source(name: str, reward_kind: str | None) -> Source:
    """The named mapping; `generic` is built for the reward kind (default `math`)."""
    if name == GENERIC:
        kind = reward_kind or "math"
        return Source(GENERIC, kind, make_generic_mapper(kind))
    if name not in SOURCES:
        raise ValueError(f"source={name!r}: expected one of {list(SOURCE_NAMES)}")
    return SOURCES[name]
