"""Sandbox harness: runs one untrusted program for its tests. Standard library only.

Started by `rewards.sandbox` as `python -I -S -B _harness.py`, normally as PID 1 of fresh
mount/net/pid/ipc/uts namespaces (root there, before it drops privileges). Started by an ordinary
user, those namespaces sit in a fresh user namespace where this user is root: the harness then
enters its minimal root with pivot_root (the host tree is gone from the mount namespace), forbids
nested user namespaces and drops every capability instead of switching uid (only one uid is
mapped). Never imported by the package itself.

Protocol. stdin: an 8-byte big-endian length, a JSON payload, then a nonce that this process
reads only after every test has run (so no forked test process ever holds it). stdout: one JSON
line that echoes the nonce. A control socket (SOCK_SEQPACKET, fd named in the payload) carries
the judge's `start` / `stop` / `finish` and this process's `ready` / `started` / `ended` events.

Trust boundary. The tests never run here: for `calls` tests (asserts, check) a forked child
runs the setup and the program, then answers calls (`lookup`, `call`, `getattr`) on a fresh
socket whose other end goes to the trusted judge with the `started` event; values cross as the
strict encoding of `_wire.py`. This process (the supervisor) runs no untrusted code: it starts
each child, bounds it (time, output, memory, processes) and kills every process of the sandbox
after each test. For `io` tests the child runs the program on stdin and the caller compares the
captured stdout. When the caller made a cgroup for this run, this process joins it before
anything else, so the kernel bounds memory (shm and tmpfs pages included) and processes, and
membership finds every process, a zombie leader's live threads included.
"""

import builtins
import ctypes
import importlib.util
import errno
import json
import math
import os
import re
import resource
import select
import signal
import socket
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
ST_NOEXEC = 8  # statvfs flag of a mount that a user namespace may not lift (kept on its binds)
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 28, 47, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
# SECBIT_NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, NO_CAP_AMBIENT_RAISE, each with its lock: uid 0 in the
# user namespace never regains capabilities, not even through execve
SECUREBITS_LOCKED_DOWN = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
LINUX_CAPABILITY_VERSION_3 = 0x20080522
OOM_SCORE_FIRST = "1000"  # without an OOM exemption the sandbox is what the kernel kills first
# per machine: pivot_root's syscall number; seccomp's audit arch and memfd_create's number
SYSCALLS = {"x86_64": (155, 0xC000003E, 319), "aarch64": (41, 0xC00000B7, 279)}
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
SECCOMP_DATA_NR, SECCOMP_DATA_ARCH = 0, 4

