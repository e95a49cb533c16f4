"""The run's metrics file: `run_dir/metrics.jsonl`, one JSON object per training step
(``{"step": N, "<key>": value, ...}`` with plain ints / floats (NaN and Infinity written as Python's
json does) / strings / null), and how it is read back (a truncated last line, the write a crash
interrupted, is reported and ignored; a corrupt line names the file and the line). A finished run's
file may be archived gzip-compressed as `metrics.jsonl.gz`; readers take either."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
ARCHIVED_METRICS_FILENAME = METRICS_FILENAME + ".gz"  # a finished run's metrics, gzip-compressed to be kept
STEP_KEY = "step"
STEP_TIME_KEY = "time/step"
ELAPSED_KEY = "time/total_elapsed"


class MetricsFileError(ValueError):
    """A metrics file cannot be read: the message names the file and the line."""


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


@dataclass
class ParsedMetrics:
    records: list[dict[str, Any]]
    raw: list[bytes]  # the raw line of each record, without its newline
    truncated_tail: bytes | None  # an unparseable last line (a crash mid-write), if any


def _parse_line(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetricsFileError(f"{path}: line {lineno}: not valid JSON ({exc})") from exc
    step = record.get(STEP_KEY) if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
        raise MetricsFileError(
            f"{path}: line {lineno}: expected a JSON object with an integer {STEP_KEY!r}, "
            f"got {raw[:80]!r}"
        )
    return record


def parse_metrics(path: Path) -> ParsedMetrics:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise MetricsFileError(f"{path}: not a readable gzip file ({exc})") from exc
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline (always, unless a write was cut)
    parsed = ParsedMetrics([], [], None)
    for lineno, raw in enumerate(lines, start=1):
        parsed.records.append(_parse_line(raw, path, lineno))
        parsed.raw.append(raw)
    if last:
        try:
            parsed.records.append(_parse_line(last, path, len(lines) + 1))
            parsed.raw.append(last)
        except MetricsFileError as exc:
            log.warning("ignoring truncated last line of %s (line %d): %s", path, len(lines) + 1, exc)
            parsed.truncated_tail = last
    return parsed


def metrics_file(run_dir: Path) -> Path | None:
    """The run's `metrics.jsonl`, else its archived `metrics.jsonl.gz`, else None (not a run folder)."""
    for name in (METRICS_FILENAME, ARCHIVED_METRICS_FILENAME):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics file (or of `run_dir/metrics.jsonl`, else `run_dir/metrics.jsonl.gz`, when
    given a folder), in file order. A `.gz` file is read decompressed.

    A corrupt line raises MetricsFileError naming the file and line; a truncated last line (the
    write a crash interrupted) is logged and ignored.
    """
    path = Path(path)
    if path.is_dir():
        path = metrics_file(path) or path / METRICS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    return parse_metrics(path).records


# ---------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------


def to_plain(key: str, value: Any) -> int | float | str | None:
    """A JSON-ready scalar from a python / numpy / torch scalar (bools become 0/1)."""
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        try:
            value = value.item()  # numpy scalars and arrays, torch tensors: one element only
        except (ValueError, RuntimeError) as exc:
            shape = tuple(getattr(value, "shape", ()))
            raise ValueError(f"metric {key!r}: expected a scalar, got shape {shape}") from exc
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    raise ValueError(
        f"metric {key!r}: expected a number, string or None, got {type(value).__name__}: {value!r}"
    )


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become '/'-joined keys ({"eval": {"aime": 0.3}} -> {"eval/aime": 0.3})."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric keys must be non-empty strings, got {key!r}")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{full}/"))
        else:
            flat[full] = to_plain(full, value)
    return flat
