"""One cgroup per sandbox run: the kernel bounds its memory (shm, memfd and tmpfs pages included)
and its number of tasks, and lists every task in it, so nothing the program starts can hide.

cgroup v1 (a `memory` and a `pids` hierarchy, as on these machines) or v2 (one unified tree with
both controllers) is detected from /proc/self/mountinfo. Runs live under `<controller root>/
cispo-sandbox/<pid>-<random>`; a run's cgroup is emptied (SIGKILL to every task, repeated until
none is left) and removed when the run ends, and cgroups of scorer processes that died are removed
by the next one. Creating cgroups needs root, or, for an ordinary user, a delegated cgroup v2
subtree (the process's own cgroup, writable by it, e.g. made by `systemd-run --user --scope -p
Delegate=yes`): the scorer's processes are then moved into a leaf `cispo-scorer` (cgroup v2 allows
no processes in a cgroup that hands controllers down) and runs live under `<own>/cispo-sandbox`.
Without either, `detect` says why and the sandbox bounds resources with rlimits (docs/rewards.md).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PARENT = "cispo-sandbox"
SCORER_LEAF = "cispo-scorer"  # delegated v2: where the scorer's own processes go
CONTROLLERS = ("memory", "pids")
ENABLE = " ".join("+" + c for c in CONTROLLERS)
DELEGATION_HINT = "start the run in a delegated scope: systemd-run --user --scope -p Delegate=yes <command>"
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


def _is_root() -> bool:
    return os.geteuid() == 0


def _own_cgroup_v2() -> str | None:
    """This process's cgroup v2 path (the `0::` line of /proc/self/cgroup), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    return next((line[3:] for line in lines if line.startswith("0::")), None)


def detect() -> Support:
    """Probe once per process: v1 with memory+pids hierarchies, else v2 with both controllers
    (as root: a tree under the root cgroup; otherwise: this process's delegated subtree)."""
    mounts = _mounts()
    v1 = {}
    for point, fstype, opts in mounts:
        if fstype == "cgroup":
            for c in CONTROLLERS:
                if c in opts and c not in v1:
                    v1[c] = point
    unified = next((point for point, fstype, _ in mounts if fstype == "cgroup2"), None)
    root = _is_root()
    try:
        if all(c in v1 for c in CONTROLLERS):
            return _detect_v1(v1, root)
        if unified is not None and root:
            return _detect_v2_root(Path(unified))
    except OSError as e:
        return Support(None, (), f"cannot prepare the cgroup folder: {e}")
    if unified is not None:
        own = _own_cgroup_v2()
        if own is None:
            return Support(None, (), "cgroup v2 is mounted but /proc/self/cgroup names no v2 cgroup")
        return detect_delegated(Path(unified), own)
    return Support(None, (), "no cgroup memory/pids controllers mounted")


def _detect_v1(points: dict[str, str], root: bool) -> Support:
    """v1: `cispo-sandbox` in each controller's hierarchy (made by root, or by an administrator
    who created it and gave it to this user)."""
    roots = []
    for c in CONTROLLERS:
        parent = Path(points[c]) / PARENT
        try:
            _prepare(parent)
        except PermissionError:
            if root:
                raise
            return Support(None, (), f"cgroup v1 and not root: cannot create {parent} (an administrator can "
                                     f"create it in the memory and pids hierarchies and chown it to this user)")
        if not root and not os.access(parent, os.W_OK):
            return Support(None, (), f"cgroup v1 and not root: {parent} is not writable by this user")
        roots.append(str(parent))
    return Support(1, tuple(roots), "")


def _detect_v2_root(unified: Path) -> Support:
    """v2 as root: `cispo-sandbox` under the root cgroup (which may hold processes itself)."""
    available = set((unified / "cgroup.controllers").read_text().split())
    if not all(c in available for c in CONTROLLERS):
        return Support(None, (), f"cgroup v2 at {unified} lacks the {'/'.join(CONTROLLERS)} controllers")
    parent = unified / PARENT
    _prepare(parent)
    (unified / "cgroup.subtree_control").write_text(ENABLE)
    (parent / "cgroup.subtree_control").write_text(ENABLE)
    return Support(2, (str(parent),), "")


def detect_delegated(unified: Path, own: str) -> Support:
    """v2 without root: use this process's own cgroup when it is delegated (writable) and offers
    memory and pids. Its processes move to the leaf `cispo-scorer` (a v2 cgroup that enables
    controllers for its children may hold no processes), then runs go under `cispo-sandbox`.
    `unified` and `own` are parameters so a fake cgroupfs folder can stand in for the kernel's."""
    node = unified / own.lstrip("/")
    base = node.parent if node.name == SCORER_LEAF else node  # already moved by an earlier scorer
    if not all(os.access(base / name, os.W_OK) for name in ("", "cgroup.procs", "cgroup.subtree_control")):
        return Support(None, (), f"cgroup v2: {base} is not delegated to this user; {DELEGATION_HINT}")
    try:
        available = set((base / "cgroup.controllers").read_text().split())
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            return Support(None, (), f"cgroup v2: {base} is delegated without the {'/'.join(missing)} controller(s) "
                                     f"({DELEGATION_HINT})")
        if not all(c in (base / "cgroup.subtree_control").read_text().split() for c in CONTROLLERS):
            leaf = base / SCORER_LEAF
            _prepare(leaf)
            for pid in (base / "cgroup.procs").read_text().split():
                _move(pid, leaf)
            (base / "cgroup.subtree_control").write_text(ENABLE)
        parent = base / PARENT
        _prepare(parent)
        (parent / "cgroup.subtree_control").write_text(ENABLE)
    except OSError as e:
        return Support(None, (), f"cgroup v2: cannot use the delegated cgroup {base}: {e} ({DELEGATION_HINT})")
    return Support(2, (str(parent),), "")


def _move(pid: str, leaf: Path) -> None:
    """Move one process into `leaf` (one pid per write, as cgroupfs wants); gone is fine."""
    try:
        (leaf / "cgroup.procs").write_text(pid)
    except ProcessLookupError:
        pass


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