ROOT_TMPFS_OPTIONS = "size=1m,mode=755"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("null", "zero", "full", "random", "urandom")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
WORK_DIR = "/sandbox"
SWEEP_ROUNDS = 200
SWEEP_PAUSE_S = 0.005
POLL_S = 0.05
REPORT_CAP = 4096
DETAIL_CAP = 300
NONCE_CAP = 256
# imported before dropping privileges when the interpreter's own files are not readable by others
PRELOAD = (
    "array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal", "enum", "fractions",
    "functools", "hashlib", "heapq", "io", "itertools", "json", "math", "numbers", "operator", "queue", "random",
    "re", "statistics", "string", "tempfile", "textwrap", "time", "typing", "unicodedata",
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_CONTROL = {ord("\t"): " ", ord("\n"): " ", ord("\r"): " "}
FRAME_HEADER = 8
CTL_MAX = 1 << 16
ATTR_NAME = re.compile(r"[A-Za-z_]\w*")
# IPC-namespace sysctls set from the payload's limits (namespace mode: they bind only this sandbox)
IPC_SYSCTLS = ("shmmax", "shmall", "shmmni", "msgmnb", "msgmni")


def _load_wire():
    """The value encoding shared with the judge, loaded from beside this file (before any chroot)."""
    spec = importlib.util.spec_from_file_location("_wire", os.path.join(os.path.dirname(os.path.abspath(__file__)), "_wire.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wire = _load_wire()


def _b(s):
    return None if s is None else s.encode()


def mount(src, target, fstype, flags, data=None):
    if _libc.mount(_b(src), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")


def prctl(option, arg, arg3=0):
    if _libc.prctl(option, arg, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        data = os.read(fd, n - got)
        if not data:
            raise EOFError("payload truncated")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ----------------------------------------------------------------------------- isolation


def _inside(path, roots):
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _bind_ro(src, dst, *, is_file=False, nodev=True):
    if is_file:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    else:
        os.makedirs(dst, exist_ok=True)
    mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (MS_NODEV if nodev else 0)
    if os.statvfs(src).f_flag & ST_NOEXEC:  # in a user namespace a remount may not drop it
        flags |= MS_NOEXEC
    mount(None, dst, None, flags)


def build_root(root, uid, disk_mb, inodes, extra_paths, pivot=False):
    """Make `root` a minimal read-only tree (system dirs, the interpreter, /dev, /proc, /work) and
    enter it: chroot, or (pivot) pivot_root, which also removes the host tree from the namespace."""
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, ROOT_TMPFS_OPTIONS)
    bound = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), root + d)
        elif os.path.isdir(d):
            _bind_ro(d, root + d)
            bound.append(os.path.realpath(d))
    for p in extra_paths:
        if not p or not os.path.isdir(p):
            continue
        real = os.path.realpath(p)
        if _inside(real, bound):
            continue
        _bind_ro(real, root + p)
        bound.append(real)
    for f in SYSTEM_FILES:
        if os.path.isfile(f):
            _bind_ro(os.path.realpath(f), root + f, is_file=True)
    os.makedirs(root + "/dev")
    for name in DEVICES:
        if os.path.exists("/dev/" + name):
            _bind_ro("/dev/" + name, root + "/dev/" + name, is_file=True, nodev=False)
    for name, target in DEV_LINKS:
        os.symlink(target, root + "/dev/" + name)
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # read-only sysctls: the IPC limits below are writable by the user namespace's uid 0 even
    # without capabilities, and nothing else there is the program's business
    _bind_ro(root + "/proc/sys", root + "/proc/sys")
    if os.path.lexists(root + WORK_DIR):
        raise FileExistsError(f"{WORK_DIR} collides with a bound path")
    os.makedirs(root + WORK_DIR)
    owner = 0 if uid is None else uid
    mount("tmpfs", root + WORK_DIR, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={disk_mb}m,nr_inodes={inodes},mode=700,uid={owner},gid={owner}")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, ROOT_TMPFS_OPTIONS)
    if pivot and _machine_syscalls() is not None:
        _pivot_root(root)
    else:
        os.chroot(root)
    os.chdir(WORK_DIR)


def _machine_syscalls():
    return SYSCALLS.get(os.uname().machine)


def _pivot_root(root):
    """Make `root` the root of this mount namespace and detach the old one (pivot_root(2)'s
    `pivot_root(".", ".")` recipe): no path, fd or `..` leads back to the host tree."""
    os.chdir(root)
    if _libc.syscall(_machine_syscalls()[0], b".", b".") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")
    if _libc.umount2(b".", MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount of the old root: {os.strerror(err)}")
    os.chdir("/")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities():
    """User-namespace mode: uid 0 here is the only mapped uid, so instead of switching uid the
    harness gives up every capability for good (bounding set, ambient set, securebits so that
    execve cannot restore them, then capset to nothing) and checks that none is left."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN)
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    with open("/proc/self/status") as fh:
        caps = {k: v.strip() for k, _, v in (line.partition(":") for line in fh) if k.startswith("Cap")}
    if any(int(caps.get(k, "1"), 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")):
        raise OSError(errno.EPERM, f"capabilities left after dropping them: {caps}")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def memfd_filter():
    """A seccomp filter refusing memfd_create (EPERM) and every syscall of another ABI (i386,
    x32): without a cgroup nothing would count memfd pages. None on an unknown machine."""
    known = _machine_syscalls()
    if known is None:
        return None
    _, arch, memfd_nr = known
    deny = SECCOMP_RET_ERRNO | errno.EPERM
    program = [
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        (BPF_JEQ_K, 0, 4, arch),  # another ABI: deny
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
        (BPF_JGE_K, 2, 0, X32_SYSCALL_BIT),  # x32: deny
        (BPF_JEQ_K, 1, 0, memfd_nr),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET_K, 0, 0, deny),
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*op) for op in program])
    return _SockFprog(len(program), filters), filters  # the array must outlive the program


def install_filter(compiled):
    """Install a filter made by `memfd_filter` (no_new_privs is already set)."""
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(compiled[0]))


class Cgroup:
    """The run's cgroup (made by the caller), reached through directory fds that survive the chroot."""

    def __init__(self, spec):
        self.version = spec["version"]
        self.oom_exempt = False
        self.fds = []
        self.memory_fd = None
        for path in spec["dirs"]:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            self.fds.append(fd)
            if path == spec.get("memory"):
                self.memory_fd = fd
        for fd in self.fds:  # join: everything forked from here on is bounded and found by the kernel
            self._write(fd, "cgroup.procs", "0")

    @staticmethod
    def _write(dir_fd, name, text):
        fd = os.open(name, os.O_WRONLY, dir_fd=dir_fd)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    @staticmethod
    def _read(dir_fd, name):
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
        try:
            chunks = []
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    return b"".join(chunks).decode("ascii", "replace")
                chunks.append(data)
        finally:
            os.close(fd)

    def tasks(self):
        """Every live thread in the cgroup (ids as this pid namespace sees them)."""
        name = "tasks" if self.version == 1 else "cgroup.threads"
        found = set()
        for line in self._read(self.fds[0], name).split():
            if line.isdigit() and int(line) > 0:
                found.add(int(line))
        return found

    def oom_kills(self):
        """How many processes the kernel has OOM-killed in this cgroup so far."""
        if self.memory_fd is None:
            return 0
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in self._read(self.memory_fd, name).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0


def _write_file(path, text):
    with open(path, "w") as fh:
        fh.write(text)


def isolate(p):
    """Enter the sandbox: cgroup, IPC limits, minimal root (namespace mode) or the work dir, then drop privileges."""
    uid = p["uid"]
    limits = p["limits"]
    userns = bool(p.get("userns"))
    cgroup = Cgroup(p["cgroup"]) if p.get("cgroup") else None
    if cgroup is not None:
        try:  # an OOM kill in the cgroup should take a test process, not this one (needs CAP_SYS_RESOURCE)
            _write_file("/proc/self/oom_score_adj", "-1000")
            cgroup.oom_exempt = True
        except OSError:
            pass  # then the caller reads the cgroup's OOM count if this process is the one killed
    if cgroup is None or not cgroup.oom_exempt:
        # if the host (or its container) runs out of memory, the kernel kills the sandbox, never the
        # scorer: raising one's own score needs no privilege, and children inherit it
        _write_file("/proc/self/oom_score_adj", OOM_SCORE_FIRST)
    if p["mode"] == "ns":
        if userns:
            mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here reaches the host
            _write_file("/proc/sys/user/max_user_namespaces", "0")  # no nested user ns: no fresh caps
        for name in IPC_SYSCTLS:  # a fresh IPC namespace: these bind only this sandbox
            _write_file(f"/proc/sys/kernel/{name}", str(limits["ipc"][name]))
        build_root(p["root"], uid, limits["disk_mb"], limits["inodes"], list(sys.path) + list(p["site_paths"]),
                   pivot=userns)
    else:
        os.chdir(p["root"])
        if uid is not None:
            for name in PRELOAD:
                try:
                    __import__(name)
                except ImportError:
                    pass
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif userns:
        drop_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
    if os.getpid() != 1:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    return cgroup


# ----------------------------------------------------------------------------- one test


def _count_own_processes():
    uid = os.getuid()
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def cpu_limit_s(limits):
    """RLIMIT_CPU of a test process: its wall-clock limit rounded up, plus one second."""
    return int(math.ceil(limits["test_timeout"])) + 1


def _child_setup(fds, limits, nproc, job, cgroup):
    """Common start of a test process: own group, fds, rlimits, seccomp; raises if any of it fails."""
    os.setpgid(0, 0)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    if cgroup is not None and cgroup.oom_exempt:
        # The supervisor is exempt from the cgroup's OOM killer; a test process must not be. Writing
        # our own oom_score_adj needs us dumpable for a moment (no program code has run yet).
        try:
            prctl(PR_SET_DUMPABLE, 1)
            _write_file("/proc/self/oom_score_adj", "0")
        except OSError:
            pass
        finally:
            prctl(PR_SET_DUMPABLE, 0)
    os.dup2(fds["stdin"], 0)
    os.dup2(fds["out"], 1)
    os.dup2(fds["err"], 2)
    rep = limits["nofile"] - 1
    os.dup2(fds["rep"], rep)
    os.closerange(3, rep)
    os.closerange(rep + 1, 1 << 16)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    cpu = cpu_limit_s(limits)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
    if job["filter"] is not None:
        install_filter(job["filter"])
    sys.path[:] = [p for p in sys.path if p] + list(job["site_paths"])
    sys.argv[:] = ["solution.py"]
    return rep


def _failure_kind(e):
    if isinstance(e, MemoryError):
        return "memory"
    if isinstance(e, OSError) and e.errno == errno.EFBIG:
        return "file_size"
    if isinstance(e, AssertionError):
        return "assert"
    return "error"


def child_io_main(job, fds, token, limits, nproc, cgroup):
    """Forked test process of an `io` (or probe) test: runs the program as __main__. Never returns."""
    try:
        rep = _child_setup(fds, limits, nproc, job, cgroup)
    except BaseException as e:  # noqa: BLE001 - setup failed: report, never run the program
        os.write(2, f"sandbox setup failed: {e!r}\n".encode())
        os._exit(96)
    _write, _exit, _str, _BaseException = os.write, os._exit, str, BaseException

    def report(verdict, kind="", name="", msg=""):
        parts = [_str.__str__(x)[:DETAIL_CAP] for x in (token, verdict, kind, name, msg)]
        line = "\t".join(_str.translate(x, _CONTROL) for x in parts)
        try:
            _write(rep, (line + "\n").encode("utf-8", "replace"))
        except _BaseException:
            pass

    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        if job["setup_code"] is not None:
            exec(job["setup_code"], ns)
        exec(job["program_code"], ns)
        if job["form"] == "probe":
            import fractions, decimal, socket as _socket  # noqa: F401,E401 - the interpreter's files must be reachable
            with open("probe.txt", "w") as fh:
                fh.write("ok")
            if job["filter"] is not None:
                try:
                    os.close(os.memfd_create("probe"))
                except PermissionError:
                    pass
                else:
                    raise RuntimeError("the seccomp filter did not refuse memfd_create")
    except _BaseException as e:  # noqa: BLE001 - every way out of the program is a verdict
        if not (isinstance(e, SystemExit) and e.code in (None, 0)):
            try:
                name, msg = type(e).__name__, _str(e)
            except _BaseException:
                name, msg = "exception", ""
            _flush()
            report("FAIL", _failure_kind(e), name, msg)
            _exit(1)
    _flush()
    report("OK")
    _exit(0)


def _flush():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


# ----------------------------------------------------------------------------- calls: the program side


def send_frame(fd, message):
    data = wire.dumps(message)
    write_all(fd, len(data).to_bytes(FRAME_HEADER, "big") + data)


def recv_frame(fd):
    size = int.from_bytes(read_exact(fd, FRAME_HEADER), "big")
    return wire.loads(read_exact(fd, size))


class _FallbackListNode:
    def __init__(self, val=0, next=None):
        self.val, self.next = val, next


class _FallbackTreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val, self.left, self.right = val, left, right


class Server:
    """Answers the judge's calls from the program's namespace. Runs beside the program: what it
    sends is untrusted, which is why the judge decodes it strictly and compares on its own side."""

    FALLBACK = {"ListNode": _FallbackListNode, "TreeNode": _FallbackTreeNode}

    def __init__(self, ns):
        self.ns = ns
        self.handles = []

    def _classes(self):
        out = {}
        for name, fallback in self.FALLBACK.items():
            cls = self.ns.get(name)
            out[name] = cls if isinstance(cls, type) else fallback
        return out

    def _handle(self, obj):
        self.handles.append(obj)
        return len(self.handles) - 1

    def _describe(self, obj):
        if isinstance(obj, type):
            return {"kind": "class", "h": self._handle(obj)}
        if callable(obj):
            return {"kind": "callable", "h": self._handle(obj)}
        enc = wire.Encoder()
        try:
            value = enc.value(obj)
        except (wire.WireError, RecursionError):
            return {"kind": "object", "h": self._handle(obj)}
        return {"kind": "value", "v": value, "nodes": enc.table}

    def _target(self, msg):
        h = msg.get("h")
        if type(h) is not int or not 0 <= h < len(self.handles):
            raise LookupError("unknown handle")
        return self.handles[h]

    def dispatch(self, msg):
        op = msg.get("op")
        if op == "lookup":
            name = msg.get("name")
            if name not in self.ns:
                return {"kind": "missing"}
            return self._describe(self.ns[name])
        if op == "getattr":
            name = msg.get("name")
            if not isinstance(name, str) or not ATTR_NAME.fullmatch(name):
                raise AttributeError(f"bad attribute name {name!r}")
            return self._describe(getattr(self._target(msg), name))
        if op == "call":
            target = self._target(msg)
            dec = wire.Decoder(self._classes(), msg.get("nodes", []))
            args = dec.value(msg.get("args", []))
            kwargs = dict(dec.value(msg.get("kwargs", {"d": []})))
            result = target(*args, **kwargs)
            ids = {id(node): nid for nid, node in dec.nodes.items()}
            enc = wire.Encoder(ids)
            try:
                value = enc.value(result)
            except (wire.WireError, RecursionError):
                if isinstance(target, type) or not isinstance(result, (int, float, str, bytes, list, tuple, dict, set)):
                    reply = {"kind": "object", "h": self._handle(result)}
                else:
                    raise
            else:
                reply = {"kind": "value", "v": value}
            try:  # arguments after the call, so in-place changes reach the judge
                reply["args"] = enc.value(args)
                reply["kwargs"] = enc.value(kwargs)
            except (wire.WireError, RecursionError):
                pass
            reply["nodes"] = enc.table
            return reply
        raise ValueError(f"unknown op {op!r}")


def child_calls_main(job, fds, data_fd, limits, nproc, cgroup):
    """Forked test process of a `calls` test: setup, program, then answer calls. Never returns."""
    try:
        fds = dict(fds, rep=data_fd)
        sock = _child_setup(fds, limits, nproc, job, cgroup)
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"sandbox setup failed: {e!r}\n".encode())
        os._exit(96)
    ns = {"__name__": "solution", "__builtins__": builtins}

    def answer(e):
        try:
            name, msg = type(e).__name__, str(e)[:DETAIL_CAP]
        except BaseException:  # noqa: BLE001
            name, msg = "exception", ""
        return {"raise": [name, msg, _failure_kind(e)]}

    try:
        if job["setup_code"] is not None:
            exec(job["setup_code"], ns)
        exec(job["program_code"], ns)
        ready = {"ready": True}
    except BaseException as e:  # noqa: BLE001 - the program failed before any call: the test fails
        ready = answer(e)
    try:
        send_frame(sock, ready)
        if "raise" in ready:
            _flush()
            os._exit(1)
        server = Server(ns)
        while True:
            try:
                msg = recv_frame(sock)
            except EOFError:
                break
            try:
                if type(msg) is not dict:
                    raise ValueError("bad request")
                reply = server.dispatch(msg)
            except BaseException as e:  # noqa: BLE001 - the candidate's exception goes to the judge
                reply = answer(e)
            try:
                send_frame(sock, reply)
            except wire.WireError as e:
                send_frame(sock, answer(e))
    except BaseException:  # noqa: BLE001
        pass
    _flush()
    os._exit(0)


# ----------------------------------------------------------------------------- the supervisor


class Supervisor:
    """Runs tests one child at a time and watches each: time, output, memory, leftovers."""

    def __init__(self, payload, alive_fd, cgroup, ctl):
        self.p = payload
        self.limits = payload["limits"]
        self.alive_fd = alive_fd
        self.cgroup = cgroup
        self.ctl = ctl
        self.ns_mode = payload["mode"] == "ns"
        self.uid = payload["uid"]
        self.can_sweep = self.ns_mode or self.uid is not None
        self.nproc = self.limits["nproc"]
        if payload.get("userns"):  # `unshare`, outside this pid namespace, counts for this uid too
            self.nproc += 1
        if not self.can_sweep:  # sharing a uid with other processes: allow for them
            self.nproc += _count_own_processes()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = time.monotonic()
        self.total_deadline = self.start + self.limits["total_timeout"]

    # -- helpers
    def _reap_all(self):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _others(self):
        """Live tasks of the sandbox other than this process: by cgroup membership when there is one,
        else from /proc, where a zombie leader whose other threads still run counts as alive."""
        me = os.getpid()
        if self.cgroup is not None:
            return sorted(self.cgroup.tasks() - {me})
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/status", "rb") as fh:
                    status = fh.read().decode("ascii", "replace")
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if not self.ns_mode and int(fields.get("Uid", "-1").split()[0]) != self.uid:
                continue
            if fields.get("State", "").strip().startswith("Z"):
                try:
                    if len(os.listdir(f"/proc/{name}/task")) <= 1:
                        continue
                except OSError:
                    continue
            found.append(int(name))
        return found

    def _kill_members(self):
        if self.cgroup is None:
            return
        for tid in self.cgroup.tasks() - {os.getpid()}:
            try:
                os.kill(tid, signal.SIGKILL)
            except OSError:
                pass

    def _others_besides(self, pid):
        """When the judge is done: is any process of the sandbox alive besides the test process?
        Everything is frozen first, so a process cannot fork or exit its way out of the count."""
        if not self.can_sweep and self.cgroup is None:
            return False
        if self.can_sweep:
            try:
                os.kill(-1, signal.SIGSTOP)
            except OSError:
                pass
        try:
            mine = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except (OSError, ValueError):
            mine = set()
        return bool(set(self._others()) - mine - {pid})

    def sweep(self):
        """Kill every process of the sandbox but this one; True when there were any."""
        if not self.can_sweep and self.cgroup is None:
            return False
        self._reap_all()
        # Freeze first: kill(-1) signals every target under one lock and a stopped process cannot
        # fork, so the scan below cannot miss a process created while it reads /proc.
        if self.can_sweep:
            try:
                os.kill(-1, signal.SIGSTOP)
            except OSError:
                pass
        found = bool(self._others())
        if found:
            for _ in range(SWEEP_ROUNDS):
                if self.can_sweep:
                    try:
                        os.kill(-1, signal.SIGKILL)
                    except OSError:
                        pass
                self._kill_members()
                self._reap_all()
                if not self._others():
                    break
                time.sleep(SWEEP_PAUSE_S)
        return found

    def _sandbox_rss(self):
        total = 0
        me = os.getpid()
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me:
                try:
                    with open(f"/proc/{name}/statm", "rb") as fh:
                        fields = fh.read().split()
                    total += (int(fields[1]) - int(fields[2])) * self.page
                except (OSError, ValueError, IndexError):
                    pass
        return total

    def _outer_gone(self):
        self.sweep()
        os._exit(3)

    def _ctl_recv(self):
        try:
            data = self.ctl.recv(CTL_MAX)
        except OSError:
            data = b""
        if not data:
            self._outer_gone()
        try:
            msg = json.loads(data)
        except ValueError:
            return {}
        return msg if isinstance(msg, dict) else {}

    def ctl_send(self, msg, fds=()):
        data = json.dumps(msg).encode()
        if fds:
            socket.send_fds(self.ctl, [data], list(fds))
        else:
            self.ctl.send(data)

    # -- one test
    def run(self, job, stdin_data, calls=False):
        cap = self.limits["output_cap"]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        rep_r, rep_w = os.pipe()
        if stdin_data is None:
            stdin_fd = os.open("/dev/null", os.O_RDONLY)
        else:
            stdin_fd = os.memfd_create("stdin", 0)
            write_all(stdin_fd, stdin_data.encode("utf-8", "surrogateescape"))
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        token = os.urandom(16).hex()
        fds = {"stdin": stdin_fd, "out": out_w, "err": err_w, "rep": rep_w}
        judge_end = child_end = None
        if calls:
            judge_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        oom_before = self.cgroup.oom_kills() if self.cgroup is not None else 0
        pid = os.fork()
        if pid == 0:
            try:
                if calls:
                    child_calls_main(job, fds, child_end.fileno(), self.limits, self.nproc, self.cgroup)
                else:
                    child_io_main(job, fds, token, self.limits, self.nproc, self.cgroup)
            finally:
                os._exit(95)
        for fd in (stdin_fd, out_w, err_w, rep_w):
            os.close(fd)
        if calls:
            child_end.close()
            self.ctl_send({"event": "started"}, [judge_end.fileno()])
            judge_end.close()
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None

        bufs = {out_r: bytearray(), err_r: bytearray(), rep_r: bytearray()}
        open_fds = [out_r, err_r, rep_r]
        status, detail = None, ""
        exited = stopped = False
        wait_status = None
        cpu_used = 0.0
        deadline = min(time.monotonic() + self.limits["test_timeout"], self.total_deadline)
        while True:
            now = time.monotonic()
            if now >= deadline:
                per_test = deadline < self.total_deadline
                status = "timeout"
                detail = f"exceeded {self.limits['test_timeout']:g}s per test" if per_test else "exceeded the whole-program limit"
                break
            watch = open_fds + [self.alive_fd] + ([pidfd] if pidfd is not None and not exited else [])
            if calls:
                watch.append(self.ctl.fileno())
            ready, _, _ = select.select(watch, [], [], min(deadline - now, POLL_S))
            if self.alive_fd in ready:
                self._outer_gone()
            if calls and self.ctl.fileno() in ready and self._ctl_recv().get("op") == "stop":
                stopped = True
                break
            for fd in ready:
                if fd in bufs:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        open_fds.remove(fd)
                    elif fd == rep_r:
                        if len(bufs[fd]) < REPORT_CAP:
                            bufs[fd] += data
                    else:
                        bufs[fd] += data
            if len(bufs[out_r]) > cap or len(bufs[err_r]) > cap:
                status, detail = "output_limit", f"more than {cap} bytes of output"
                break
            done_pid, st, usage = os.wait4(pid, os.WNOHANG)
            if done_pid == pid:
                exited, wait_status = True, st
                cpu_used = usage.ru_utime + usage.ru_stime
                break
            if self.cgroup is not None:
                if self.cgroup.oom_kills() > oom_before:  # the kernel killed a process of the sandbox
                    status, detail = "memory", f"the sandbox's cgroup ran out of its {self.limits['memory'] >> 20} MiB"
                    break
            elif self.ns_mode and self._sandbox_rss() > self.limits["memory"]:
                status, detail = "memory", f"sandbox resident memory above {self.limits['memory'] >> 20} MiB"
                break
        others_at_stop = stopped and self._others_besides(pid)
        if not exited:
            for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    target()
                except OSError:
                    pass
            _, wait_status = os.waitpid(pid, 0)
        leftovers = self.sweep()
        # Writers are gone (unless we could not sweep): drain what is left without blocking.
        for fd in list(open_fds):
            os.set_blocking(fd, False)
            try:
                while len(bufs[fd]) <= cap:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        break
                    bufs[fd] += data
            except BlockingIOError:
                pass
        for fd in (out_r, err_r, rep_r):
            os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        oom = self.cgroup is not None and self.cgroup.oom_kills() > oom_before
        if status is None and oom:
            status, detail = "memory", f"the sandbox's cgroup ran out of its {self.limits['memory'] >> 20} MiB"
        if status is None and calls:
            if stopped:
                left = leftovers or others_at_stop
                status, detail = ("leftover", "processes were left running after the tests finished") if left else ("ok", "")
            else:
                status, detail = self.classify_exit(wait_status, cpu_used >= cpu_limit_s(self.limits))
        if status is None:
            cpu_limit = cpu_limit_s(self.limits)
            status, detail = self.classify(job["form"], wait_status, bytes(bufs[rep_r]), token, cpu_used >= cpu_limit)
            if leftovers and status in ("pass", "ran"):
                status, detail = "leftover", "processes were left running after the program finished"
        result = {"status": status, "detail": detail[:DETAIL_CAP]}
        if job["form"] == "io":
            result["stdout"] = bytes(bufs[out_r][:cap]).decode("utf-8", "replace")
        if status not in ("pass", "ran", "ok"):
            result["stderr_tail"] = bytes(bufs[err_r][-DETAIL_CAP:]).decode("utf-8", "replace")
        if calls:
            self.ctl_send(dict(result, event="ended"))
        return result

    @staticmethod
    def classify_exit(wait_status, cpu_exhausted):
        """A calls-test process that ended before the judge stopped it."""
        if os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_exhausted):
                return "timeout", f"killed by signal {sig} (CPU time limit)"
            if sig == signal.SIGXFSZ:
                return "output_limit", "file size limit"
            return "error", f"killed by signal {sig}"
        return "error", f"the program exited (status {os.WEXITSTATUS(wait_status)}) before the tests finished"

    @staticmethod
    def classify(form, wait_status, report, token, cpu_exhausted):
        verdict = None
        for line in report.decode("utf-8", "replace").splitlines():
            parts = line.split("\t")
            if len(parts) == 5 and parts[0] == token:
                verdict = parts
                break
        ok_status = "ran" if form == "io" else "pass"
        if verdict is not None:
            _, word, kind, name, msg = verdict
            if word == "OK":
                return ok_status, ""
            mapping = {"memory": "memory", "file_size": "output_limit", "assert": "fail"}
            return mapping.get(kind, "error"), f"{name}: {msg}"
        if os.WIFSIGNALED(wait_status):
            sig = os.WTERMSIG(wait_status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_exhausted):
                return "timeout", f"killed by signal {sig} (CPU time limit)"
            if sig == signal.SIGXFSZ:
                return "output_limit", "file size limit"
            return "error", f"killed by signal {sig}"
        code = os.WEXITSTATUS(wait_status)
        if form == "io" and code == 0:
            return "ran", ""
        if code == 0:
            return "no_report", "program exited before the tests finished"
        return "error", f"exit status {code}"


# ----------------------------------------------------------------------------- driver


def compile_all(p):
    """Compile setup and program here, so a child only execs ready code objects."""
    try:
        setup_code = compile(p["setup"], "setup.py", "exec") if p.get("setup") else None
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return None, None, f"setup: {type(e).__name__}: {e}"
    try:
        program_code = compile(p["program"], "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return None, f"{type(e).__name__}: {e}", None
    if p["form"] not in ("calls", "io", "probe"):
        return None, None, f"unknown test form {p['form']!r}"
    job = {"form": p["form"], "setup_code": setup_code, "program_code": program_code, "site_paths": p["site_paths"],
           "filter": None}
    if p.get("seccomp"):  # no cgroup counts memfd pages: refuse memfd_create instead
        job["filter"] = memfd_filter()
        if job["filter"] is None:
            raise OSError(errno.ENOSYS, f"no seccomp filter for this machine ({os.uname().machine})")
    return job, None, None


def run_all(p, alive_fd, ctl):
    out = {"tests": [], "compile_error": None, "bad_tests": None}
    cgroup = isolate(p)
    job, compile_error, bad_tests = compile_all(p)
    sup = Supervisor(p, alive_fd, cgroup, ctl)
    if p["form"] == "calls":
        sup.ctl_send({"event": "ready", "compile_error": compile_error, "bad_tests": bad_tests})
    if job is None:
        out["compile_error"], out["bad_tests"] = compile_error, bad_tests
        return out
    if p["form"] == "calls":
        while True:  # the judge drives: one `start` per test, then `finish`
            ready, _, _ = select.select([ctl.fileno(), alive_fd], [], [])
            if alive_fd in ready:
                sup._outer_gone()
            op = sup._ctl_recv().get("op")
            if op == "finish":
                break
            if op != "start":
                continue  # a `stop` that crossed an `ended`
            if time.monotonic() >= sup.total_deadline:
                res = {"status": "timeout", "detail": "whole-program limit reached before this test"}
                sup.ctl_send(dict(res, event="ended"))
            else:
                res = sup.run(job, None, calls=True)
            out["tests"].append(res)
        out["elapsed_s"] = round(time.monotonic() - sup.start, 4)
        return out
    inputs = p.get("inputs") or [None]
    failed = False
    for stdin_data in inputs:
        if failed and p["stop_on_failure"]:
            out["tests"].append({"status": "skipped", "detail": "an earlier test failed"})
            continue
        if time.monotonic() >= sup.total_deadline:
            out["tests"].append({"status": "timeout", "detail": "whole-program limit reached before this test"})
            failed = True
            continue
        res = sup.run(job, stdin_data)
        out["tests"].append(res)
        failed = failed or res["status"] not in ("pass", "ran")
    out["elapsed_s"] = round(time.monotonic() - sup.start, 4)
    return out


def main():
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    result = {}
    ctl = None
    try:
        n = int.from_bytes(read_exact(0, 8), "big")
        payload = json.loads(read_exact(0, n))
        alive_fd = payload["alive_fd"]
        ctl = socket.socket(fileno=payload["ctl_fd"])
        result = run_all(payload, alive_fd, ctl)
        result["isolation"] = {"pid1": os.getpid() == 1, "uid": os.getuid(), "mode": payload["mode"],
                               "userns": bool(payload.get("userns")), "seccomp": bool(payload.get("seccomp"))}
    except BaseException as e:  # noqa: BLE001 - reported to the caller, who turns it into a reason
        result["harness_error"] = f"{type(e).__name__}: {e}"
        if ctl is not None:
            try:
                ctl.send(json.dumps({"event": "failed", "detail": result["harness_error"]}).encode())
            except OSError:
                pass
    try:
        nonce = b""
        while len(nonce) < NONCE_CAP:
            data = os.read(0, NONCE_CAP)
            if not data:
                break
            nonce += data
        result["nonce"] = nonce.decode("ascii", "replace").strip()
        write_all(1, (json.dumps(result) + "\n").encode())
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
