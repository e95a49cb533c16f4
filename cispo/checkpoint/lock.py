"""Single ownership of a run folder: one live driver at a time, and no worker of a dead one.

A driver takes an exclusive `flock` on `run_dir/.owner.lock` for its whole life. The kernel drops the
lock the instant the process dies (kill -9 included), so a stale lock never blocks a relaunch; a
second launch on a folder whose owner is alive waits `wait_s`, then refuses (`RunLockedError`).

The lock dies with the driver, but its Ray workers do not: they live in their own process groups and
were seen running 2-3 s after the driver was killed, one of them finishing a write into the dead
run's temp checkpoint folder. So the owner also records its workers (host, pid, process start time)
in `run_dir/.owner.json`; a new owner waits for those still alive on this host to exit and kills the
ones left after `wait_s` before it touches the folder. (The start time guards against pid reuse.
Workers on other hosts cannot be checked from here; they are refused by the attempt check instead:
a worker writes only into a temp folder that exists and carries its driver's attempt id.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cispo.checkpoint.atomic import write_text_atomic
from cispo.checkpoint.layout import LOCK_NAME, OWNER_NAME

log = logging.getLogger(__name__)

ATTEMPT_ID_BYTES = 4
POLL_S = 0.1


class RunLockedError(RuntimeError):
    """Another live process owns the run folder."""


def new_attempt_id() -> str:
    """`<pid>-<8 hex>`: unique per driver attempt (in-run restarts get a new one too)."""
    return f"{os.getpid()}-{secrets.token_hex(ATTEMPT_ID_BYTES)}"


def process_start_time(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), or
    None if there is no such process (or it is a zombie: dead, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass
class WorkerRecord:
    """One worker process of the owner: enough to find it again and not confuse it with a reused pid."""

    role: str
    host: str
    pid: int
    start_time: int | None

    def alive_here(self) -> bool:
        return self.host == socket.gethostname() and self.start_time is not None and \
            process_start_time(self.pid) == self.start_time


@dataclass
class RunLock:
    """Exclusive owner of `run_dir` (use as a context manager, or `acquire()` / `release()`)."""

    run_dir: Path
    wait_s: float = 60.0
    attempt: str = field(default_factory=new_attempt_id)
    _fd: int | None = None
    workers: list[WorkerRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if not self.wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0, got {self.wait_s!r}")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock (waiting up to `wait_s` for a live owner), then wait for or kill the workers a
        dead previous owner left, then record this owner."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    owner = self.read_owner()
                    who = f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
                    raise RunLockedError(
                        f"{self.run_dir} is in use by {who} (lock {self.run_dir / LOCK_NAME} held for more "
                        f"than fault_tolerance.lock_wait_s={self.wait_s:g} s); stop that run first or "
                        f"choose another run_dir") from None
                time.sleep(POLL_S)
        self._fd = fd
        self._reap_previous_workers()
        self._write_owner()
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            (self.run_dir / OWNER_NAME).unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- the owner record ------------------------------------------------------------------------

    def read_owner(self) -> dict[str, Any] | None:
        path = self.run_dir / OWNER_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None
        return data if isinstance(data, dict) else None

    def set_workers(self, workers: list[WorkerRecord]) -> None:
        """Record the worker processes of this attempt (called whenever the worker groups change)."""
        if self._fd is None:
            raise RuntimeError("RunLock.set_workers() before acquire()")
        self.workers = list(workers)
        self._write_owner()

    def _write_owner(self) -> None:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "attempt": self.attempt,
                  "started_unix": time.time(), "workers": [vars(w) for w in self.workers]}
        write_text_atomic(self.run_dir / OWNER_NAME, json.dumps(record, indent=1) + "\n")

    def _reap_previous_workers(self) -> None:
        owner = self.read_owner()
        if not owner:
            return
        records = []
        for w in owner.get("workers") or []:
            try:
                records.append(WorkerRecord(str(w["role"]), str(w["host"]), int(w["pid"]), w.get("start_time")))
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring malformed worker entry %r in %s", w, self.run_dir / OWNER_NAME)
        alive = [w for w in records if w.alive_here()]
        if not alive:
            return
        log.warning("waiting up to %g s for %d worker(s) of the previous owner (pid %s) to exit: %s",
                    self.wait_s, len(alive), owner.get("pid"), ", ".join(f"{w.role} pid {w.pid}" for w in alive))
        deadline = time.monotonic() + self.wait_s
        while alive and time.monotonic() < deadline:
            time.sleep(POLL_S)
            alive = [w for w in alive if w.alive_here()]
        for w in alive:
            log.warning("killing %s pid %d left by the previous owner of %s", w.role, w.pid, self.run_dir)
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.wait_s
        while alive and time.monotonic() < deadline:
            time.sleep(POLL_S)
            alive = [w for w in alive if w.alive_here()]
        if alive:
            raise RunLockedError(f"{self.run_dir}: workers of the previous owner still alive after SIGKILL: "
                                 + ", ".join(f"{w.role} pid {w.pid}" for w in alive))
