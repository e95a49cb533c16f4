"""From a `DatasetSpec` to validated `PromptRow`s: read, map per source, split, limit.

All rows are validated at load time, so a malformed row stops the run at start-up (or is counted as
skipped) and never crashes it mid-way. The held-out split is a seeded permutation of the raw row
indices, so it does not move when a bad row is skipped or `limit` changes.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from cispo.data.arithmetic import arithmetic_rows
from cispo.config.data import DataConfig, DatasetSpec
from cispo.data.io import detect_format, read_hub_rows, read_rows
from cispo.data.sources import ARITHMETIC, GENERIC, FieldError, detect_source, get_source
from cispo.data.types import BadRow, BadRowError, DataError, PromptDataset, PromptRow

logger = logging.getLogger(__name__)


def resolve_source(spec: DatasetSpec) -> str:
    """Explicit `source`, else `generic` when columns are given, else detected from the file name."""
    if spec.source is not None:
        return spec.source
    if spec.columns.is_set:
        return GENERIC
    detected = detect_source(spec.path or spec.hub or "")
    if detected is None:
        raise DataError(
            f"{spec.path}: cannot tell the data source from the file name; set source: (one of the "
            "names in docs/data.md) or columns: {prompt, ground_truth, id} for your own file"
        )
    logger.info("%s: detected source %r from the file name", spec.path, detected)
    return detected


def heldout_indices(num_rows: int, fraction: float, seed: int) -> set[int]:
    """The raw row indices of the held-out part: the first round(n * fraction) of a seeded permutation."""
    order = list(range(num_rows))
    random.Random(seed).shuffle(order)
    return set(order[: round(num_rows * fraction)])


def _selected(index: int, spec: DatasetSpec, heldout: set[int]) -> bool:
    if spec.split == "all":
        return True
    return (index in heldout) == (spec.split == "heldout")


def load_prompt_dataset(spec: DatasetSpec, *, name: str | None = None) -> PromptDataset:
    """Load one data set. `name` (e.g. the eval-set key) is used when `spec.name` is unset."""
    source_name = resolve_source(spec)
    data_source = spec.name or name or source_name
    if source_name == ARITHMETIC:
        rows = arithmetic_rows(spec.arithmetic, spec.split, data_source=data_source)
        if spec.reward_kind is not None or spec.template is not None:
            rows = [_override(row, spec) for row in rows]
        rows = rows[: spec.limit] if spec.limit is not None else rows
        return PromptDataset(data_source, source_name, None, rows, num_raw_rows=len(rows))

    source = get_source(source_name, spec.reward_kind)
    if source_name == GENERIC and (spec.columns.prompt is None or spec.columns.ground_truth is None):
        raise DataError(
            f"{spec.path}: the generic source needs columns.prompt and columns.ground_truth "
            f"(got {spec.columns})"
        )
    if spec.hub is not None:
        path = spec.hub
        raw_rows = read_hub_rows(spec.hub, spec.hub_split, cache_dir=spec.cache_dir)
    else:
        path = str(spec.path)
        raw_rows = read_rows(path, spec.format or detect_format(path), cache_dir=spec.cache_dir)
    reward_kind = spec.reward_kind or source.reward_kind
    template = spec.template or source.template
    heldout = heldout_indices(len(raw_rows), spec.heldout_fraction, spec.split_seed)

    rows: list[PromptRow] = []
    skipped: list[BadRow] = []
    seen_ids: dict[str, int] = {}
    for index, raw in enumerate(raw_rows):
        try:
            if not isinstance(raw, dict):
                raise FieldError("<row>", f"expected an object, got {type(raw).__name__}")
            mapped = source.mapper(raw, spec.columns)
            row_id = mapped.id if mapped.id is not None else f"{data_source}-{index}"
            if row_id in seen_ids:
                raise FieldError("id", f"duplicate id {row_id!r} (first at row {seen_ids[row_id]})")
            seen_ids[row_id] = index
        except FieldError as exc:
            if spec.on_bad_row == "error":
                raise BadRowError(path, index, exc.field, exc.problem) from None
            skipped.append(BadRow(index, exc.field, exc.problem))
            continue
        if _selected(index, spec, heldout):
            rows.append(PromptRow(mapped.prompt, mapped.ground_truth, reward_kind, data_source, row_id, template))
    if skipped:
        logger.warning("%s: skipped %d malformed rows (first: %s)", path, len(skipped), skipped[0])
    if spec.limit is not None:
        rows = rows[: spec.limit]
    if not rows:
        raise DataError(f"{path}: no usable rows (split={spec.split!r}, {len(skipped)} skipped)")
    return PromptDataset(data_source, source_name, path, rows, num_raw_rows=len(raw_rows), skipped=skipped)


def _override(row: PromptRow, spec: DatasetSpec) -> PromptRow:
    return PromptRow(
        row.prompt,
        row.ground_truth,
        spec.reward_kind or row.reward_kind,
        row.data_source,
        row.id,
        spec.template or row.template,
    )


@dataclass
class LoadedData:
    """The training mixture (concatenated in spec order) and the named eval sets."""

    train: list[PromptRow]
    train_parts: list[PromptDataset]
    eval: dict[str, PromptDataset]

    def summary(self) -> dict[str, Any]:
        """Counts worth logging at start-up (rows and skipped rows per data set)."""
        return {
            "train": {part.name: {"rows": len(part), "skipped": part.num_skipped} for part in self.train_parts},
            "eval": {name: {"rows": len(part), "skipped": part.num_skipped} for name, part in self.eval.items()},
        }


def load_data(cfg: DataConfig) -> LoadedData:
    """Every data set of the config; train rows must have unique (data_source, id) pairs."""
    parts = [load_prompt_dataset(spec) for spec in cfg.train]
    train = [row for part in parts for row in part.rows]
    keys: set[tuple[str, str]] = set()
    for row in train:
        key = (row.data_source, row.id)
        if key in keys:
            raise DataError(
                f"data.train: the row id {row.id!r} of {row.data_source!r} appears twice; give the "
                "datasets of the mixture distinct names"
            )
        keys.add(key)
    evals = {name: load_prompt_dataset(spec, name=name) for name, spec in cfg.eval.items()}
    return LoadedData(train=train, train_parts=parts, eval=evals)

