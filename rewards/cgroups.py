"""One cgroup per sandbox run: the kernel bounds its memory (shm, memfd and tmpfs pages included)
and its number of tasks, and lists every task in it, so nothing the program starts can hide.

cgroup v1 (a `memory` and a `pids` hierarchy, as on these machines) or v2 (one unified tree with
both controllers) is detected from /proc/self/mountinfo. Runs live under `<controller root>/
cispo-sandbox/<pid>-<random>`; a run's cgroup is emptied (SIGKILL to every task, repeated until
none is left) and removed when the run ends, and cgroups of scorer processes that died are removed
by the next one. Creating cgroups needs root (or a delegated tree): without it `detect` says why
and the sandbox falls back to what it can still enforce (see docs/rewards.md).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PARENT = "cispo-sandbox"
CONTROLLERS = ("memory", "pids")
EMPTY_ROUNDS = 200  # attempts to kill what is left in a run's cgroup before giving up on removing it
EMPTY_PAUSE_S = 0.005
MB = 1 << 20


@dataclass(frozen=True)
class Support:
    """Where run cgroups can be made here, or why not."""

    version: int | None  # 1, 2, or None when unavailable
    roots: tuple[str, ...]  # v1: the parent folder in each controller's hierarchy; v2: one folder
    note: str  # empty when available; else what is missing


@dataclass
class RunCgroup:
    """The cgroup(s) of one sandbox run."""

    version: int
    dirs: tuple[str, ...]
    memory_dir: str

    def spec(self) -> dict:
        """What the harness needs to join it and read it (paths, opened before its chroot)."""
        return {"version": self.version, "dirs": list(self.dirs), "memory": self.memory_dir}


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    found = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] in ("cgroup", "cgroup2"):
            found.append((fields[4].replace("\\040", " "), tail[0], set(tail[2].split(","))))
    return found


def _prepare(folder: Path) -> None:
    folder.mkdir(exist_ok=True)


def detect() -> Support:
    """Probe once per process: v1 with memory+pids hierarchies, else v2 with both controllers."""
    if os.geteuid() != 0:
        return Support(None, (), "not root: cannot create cgroups")
    mounts = _mounts()
    v1 = {}
    for point, fstype, opts in mounts:
        if fstype == "cgroup":
            for c in CONTROLLERS:
                if c in opts and c not in v1:
                    v1[c] = point
    try:
        if all(c in v1 for c in CONTROLLERS):
            roots = []
            for c in CONTROLLERS:
                parent = Path(v1[c]) / PARENT
                _prepare(parent)
                roots.append(str(parent))
            return Support(1, tuple(roots), "")
        unified = next((point for point, fstype, _ in mounts if fstype == "cgroup2"), None)
        if unified is not None:
            available = set((Path(unified) / "cgroup.controllers").read_text().split())
            if all(c in available for c in CONTROLLERS):
                parent = Path(unified) / PARENT
                _prepare(parent)
                enable = " ".join("+" + c for c in CONTROLLERS)
                (Path(unified) / "cgroup.subtree_control").write_text(enable)
                (parent / "cgroup.subtree_control").write_text(enable)
                return Support(2, (str(parent),), "")
            return Support(None, (), f"cgroup v2 at {unified} lacks the {'/'.join(CONTROLLERS)} controllers")
    except OSError as e:
        return Support(None, (), f"cannot prepare the cgroup folder: {e}")
    return Support(None, (), "no cgroup memory/pids controllers mounted")


def create(support: Support, memory_bytes: int, max_tasks: int) -> RunCgroup:
    """A fresh run cgroup with its limits set (swap included where the kernel accounts it)."""
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    dirs = []
    try:
        for root in support.roots:
            d = Path(root) / name
            d.mkdir()
            dirs.append(str(d))
        if support.version == 1:
            memory, pids = Path(dirs[0]), Path(dirs[1])
            (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
            if (memory / "memory.memsw.limit_in_bytes").exists():
                (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (pids / "pids.max").write_text(str(max_tasks))
            return RunCgroup(1, tuple(dirs), str(memory))
        d = Path(dirs[0])
        (d / "memory.max").write_text(str(memory_bytes))
        if (d / "memory.swap.max").exists():
            (d / "memory.swap.max").write_text("0")
        (d / "pids.max").write_text(str(max_tasks))
        return RunCgroup(2, tuple(dirs), str(d))
    except OSError:
        for d in dirs:
            _remove(Path(d), support.version or 1)
        raise


def tasks(folder: Path, version: int) -> list[int]:
    """Live tasks (thread ids) in a cgroup folder, as this process's pid namespace sees them."""
    name = "tasks" if version == 1 else "cgroup.threads"
    try:
        return [int(t) for t in (folder / name).read_text().split() if t.isdigit() and int(t) > 0]
    except OSError:
        return []


def oom_kills(run: RunCgroup) -> int:
    """Processes the kernel has OOM-killed in the run's cgroup."""
    name = "memory.oom_control" if run.version == 1 else "memory.events"
    try:
        for line in (Path(run.memory_dir) / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _remove(folder: Path, version: int) -> bool:
    """Kill every task in the folder until none is left, then remove it; False if it would not go."""
    for _ in range(EMPTY_ROUNDS):
        left = tasks(folder, version)
        for tid in left:
            try:
                os.kill(tid, signal.SIGKILL)
            except OSError:
                pass
        try:
            folder.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(EMPTY_PAUSE_S)
    return False


def destroy(run: RunCgroup) -> bool:
    """Kill what is left of the run (a daemon, a zombie leader's threads) and remove its cgroup."""
    return all([_remove(Path(d), run.version) for d in run.dirs])


def remove_stale(support: Support) -> int:
    """Remove run cgroups whose scorer process is gone (it was killed mid-run)."""
    removed = 0
    for root in support.roots:
        try:
            entries = list(Path(root).iterdir())
        except OSError:
            continue
        for entry in entries:
            pid_text = entry.name.split("-", 1)[0]
            if not entry.is_dir() or not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            removed += _remove(entry, support.version or 1)
    return removed
