"""Typed configuration of the data layer (mirrored by the Hydra YAML in `configs/data/`).

Every dataclass validates itself on construction (`cispo.config.schema.Schema`), so a bad value fails
at start-up with the key, the value and what is allowed, never in the middle of a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from cispo.config.schema import Schema

M1_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
"""MiniMax-M1's system prompt for math (arXiv 2506.13585, evaluation protocol)."""

PROMPT_PLACEHOLDER = "{prompt}"
"""The one placeholder of an instruction template; replaced literally, so LaTeX braces need no escaping."""

Format = Literal["json", "jsonl", "parquet"]
RewardKind = Literal["math", "aime", "code"]
BadRowPolicy = Literal["error", "skip"]
Split = Literal["all", "train", "heldout"]
FORMATS: tuple[str, ...] = get_args(Format)
REWARD_KINDS: tuple[str, ...] = get_args(RewardKind)
BAD_ROW_POLICIES: tuple[str, ...] = get_args(BadRowPolicy)
SPLITS: tuple[str, ...] = get_args(Split)
ARITHMETIC_OPERATIONS = ("+", "-", "*")


def check_template(template: str, key: str) -> None:
    """An instruction template must contain `{prompt}` exactly once (else the problem is lost or doubled)."""
    if not isinstance(template, str) or template.count(PROMPT_PLACEHOLDER) != 1:
        raise ValueError(
            f"{key}={template!r}: an instruction template must contain {PROMPT_PLACEHOLDER!r} exactly once"
        )


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r}: expected one of {list(allowed)}")


@dataclass
class ColumnMap(Schema):
    """Column names for a user's own file (the `generic` source). `id=None` numbers the rows."""

    prompt: str | None = None
    ground_truth: str | None = None
    id: str | None = None

    def validate(self) -> None:
        for key in ("prompt", "ground_truth", "id"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"columns.{key}={value!r}: expected a non-empty column name or null")

    @property
    def is_set(self) -> bool:
        return self.prompt is not None or self.ground_truth is not None


