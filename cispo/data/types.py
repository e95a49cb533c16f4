"""The normalised row every source maps to, and a loaded dataset with its skipped-row accounting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from cispo.config.data import PROMPT_PLACEHOLDER

GroundTruth = str | dict[str, Any]


@dataclass(frozen=True)
class PromptRow:
    """One problem. `ground_truth` is a string for math/aime and a dict for code (see docs/data.md).

    `prompt` is the problem as the data set states it; `template` is the instruction that wraps it into
    the user message (`{prompt}` by default), so that rows from several sources can be mixed.
    """

    prompt: str
    ground_truth: GroundTruth
    reward_kind: str
    data_source: str
    id: str
    template: str = PROMPT_PLACEHOLDER

    @property
    def user_message(self) -> str:
        return self.template.replace(PROMPT_PLACEHOLDER, self.prompt)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "ground_truth": self.ground_truth,
            "reward_kind": self.reward_kind,
            "data_source": self.data_source,
            "id": self.id,
            "template": self.template,
        }


class DataError(ValueError):
    """A data file or row that cannot be used (a user's input, not a bug): the message names the file,
    and the row and field where there is one."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file that does not exist where it was looked for (the message lists where)."""


class BadRowError(DataError):
    """A malformed row: names the file, the 0-based row index and the field."""

    def __init__(self, path: str, row: int, field_name: str, problem: str) -> None:
        self.path, self.row, self.field, self.problem = path, row, field_name, problem
        super().__init__(f"{path}: row {row} (0-based), field {field_name!r}: {problem}")


@dataclass(frozen=True)
class BadRow:
    """A skipped row (policy `on_bad_row="skip"`), kept so that nothing is dropped silently."""

    row: int
    field: str
    problem: str


@dataclass
class PromptDataset:
    """Rows of one data set after mapping, validation, split and limit."""

    name: str
    source: str
    path: str | None
    rows: list[PromptRow]
    num_raw_rows: int
    skipped: list[BadRow] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PromptRow:
        return self.rows[index]

    def __iter__(self) -> Iterator[PromptRow]:
        return iter(self.rows)
