"""Reading local data files into plain row dicts through HF `datasets`.

HF `datasets` is the reader (json, JSON lines, parquet, compressed or not, with its Arrow cache).
When it cannot build a table (a broken line, types Arrow cannot unify), the JSON file is read again
with the standard library so that the error names the exact row, or so that the rows it can read
are validated one by one (`on_bad_row="skip"`), instead of failing without saying where.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
from pathlib import Path
from typing import IO, Any, Callable

from cispo.data.types import DataError, DataFileNotFoundError

logger = logging.getLogger(__name__)

COMPRESSIONS: dict[str, Callable[..., IO[str]]] = {
    ".gz": gzip.open,
    ".bz2": bz2.open,
    ".xz": lzma.open,
}
EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(path: str | Path) -> str:
    """`json`, `jsonl` or `parquet` from the extension, looking through a compression suffix."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in EXTENSIONS:
        raise DataError(
            f"{path}: cannot tell the format from the extension; expected one of "
            f"{sorted(EXTENSIONS)} (optionally + {sorted(COMPRESSIONS)}), or set format: json|jsonl|parquet"
        )
    return EXTENSIONS[suffixes[-1]]


def _open_text(path: Path) -> IO[str]:
    opener = COMPRESSIONS.get(path.suffix.lower())
    if opener is None:
        return open(path, encoding="utf-8")
    return opener(path, "rt", encoding="utf-8")


def read_json_stdlib(path: Path) -> list[Any]:
    """A JSON list, or JSON lines; a broken line raises naming the file and row."""
    with _open_text(path) as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return data
    rows: list[Any] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: row {len(rows)} (0-based; line {line_number}) is not valid JSON: {exc}"
            ) from exc
    return rows


PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The cispo checkout (or install prefix): where the shipped ``data/`` folder lives."""


def resolve_data_path(path: str | Path) -> Path:
    """A relative path is looked up in the working directory first, then in the cispo checkout, so that
    the shipped presets (``data/eval/aime2024.jsonl``) work from any folder and a user's own relative
    paths keep their usual meaning."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.is_file():
        candidates = [path]
    else:
        candidates = [path, PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c.resolve()) for c in candidates)
    raise DataFileNotFoundError(f"{path}: data file not found (looked for {tried})")


def read_hub_rows(dataset_id: str, split: str, *, cache_dir: str | None = None) -> list[Any]:
    """All rows of a Hugging Face dataset (or a local dataset folder) as dicts."""
    import datasets  # deferred: importing datasets costs about a second

    try:
        table = datasets.load_dataset(dataset_id, split=split, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (network, missing split, format)
        raise DataError(
            f"hub dataset {dataset_id!r} (split {split!r}) could not be loaded: {exc}. Without network access, "
            "download it elsewhere and point `path:` at a local file"
        ) from exc
    return table.to_list()


def read_rows(path: str | Path, fmt: str | None = None, *, cache_dir: str | None = None) -> list[Any]:
    """All rows of a local file as Python objects (dicts, unless the file is malformed)."""
    path = resolve_data_path(path)
    fmt = fmt or detect_format(path)
    builder = "parquet" if fmt == "parquet" else "json"
    import datasets  # deferred: importing datasets costs about a second

    try:
        table = datasets.load_dataset(builder, data_files=str(path.resolve()), split="train", cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; we re-read or re-raise below
        if builder != "json":
            raise DataError(f"{path}: HF datasets could not read it as {fmt}: {exc}") from exc
        logger.warning("%s: HF datasets failed (%s); reading it with the json module", path, exc)
        return read_json_stdlib(path)
    return table.to_list()