@dataclass
class ArithmeticConfig(Schema):
    """The synthetic multi-digit arithmetic task (CPU runs). Deterministic from `seed`.

    Held-out problems are drawn first and training problems after them, all distinct, so the two
    splits never overlap and the held-out set does not change when `num_train` changes.
    """

    num_train: int = 2000
    num_heldout: int = 200
    min_digits: int = 1
    max_digits: int = 2
    num_operands: int = 2
    operations: list[str] = field(default_factory=lambda: ["+", "-", "*"])
    allow_negative: bool = True
    seed: int = 0
    question: str = "What is {expression}?"
    """User-visible wording; `{expression}` is replaced by e.g. `23 + 58 * 4`."""
    max_draws_per_problem: int = 200
    """Rejection-sampling budget (draws per wanted problem) before giving up with an error."""

    def validate(self) -> None:
        for key in ("num_train", "num_heldout"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"arithmetic.{key}={value!r}: expected an integer >= 0")
        if not isinstance(self.min_digits, int) or self.min_digits < 1:
            raise ValueError(f"arithmetic.min_digits={self.min_digits!r}: expected an integer >= 1")
        if not isinstance(self.max_digits, int) or self.max_digits < self.min_digits:
            raise ValueError(
                f"arithmetic.max_digits={self.max_digits!r}: expected an integer >= min_digits "
                f"({self.min_digits})"
            )
        if not isinstance(self.num_operands, int) or self.num_operands < 2:
            raise ValueError(f"arithmetic.num_operands={self.num_operands!r}: expected an integer >= 2")
        ops = list(self.operations)
        if not ops or len(set(ops)) != len(ops) or any(op not in ARITHMETIC_OPERATIONS for op in ops):
            raise ValueError(
                f"arithmetic.operations={ops!r}: expected a non-empty list of distinct operations "
                f"from {list(ARITHMETIC_OPERATIONS)}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"arithmetic.seed={self.seed!r}: expected an integer >= 0")
        if not isinstance(self.question, str) or self.question.count("{expression}") != 1:
            raise ValueError(
                f"arithmetic.question={self.question!r}: must contain '{{expression}}' exactly once"
            )
        if not isinstance(self.max_draws_per_problem, int) or self.max_draws_per_problem < 1:
            raise ValueError(
                f"arithmetic.max_draws_per_problem={self.max_draws_per_problem!r}: expected an integer >= 1"
            )


@dataclass
class DatasetSpec(Schema):
    """One prompt dataset: a local file (or the synthetic task) and how to read it.

    `source` picks the per-source mapping (`aime`, `math500`, `math`, `amc`, `gsm8k`, `deepmath`,
    `humaneval`, `mbpp`, `leetcode`, `codeforces`, `generic`, `arithmetic`). `None` means: `generic`
    when `columns` are given, else detected from the file name.
    """

    path: str | None = None
    """A local file: absolute, or relative to the working folder, then to the cispo checkout (``data/...``)."""
    hub: str | None = None
    """Instead of ``path``: a Hugging Face dataset id (or a dataset folder), loaded with ``datasets.load_dataset``.
    Needs network access or a filled cache; cispo itself never downloads at run time."""
    hub_split: str = "train"
    """The split of the ``hub`` dataset."""
    source: str | None = None
    name: str | None = None
    """Label written into every row's `data_source`; `None` uses the source's name."""
    format: Format | None = None
    """`json` (a JSON list or JSON lines), `jsonl` or `parquet`; `None` = from the extension (`.gz` ok)."""
    columns: ColumnMap = field(default_factory=ColumnMap)
    reward_kind: RewardKind | None = None
    """Override of the source's reward kind (`math`, `aime`, `code`)."""
    template: str | None = None
    """Instruction template of the user message with `{prompt}`; `None` = the source's default."""
    limit: int | None = None
    """Keep only the first `limit` rows (after the split)."""
    split: Split = "all"
    """`all`, `train` or `heldout`: which part of a `heldout_fraction` split (or of the synthetic task)."""
    heldout_fraction: float = 0.0
    split_seed: int = 0
    on_bad_row: BadRowPolicy = "error"
    """`error`: raise naming file, row and field. `skip`: drop the row and count it."""
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    """Used only when `source == "arithmetic"`."""
    cache_dir: str | None = None
    """HF `datasets` cache folder; `None` = its default (`~/.cache/huggingface/datasets`)."""

    def validate(self) -> None:
        if self.source == "arithmetic":
            if self.path is not None or self.hub is not None:
                raise ValueError(f"path={self.path!r}: the arithmetic source is synthetic and takes no path")
            if self.heldout_fraction != 0.0:
                raise ValueError(
                    f"heldout_fraction={self.heldout_fraction!r}: the arithmetic source splits by "
                    "arithmetic.num_train / arithmetic.num_heldout; leave heldout_fraction at 0"
                )
        elif (self.path is None) == (self.hub is None):
            raise ValueError(f"path={self.path!r}, hub={self.hub!r}: expected exactly one of them (a local data file "
                             "or a Hugging Face dataset id)")
        elif not isinstance(self.path or self.hub, str) or not (self.path or self.hub):
            raise ValueError(f"path={self.path!r}: expected the path of a local data file")
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            raise ValueError(f"source={self.source!r}: expected a source name or null")
        if self.format is not None:
            _check_choice("format", self.format, FORMATS)
        if self.reward_kind is not None:
            _check_choice("reward_kind", self.reward_kind, REWARD_KINDS)
        if self.template is not None:
            check_template(self.template, "template")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit={self.limit!r}: expected an integer >= 1 or null")
        _check_choice("split", self.split, SPLITS)
        if not isinstance(self.heldout_fraction, (int, float)) or not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction={self.heldout_fraction!r}: expected a number in [0, 1)")
        if self.split != "all" and self.source != "arithmetic" and self.heldout_fraction == 0.0:
            raise ValueError(
                f"split={self.split!r} needs heldout_fraction > 0 (it is 0): there is nothing to split"
            )
        if not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ValueError(f"split_seed={self.split_seed!r}: expected an integer >= 0")
        _check_choice("on_bad_row", self.on_bad_row, BAD_ROW_POLICIES)


@dataclass
class PromptConfig(Schema):
    """How a row becomes the model's input: system prompt + instruction, through the chat template."""

    system_prompt: str | None = M1_SYSTEM_PROMPT
    """System message for `math` and `aime` rows; `None` or empty = no system message."""
    code_system_prompt: str | None = None
    """System message for `code` rows (M1's boxed instruction makes no sense for code)."""
    use_chat_template: bool = True
    """False = plain text (`system + separator + user`) for base models without a chat template."""
    plain_separator: str = "\n\n"

    def validate(self) -> None:
        for key in ("system_prompt", "code_system_prompt"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"prompt.{key}={value!r}: expected a string or null")
        if not isinstance(self.use_chat_template, bool):
            raise ValueError(f"prompt.use_chat_template={self.use_chat_template!r}: expected true or false")


def _default_train() -> list[DatasetSpec]:
    return [DatasetSpec(source="arithmetic", split="train")]


def _default_eval() -> dict[str, DatasetSpec]:
    return {"arithmetic": DatasetSpec(source="arithmetic", split="heldout")}


@dataclass
class DataConfig(Schema):
    """Training mixture (concatenated in order), named eval sets, prompt rendering and the sampler seed."""

    train: list[DatasetSpec] = field(default_factory=_default_train)
    """The training mixture: datasets concatenated in order (fields: docs/data.md)."""
    eval: dict[str, DatasetSpec] = field(default_factory=_default_eval)
    """Named eval sets; ``eval.sets`` picks which ones a run evaluates."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    seed: int = 0
    """Seed of the training sampler's per-epoch shuffle."""
    shuffle: bool = True
    """Reshuffle the training rows every epoch (seeded by ``data.seed``); false keeps file order."""

    IDENTITY_KEYS = frozenset({"train", "eval", "prompt", "seed", "shuffle"})  # the data is what a run is

    def validate(self) -> None:
        if not self.train:
            raise ValueError("data.train: expected at least one dataset")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"data.seed={self.seed!r}: expected an integer >= 0")
