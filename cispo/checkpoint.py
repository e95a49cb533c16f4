"""Atomic, verifiable checkpoints; RNG state capture; graceful stop on SIGTERM/SIGINT.

Layout (DESIGN.md)::

    run_dir/checkpoints/
        step_00000004/          # complete: renamed into place only after MANIFEST.json is written
            MANIFEST.json       # every file: relative path, size, sha256
            model/ ...          # whatever the caller wrote
        .tmp_step_00000006_<pid>/   # being written (or left over by a crash)
        latest                  # text file: "step_00000004"

Why a manifest and not just "the folder exists": a folder renamed into place is complete when it was
written, but a disk filling up, a copy with `cp -r` interrupted, or bit rot later can still break it.
Resuming from a broken checkpoint is worse than resuming from an older one, so `find_resume("auto")`
verifies every file (sha256 of a 500 MB model costs about 0.4 s on these machines) and falls back.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
LATEST_NAME = "latest"
TMP_PREFIX = ".tmp_"
TRASH_PREFIX = ".trash_"
STEP_DIR_FORMAT = "step_{:08d}"
STEP_DIR_RE = re.compile(r"^step_(\d{8,})$")
TMP_STEP_RE = re.compile(r"^\.tmp_step_(\d{8,})_\d+$")
MANIFEST_FORMAT_VERSION = 1
HASH_ALGORITHM = "sha256"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupted (the message names the path and the reason)."""


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint taken after `step` (zero-padded so names sort by step)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return STEP_DIR_FORMAT.format(step)


def parse_step(path: Path) -> int | None:
    """The step of a `step_NNNNNNNN` folder, or None if the name does not match."""
    match = STEP_DIR_RE.match(path.name)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------------
# Files: hashing, fsync, manifest
# ---------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, HASH_ALGORITHM).hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation inside `path` durable (a rename is only persistent once its dir is)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees either the old or the new content, never half."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}_{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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


# ---------------------------------------------------------------------------------------------------
# The manager
# ---------------------------------------------------------------------------------------------------


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

    def __init__(self, run_dir: str | Path, keep_last: int | None, *, check_hashes: bool = True):
        if keep_last is not None and (
            isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
        ):
            raise ValueError(f"keep_last must be an int >= 1 or None (keep all), got {keep_last!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS_DIRNAME
        self.keep_last = keep_last
        self.check_hashes = check_hashes
        self.dir.mkdir(parents=True, exist_ok=True)
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
        tmp = self.dir / f"{TMP_PREFIX}{final.name}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
            manifest = build_manifest(tmp, step)
            for entry in manifest["files"]:
                _fsync_file(tmp / entry["path"])
            write_text_atomic(tmp / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
            for dirpath, _, _ in os.walk(tmp):
                _fsync_dir(Path(dirpath))
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
            trash = self.dir / f"{TRASH_PREFIX}{final.name}_{os.getpid()}"
            log.warning("replacing existing checkpoint %s", final)
            os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(self.dir)
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
            shutil.rmtree(ckpt.path)

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
                    _fsync_dir(self.dir)
                    newest = self.checkpoints()[-1].path
                    if newest == final:
                        write_text_atomic(self.dir / LATEST_NAME, final.name + "\n")
                    continue
            log.warning("removing leftover %s from an interrupted save", child)
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

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


# ---------------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------------


def _bytes_tensor_to_b64(tensor: Any) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _b64_to_bytes_tensor(text: str) -> Any:
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of python `random`, numpy, torch CPU and (if available) torch CUDA, as
    a JSON-serialisable dict (about 20 kB) for `trainer_state.json`.

    Generators the caller owns (np.random.Generator, torch.Generator, a sampler's own RNG) are not
    global state: checkpoint those with their owner.
    """
    import random

    import numpy as np
    import torch

    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch_cpu": _bytes_tensor_to_b64(torch.get_rng_state()),
        "torch_cuda": None,
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [_bytes_tensor_to_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`. CUDA states are restored only when CUDA is available (with a
    warning otherwise, e.g. a GPU checkpoint resumed on CPU)."""
    import random

    import numpy as np
    import torch

    expected = {"python", "numpy", "torch_cpu", "torch_cuda"}
    if not isinstance(state, dict) or not expected <= state.keys():
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"rng state must be a dict with keys {sorted(expected)}, got {got}")
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(_b64_to_bytes_tensor(state["torch_cpu"]))
    cuda = state["torch_cuda"]
    if cuda is not None:
        if torch.cuda.is_available():
            if len(cuda) != torch.cuda.device_count():
                log.warning(
                    "checkpoint holds %d CUDA RNG states but %d devices are visible; restoring the "
                    "first %d",
                    len(cuda),
                    torch.cuda.device_count(),
                    min(len(cuda), torch.cuda.device_count()),
                )
            for index, text in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(_b64_to_bytes_tensor(text), device=index)
        else:
            log.warning("checkpoint holds CUDA RNG states but CUDA is not available; not restored")


# ---------------------------------------------------------------------------------------------------
# Graceful stop
# ---------------------------------------------------------------------------------------------------

Handler = Callable[[int, FrameType | None], Any] | int | None


class GracefulStop:
    """First SIGTERM/SIGINT: set `requested` (the loop checkpoints after the current step and exits).
    Second one: the previous handlers come back and the signal is re-delivered, so a user pressing
    Ctrl-C twice (or a scheduler sending SIGTERM twice) stops the process right away.

    Use as a context manager (or `install()` / `uninstall()`); only from the main thread, because
    Python delivers signals there only.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        if not signals:
            raise ValueError("signals must name at least one signal")
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Handler] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str | None:
        return None if self.received is None else signal.Signals(self.received).name

    def install(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("GracefulStop.install() must be called from the main thread")
        if self._previous:
            raise RuntimeError("GracefulStop is already installed")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def __enter__(self) -> "GracefulStop":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                "received %s: stopping after the current step (with a checkpoint); "
                "send it again to stop immediately",
                signal.Signals(signum).name,
            )
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.uninstall()
        log.warning("received %s again: stopping now", signal.Signals(signum).name)
        if callable(previous):
            previous(signum, frame)  # e.g. Python's default SIGINT handler: KeyboardInterrupt
        elif previous == signal.SIG_DFL or previous is None:
            os.kill(os.getpid(), signum)  # handler is now SIG_DFL: the default action happens
