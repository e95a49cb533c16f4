"""CheckpointManager: atomic commit of a checkpoint folder, pruning, start-up cleanup, and the choice
of the checkpoint to resume from.

A checkpoint is written into a temp folder, described by a manifest, fsynced, and renamed into place
(the commit); an old one is deleted the same way in reverse (renamed aside, then removed), so every
`step_*` folder is complete at every instant, whatever moment a kill -9 picks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cispo.checkpoint.atomic import fsync_dir, fsync_file, remove_tree_atomic, write_text_atomic
from cispo.checkpoint.layout import (
    ATTEMPT_FILE,
    CHECKPOINTS_DIRNAME,
    LATEST_NAME,
    MANIFEST_NAME,
    STEP_DIR_FORMAT,
    STEP_DIR_RE,
    TMP_PREFIX,
    TMP_STEP_RE,
    TRASH_PREFIX,
    parse_step,
    step_dir_name,
    tmp_dir_name,
    trash_name,
)
from cispo.checkpoint.manifest import CheckpointError, build_manifest, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path


class CheckpointManager:
    """Writes checkpoints atomically under `run_dir/checkpoints`, keeps the last `keep_last` complete
    ones (None keeps all), and finds the one to resume from.

    Creating a manager cleans what a crash left behind: unfinished `.tmp_*` folders are deleted, and a
    temp folder whose manifest is complete and verifies (the crash came between writing the manifest
    and the rename) is promoted into place instead, since it holds a good checkpoint.
    """

    def __init__(self, run_dir: str | Path, keep_last: int | None, *, check_hashes: bool = True,
                 attempt: str | None = None, cleanup: bool = True):
        """`attempt`: the id of this driver attempt (default: the pid), written into every temp folder
        (`ATTEMPT_FILE`) so that workers can check they write into the attempt that created them.
        `cleanup`: clean what a crash left (the run folder's owner only); a reader of another
        process's run (evaluation of a live run) passes False so it never deletes a save in progress."""
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
        ):
            raise ValueError(f"keep_last must be an int >= 1 or None (keep all), got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS_DIRNAME
        self.keep_last = keep_last
        self.check_hashes = check_hashes
        self.attempt = attempt if attempt is not None else str(os.getpid())
        if not self.attempt or not all(ch.isalnum() or ch == "-" for ch in self.attempt):
            raise ValueError(f"attempt must be letters, digits and '-', got {self.attempt!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        if cleanup:
            self._clean_leftovers()

    # -- listing ---------------------------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every `step_*` folder (complete or not), oldest first."""
        found = []
        for child in self.dir.iterdir():
            step = parse_step(child)
            if step is not None and child.is_dir() and not child.is_symlink():
                found.append(CheckpointInfo(step, child))
        return sorted(found, key=lambda c: c.step)

    def path_for(self, step: int) -> Path:
        return self.dir / step_dir_name(step)

    def latest(self) -> Path | None:
        """The folder the `latest` pointer names (not verified), or None without a pointer."""
        pointer = self.dir / LATEST_NAME
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        if STEP_DIR_RE.match(name) is None:
            log.warning("ignoring %s: expected a folder name like step_00000004, got %r", pointer, name)
            return None
        return self.dir / name

    def verify(self, path: str | Path) -> list[str]:
        return verify(path, check_hashes=self.check_hashes)

    # -- writing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self, step: int) -> Iterator[Path]:
        """Yield an empty temp folder to write checkpoint `step` into; commit it on normal exit.

        Commit: manifest (sizes + sha256) -> fsync of every file and folder -> rename into place ->
        `latest` -> prune to `keep_last`. On an exception the temp folder is deleted and nothing else
        changes. An existing folder for the same step is replaced only after the new one is complete.
        """
        final = self.path_for(step)
        tmp = self.dir / tmp_dir_name(step, self.attempt)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            (tmp / ATTEMPT_FILE).write_text(self.attempt + "\n", encoding="utf-8")
            yield tmp
            # Every writer has returned: the id has done its job and is not part of the checkpoint.
            (tmp / ATTEMPT_FILE).unlink(missing_ok=True)
            manifest = build_manifest(tmp, step)
            for entry in manifest["files"]:
                fsync_file(tmp / entry["path"])
            write_text_atomic(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
            for dirpath, _, _ in os.walk(tmp):
                fsync_dir(Path(dirpath))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._commit(tmp, final)
        log.info("checkpoint step %d saved to %s (%d files)", step, final, len(manifest["files"]))
        self._prune(step)

    def _commit(self, tmp: Path, final: Path) -> None:
        trash = None
        if final.exists():
            # Replacing (e.g. a corrupted step N after resuming from an older one): move the old one
            # aside first; a crash between the two renames leaves the new one complete in `tmp`,
            # which the next start-up promotes.
            trash = self.dir / trash_name(final.name, self.attempt)
            log.warning("replacing existing checkpoint %s", final)
            os.replace(final, trash)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        write_text_atomic(self.dir / LATEST_NAME, final.name + "\n")
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _prune(self, new_step: int) -> None:
        """Delete complete checkpoints older than the newest `keep_last` (counting the new one).

        Only folders with a manifest count as complete (the sizes are checked, not the hashes: the
        new one was just hashed while writing). Incomplete `step_*` folders are left alone and
        reported: they are not ours to judge. Checkpoints with a step above `new_step` (another
        timeline, kept after resuming from an older checkpoint) are neither counted nor deleted.
        """
        if self.keep_last is None:
            return
        complete: list[CheckpointInfo] = []
        for ckpt in self.checkpoints():
            if ckpt.step > new_step:
                log.warning(
                    "checkpoint %s is newer than the one just saved (step %d); kept, "
                    "but `latest` points to the new one",
                    ckpt.path,
                    new_step,
                )
                continue
            problems = verify(ckpt.path, check_hashes=False)
            if problems:
                log.warning("not pruning incomplete checkpoint %s: %s", ckpt.path, "; ".join(problems))
                continue
            complete.append(ckpt)
        if not complete or complete[-1].step != new_step:
            # The new checkpoint must be the newest complete one before anything is deleted.
            log.error("checkpoint step %d not found complete after saving; nothing pruned", new_step)
            return
        for ckpt in complete[: -self.keep_last]:
            log.info("deleting old checkpoint %s (keep_last=%d)", ckpt.path, self.keep_last)
            remove_tree_atomic(ckpt.path, self.dir / trash_name(ckpt.path.name, self.attempt))

    def _clean_leftovers(self) -> None:
        for child in sorted(self.dir.iterdir()):
            if not child.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                continue
            match = TMP_STEP_RE.match(child.name)
            if match and child.is_dir():
                final = self.dir / STEP_DIR_FORMAT.format(int(match.group(1)))
                if not final.exists() and not verify(child, check_hashes=self.check_hashes):
                    log.warning("promoting complete checkpoint left in %s to %s", child, final)
                    os.replace(child, final)
                    fsync_dir(self.dir)
                    newest = self.checkpoints()[-1].path
                    if newest == final:
                        write_text_atomic(self.dir / LATEST_NAME, final.name + "\n")
                    continue
            log.warning("removing leftover %s from an interrupted save or prune", child)
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self._clean_half_pruned()

    def _clean_half_pruned(self) -> None:
        """Remove `step_*` folders that an interrupted in-place delete (older versions pruned with a
        plain rmtree) left with a manifest but missing files. Only folders older than the newest
        complete checkpoint qualify (pruning never touched anything newer), and only when every
        problem is a missing file: a truncated or corrupted file is evidence, left for a human."""
        found = self.checkpoints()
        complete = [c for c in found if not verify(c.path, check_hashes=False)]
        if not complete:
            return
        newest = complete[-1].step
        for ckpt in found:
            if ckpt.step >= newest or ckpt in complete:
                continue
            problems = verify(ckpt.path, check_hashes=False)
            if problems and all(p.endswith(": missing") for p in problems) and (ckpt.path / MANIFEST_NAME).is_file():
                log.warning("removing %s: half-deleted by an interrupted prune (%d files missing)",
                            ckpt.path, len(problems))
                remove_tree_atomic(ckpt.path, self.dir / trash_name(ckpt.path.name, self.attempt))

    # -- resuming --------------------------------------------------------------------------------

    def find_resume(self, resume: str | Path | None) -> Path | None:
        """The checkpoint folder to resume from, or None to start fresh.

        - "none" / None: None.
        - "auto": the `latest` checkpoint if it verifies, else the newest one that verifies; every
          broken one is logged (path and reason) and skipped. None if there are no checkpoints;
          CheckpointError if there are some but none verifies (starting fresh would silently discard
          the run's progress: say `resume=none` to mean it).
        - a path (or a folder name inside `checkpoints/`): that checkpoint, verified; CheckpointError
          naming the file when it is broken.
        """
        if resume is None or (isinstance(resume, str) and resume.strip().lower() == "none"):
            return None
        if isinstance(resume, str) and resume.strip().lower() == "auto":
            return self._find_auto()
        if not isinstance(resume, (str, Path)):
            raise ValueError(f"resume must be 'auto', 'none' or a checkpoint path, got {resume!r}")
        path = Path(resume).expanduser()
        if not path.exists() and (self.dir / path).exists():
            path = self.dir / path
        if not path.exists():
            raise CheckpointError(
                f"resume={str(resume)!r}: no such checkpoint folder (expected 'auto', 'none', a path, "
                f"or a folder name inside {self.dir})"
            )
        problems = self.verify(path)
        if problems:
            raise CheckpointError(
                f"resume={str(resume)!r}: checkpoint {path} failed verification: " + "; ".join(problems)
            )
        return path

    def _find_auto(self) -> Path | None:
        candidates = [c.path for c in reversed(self.checkpoints())]
        latest = self.latest()
        if latest is not None and latest in candidates:
            candidates.remove(latest)
            candidates.insert(0, latest)
        rejected = []
        for path in candidates:
            problems = self.verify(path)
            if not problems:
                if rejected:
                    log.warning("resume=auto: falling back to %s", path)
                return path
            log.warning(
                "resume=auto: skipping broken checkpoint %s: %s", path, "; ".join(problems)
            )
            rejected.append(f"{path.name}: {'; '.join(problems)}")
        if rejected:
            raise CheckpointError(
                f"resume=auto: none of the {len(rejected)} checkpoints in {self.dir} verifies "
                f"({' | '.join(rejected)}); use resume=none to start over deliberately"
            )
        return None
