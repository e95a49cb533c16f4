"""Running code as an ordinary user from a root process (the suite and the benchmarks run as root):
an unprivileged account, created once and reused, and a `preexec_fn` that drops to it.

If the interpreter lives where others cannot reach it (pyenv under /root, mode 700), the child gets a
private mount namespace in which a tmpfs covers that folder and only the interpreter's own tree is
bound back: what an ordinary user's own Python would look like. Nothing on the machine changes.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import subprocess
from pathlib import Path

USER = "cispo_sbx_test"  # the unprivileged account (created once, reused)


class NoUnprivilegedUser(RuntimeError):
    """No unprivileged account can be had here (no useradd, or it failed)."""


CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE, MS_MOVE = 4096, 16384, 1 << 18, 8192
HIDDEN_ROOT_OPTIONS = "mode=755"

def account() -> pwd.struct_passwd:
    """The unprivileged account: reused if there, else created (idempotent)."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise NoUnprivilegedUser("cannot create an unprivileged user: no useradd")
    done = subprocess.run([useradd, "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                          capture_output=True, text=True, check=False)
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        raise NoUnprivilegedUser(f"cannot create an unprivileged user: useradd said {done.stderr.strip()!r}") from None


def world_reachable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _hidden_ancestor(path: Path) -> Path | None:
    """The topmost folder above `path` that others cannot traverse (None: all reachable)."""
    blocked = [p for p in [path, *path.parents] if not p.stat().st_mode & 0o001]
    return blocked[-1] if blocked else None


def _mount(libc: ctypes.CDLL, src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def drop_to(user: pwd.struct_passwd, interpreter: Path, stage: str):
    """preexec_fn of the child: (if needed) make the interpreter reachable, then become `user`."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    hidden = _hidden_ancestor(interpreter)

    def enter() -> None:
        if hidden is not None:
            if libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
            _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
            _mount(libc, str(interpreter), stage, None, MS_BIND | MS_REC)
            _mount(libc, "tmpfs", str(hidden), "tmpfs", 0, HIDDEN_ROOT_OPTIONS)
            os.makedirs(interpreter, exist_ok=True)
            _mount(libc, stage, str(interpreter), None, MS_MOVE)
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    return enter


