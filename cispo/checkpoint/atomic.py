"""Durable, all-or-nothing file operations: the one atomic-write helper of the project (checkpoints,
`latest`, the run config, metrics.jsonl rewrites) and the rename-then-delete used for pruning."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cispo.checkpoint.layout import TMP_PREFIX


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename/creation inside `path` durable (a rename is only persistent once its dir is)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees either the old or the new content, never half.

    On any error (disk full, I/O error) the temp file is removed and `path` is unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}_{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_tree_atomic(path: Path, trash: Path) -> None:
    """Delete folder `path` as a commit is made, in reverse: rename it to `trash` (one atomic step, so
    `path` is either whole or gone), make the rename durable, then remove `trash`. A kill during the
    removal leaves only `trash`, which the next start-up deletes."""
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash)
