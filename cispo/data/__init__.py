"""Prompt data: local data sets through HF `datasets`, prompt templates, the synthetic arithmetic task
and the stateful sampler. See docs/data.md for the mapping of every source."""

from cispo.data.arithmetic import arithmetic_rows, evaluate_expression, generate_problems, problem_space_size
from cispo.config.data import (
    M1_SYSTEM_PROMPT,
    ArithmeticConfig,
    ColumnMap,
    DataConfig,
    DatasetSpec,
    PromptConfig,
)
from cispo.data.io import detect_format, read_rows
from cispo.data.loading import LoadedData, heldout_indices, load_data, load_prompt_dataset, resolve_source
from cispo.data.sampler import PromptSampler, epoch_permutation
from cispo.data.sources import SOURCE_NAMES, SOURCES, detect_source
from cispo.data.templates import build_messages, encode_prompt, encode_prompts, render_prompt, render_prompts
from cispo.data.types import BadRow, BadRowError, DataError, DataFileNotFoundError, PromptDataset, PromptRow

__all__ = [
    "M1_SYSTEM_PROMPT",
    "SOURCES",
    "SOURCE_NAMES",
    "ArithmeticConfig",
    "BadRow",
    "BadRowError",
    "DataError",
    "DataFileNotFoundError",
    "ColumnMap",
    "DataConfig",
    "DatasetSpec",
    "LoadedData",
    "PromptConfig",
    "PromptDataset",
    "PromptRow",
    "PromptSampler",
    "arithmetic_rows",
    "build_messages",
    "detect_format",
    "detect_source",
    "encode_prompt",
    "encode_prompts",
    "epoch_permutation",
    "evaluate_expression",
    "generate_problems",
    "heldout_indices",
    "load_data",
    "load_prompt_dataset",
    "problem_space_size",
    "read_rows",
    "render_prompt",
    "render_prompts",
    "resolve_source",
]
