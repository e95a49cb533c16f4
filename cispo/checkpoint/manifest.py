"""MANIFEST.json: what a complete checkpoint holds (every file's path, size, sha256), and `verify`.

Why a manifest and not just "the folder exists": a folder renamed into place is complete when it was
written, but a disk filling up, a copy with `cp -r` interrupted, or bit rot later can still break it.
Resuming from a broken checkpoint is worse than resuming from an older one, so `find_resume("auto")`
verifies every file (sha256 of a 500 MB model costs about 0.4 s on these machines) and falls back.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from cispo.checkpoint.layout import MANIFEST_NAME, parse_step

MANIFEST_FORMAT_VERSION = 1
HASH_ALGORITHM = "sha256"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupted (the message names the path and the reason)."""


def file_sha256(path: Path) -> str:
    """sha256 of one file (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, HASH_ALGORITHM).hexdigest()


def _walk_files(root: Path) -> list[Path]:
    """Every regular file under `root` (sorted, relative); symlinks are refused: a checkpoint must be
    self-contained, and a link could dangle once the folder is renamed or copied."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in dirnames + filenames:
            if (here / name).is_symlink():
                raise CheckpointError(
                    f"checkpoint files must be regular files, but {here / name} is a symlink"
                )
        files.extend((here / name).relative_to(root) for name in sorted(filenames))
    return sorted(files, key=lambda p: p.as_posix())


def build_manifest(root: Path, step: int) -> dict[str, Any]:
    """Describe every file under `root` (except the manifest itself) by relative path, size, sha256."""
    entries = []
    for rel in _walk_files(root):
        if rel.as_posix() == MANIFEST_NAME:
            continue
        full = root / rel
        entries.append(
            {"path": rel.as_posix(), "size": full.stat().st_size, HASH_ALGORITHM: file_sha256(full)}
        )
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "step": step,
        "hash": HASH_ALGORITHM,
        "created_unix": time.time(),
        "files": entries,
    }


def verify(path: str | Path, *, check_hashes: bool = True) -> list[str]:
    """Problems found in checkpoint folder `path` (an empty list means it is complete and intact).

    Checks: the folder and its MANIFEST.json exist and parse, the manifest's step matches the folder
    name, and every listed file exists with the recorded size (and sha256 unless `check_hashes` is
    False). Files not listed in the manifest are not a problem (a user may add notes).
    """
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: not a directory"]
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        return [f"{manifest_path}: missing (checkpoint incomplete or not written by CheckpointManager)"]
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"{manifest_path}: not valid JSON ({exc})"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return [f"{manifest_path}: expected an object with a 'files' list"]
    if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
        return [
            f"{manifest_path}: format_version {manifest.get('format_version')!r}, "
            f"expected {MANIFEST_FORMAT_VERSION}"
        ]
    problems: list[str] = []
    name_step = parse_step(path)
    if name_step is not None and manifest.get("step") != name_step:
        problems.append(
            f"{manifest_path}: records step {manifest.get('step')!r} but the folder is {path.name}"
        )
    for entry in manifest["files"]:
        if not isinstance(entry, dict) or not {"path", "size", HASH_ALGORITHM} <= entry.keys():
            problems.append(f"{manifest_path}: malformed entry {entry!r}")
            continue
        full = path / entry["path"]
        if not full.is_file():
            problems.append(f"{full}: missing")
            continue
        size = full.stat().st_size
        if size != entry["size"]:
            problems.append(f"{full}: size {size} bytes, manifest says {entry['size']} (truncated?)")
            continue
        if check_hashes and file_sha256(full) != entry[HASH_ALGORITHM]:
            problems.append(f"{full}: {HASH_ALGORITHM} differs from the manifest (corrupted)")
    return problems
