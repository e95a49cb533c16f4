"""Sandbox harness: runs one untrusted program against its tests. Standard library only.

Started by `rewards.sandbox` as `python -I -S -B _harness.py`, normally as PID 1 of fresh
mount/net/pid/ipc/uts namespaces (root there, before it drops privileges). Never imported by
the package itself.

Protocol. stdin: an 8-byte big-endian length, a JSON payload, then a nonce that this process
reads only after every test has run (so no forked test process ever holds it). stdout: one JSON
line that echoes the nonce. Tests never see stdout: each runs in a forked child whose fds 0-2
are pipes to this process and whose only other fd is a report pipe.

Trust boundary: this process (the supervisor) runs no untrusted code. A child execs the
program, then the tests, and reports `<token> OK` on its report pipe only if the tests
returned; the supervisor also requires the child to exit with nothing of its user left running.
"""

import ast
import builtins
import ctypes
import errno
import json
import math
import os
import re
import resource
import select
import signal
import sys
import time

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38

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
_CONTROL = {ord("\t"): " ", ord("\n"): " ", ord("\r"): " "}
_ENTRY = re.compile(r"([A-Za-z_]\w*)(?:\(\))?\.([A-Za-z_]\w*)")


def _b(s):
    return None if s is None else s.encode()


def mount(src, target, fstype, flags, data=None):
    if _libc.mount(_b(src), _b(target), _b(fstype), flags, _b(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")


def prctl(option, arg):
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
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
    mount(None, dst, None, flags)


def build_root(root, uid, disk_mb, extra_paths):
    """Make `root` a minimal read-only tree (system dirs, the interpreter, /dev, /proc, /work) and enter it."""
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
    if os.path.lexists(root + WORK_DIR):
        raise FileExistsError(f"{WORK_DIR} collides with a bound path")
    os.makedirs(root + WORK_DIR)
    owner = 0 if uid is None else uid
    mount("tmpfs", root + WORK_DIR, "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={disk_mb}m,mode=700,uid={owner},gid={owner}")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, ROOT_TMPFS_OPTIONS)
    os.chroot(root)
    os.chdir(WORK_DIR)


def isolate(p):
    """Enter the sandbox: minimal root (namespace mode) or the work dir, then drop privileges."""
    uid = p["uid"]
    if p["mode"] == "ns":
        build_root(p["root"], uid, p["limits"]["disk_mb"], list(sys.path) + list(p["site_paths"]))
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
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
    if os.getpid() != 1:
        prctl(PR_SET_CHILD_SUBREAPER, 1)


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


def child_main(job, fds, token, limits, nproc):
    """Runs in the forked test process: never returns."""
    _write, _exit, _isinstance = os.write, os._exit, isinstance
    _MemoryError, _OSError, _AssertionError, _SystemExit = MemoryError, OSError, AssertionError, SystemExit
    _BaseException, _str, _type = BaseException, str, type
    try:
        os.setpgid(0, 0)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
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
        sys.path[:] = [p for p in sys.path if p] + list(job["site_paths"])
        sys.argv[:] = ["solution.py"]
    except BaseException as e:  # noqa: BLE001 - setup failed: report, never run the program
        _write(2, f"sandbox setup failed: {e!r}\n".encode())
        _exit(96)

    def report(verdict, kind="", name="", msg=""):
        parts = [_str.__str__(x)[:DETAIL_CAP] for x in (token, verdict, kind, name, msg)]
        line = "\t".join(_str.translate(x, _CONTROL) for x in parts)
        try:
            _write(rep, (line + "\n").encode("utf-8", "replace"))
        except _BaseException:
            pass

    def flush():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except _BaseException:
                pass

    saved_builtins = dict(builtins.__dict__)

    def restore_builtins():
        builtins.__dict__.clear()
        builtins.__dict__.update(saved_builtins)

    form = job["form"]
    ns = {"__name__": "__main__" if form == "io" else "solution", "__builtins__": builtins}
    try:
        if job["setup_code"] is not None:
            exec(job["setup_code"], ns)
        exec(job["program_code"], ns)
        if form == "asserts":
            restore_builtins()
            exec(job["test_code"], ns)
        elif form == "check":
            restore_builtins()
            exec(job["test_code"], ns)
            if not job["self_invoking"]:
                ns["check"](resolve_entry_point(ns, job["entry_point"]))
        elif form == "probe":
            import fractions, decimal, socket  # noqa: F401,E401 - the interpreter's files must be reachable
            with open("probe.txt", "w") as fh:
                fh.write("ok")
    except _BaseException as e:  # noqa: BLE001 - every way out of the program is a verdict
        if form == "io" and _isinstance(e, _SystemExit) and e.code in (None, 0):
            pass
        else:
            try:
                name, msg = _type(e).__name__, _str(e)
            except _BaseException:
                name, msg = "exception", ""
            if _isinstance(e, _MemoryError):
                kind = "memory"
            elif _isinstance(e, _OSError) and e.errno == errno.EFBIG:
                kind = "file_size"
            elif _isinstance(e, _AssertionError):
                kind = "assert"
            else:
                kind = "error"
            flush()
            report("FAIL", kind, name, msg)
            _exit(1)
    flush()
    report("OK")
    _exit(0)


def resolve_entry_point(ns, entry_point):
    """The candidate handed to check(): a function, or a bound method of a fresh `Solution()`."""
    if not entry_point:
        raise NameError("no entry point given for check(candidate)")
    m = _ENTRY.fullmatch(entry_point)
    if m:
        return getattr(ns[m.group(1)](), m.group(2))
    if entry_point in ns:
        return ns[entry_point]
    solution = ns.get("Solution")
    if isinstance(solution, type) and hasattr(solution, entry_point):
        return getattr(solution(), entry_point)
    raise NameError(f"entry point {entry_point!r} is not defined")


class Supervisor:
    """Runs tests one child at a time and watches each: time, output, memory, leftovers."""

    def __init__(self, payload, alive_fd):
        self.p = payload
        self.limits = payload["limits"]
        self.alive_fd = alive_fd
        self.ns_mode = payload["mode"] == "ns"
        self.uid = payload["uid"]
        self.can_sweep = self.ns_mode or self.uid is not None
        self.nproc = self.limits["nproc"]
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
        """Live processes of the sandbox other than this one (zombies excluded)."""
        me, found = os.getpid(), []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/status", "rb") as fh:
                    status = fh.read().decode("ascii", "replace")
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("State", "").strip().startswith("Z"):
                continue
            if not self.ns_mode and int(fields.get("Uid", "-1").split()[0]) != self.uid:
                continue
            found.append(int(name))
        return found

    def sweep(self):
        """Kill every process of the sandbox but this one; True when there were any."""
        if not self.can_sweep:
            return False
        self._reap_all()
        # Freeze first: kill(-1) signals every target under one lock and a stopped process cannot
        # fork, so the scan below cannot miss a process created while it reads /proc.
        try:
            os.kill(-1, signal.SIGSTOP)
        except OSError:
            pass
        found = bool(self._others())
        if found:
            for _ in range(SWEEP_ROUNDS):
                try:
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass
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

    # -- one test
    def run(self, job, stdin_data):
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
        pid = os.fork()
        if pid == 0:
            try:
                child_main(job, fds, token, self.limits, self.nproc)
            finally:
                os._exit(95)
        for fd in (stdin_fd, out_w, err_w, rep_w):
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None

        bufs = {out_r: bytearray(), err_r: bytearray(), rep_r: bytearray()}
        open_fds = [out_r, err_r, rep_r]
        status, detail = None, ""
        exited = False
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
            ready, _, _ = select.select(watch, [], [], min(deadline - now, POLL_S))
            if self.alive_fd in ready:
                self._outer_gone()
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
            if self.ns_mode and self._sandbox_rss() > self.limits["memory"]:
                status, detail = "memory", f"sandbox resident memory above {self.limits['memory'] >> 20} MiB"
                break
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
        if status is None:
            cpu_limit = cpu_limit_s(self.limits)
            status, detail = self.classify(job["form"], wait_status, bytes(bufs[rep_r]), token, cpu_used >= cpu_limit)
            if leftovers and status in ("pass", "ran"):
                status, detail = "leftover", "processes were left running after the program finished"
        result = {"status": status, "detail": detail[:DETAIL_CAP]}
        if job["form"] == "io":
            result["stdout"] = bytes(bufs[out_r][:cap]).decode("utf-8", "replace")
        if status not in ("pass", "ran"):
            result["stderr_tail"] = bytes(bufs[err_r][-DETAIL_CAP:]).decode("utf-8", "replace")
        return result

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
    """Compile setup, program and tests here, so a child only execs ready code objects."""
    jobs = []
    try:
        setup_code = compile(p["setup"], "setup.py", "exec") if p.get("setup") else None
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return None, None, f"setup: {type(e).__name__}: {e}"
    try:
        program_code = compile(p["program"], "solution.py", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return None, f"{type(e).__name__}: {e}", None
    base = {"form": p["form"], "setup_code": setup_code, "program_code": program_code,
            "site_paths": p["site_paths"], "self_invoking": False, "entry_point": p.get("entry_point")}
    try:
        if p["form"] == "asserts":
            for i, src in enumerate(p["asserts"]):
                jobs.append(dict(base, test_code=compile(src, f"test_{i}.py", "exec")))
        elif p["form"] == "check":
            tree = ast.parse(p["check"])
            self_invoking = any(
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name) and node.value.func.id == "check"
                for node in tree.body
            )
            jobs.append(dict(base, test_code=compile(tree, "test.py", "exec"), self_invoking=self_invoking))
        elif p["form"] == "io":
            jobs = [dict(base, test_code=None) for _ in p["inputs"]]
        elif p["form"] == "probe":
            jobs = [dict(base, test_code=None)]
        else:
            return None, None, f"unknown test form {p['form']!r}"
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return None, None, f"tests: {type(e).__name__}: {e}"
    return jobs, None, None


def run_all(p, alive_fd):
    out = {"tests": [], "compile_error": None, "bad_tests": None}
    isolate(p)
    jobs, compile_error, bad_tests = compile_all(p)
    if jobs is None:
        out["compile_error"], out["bad_tests"] = compile_error, bad_tests
        return out
    sup = Supervisor(p, alive_fd)
    inputs = p.get("inputs") or [None] * len(jobs)
    failed = False
    for job, stdin_data in zip(jobs, inputs):
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
    try:
        n = int.from_bytes(read_exact(0, 8), "big")
        payload = json.loads(read_exact(0, n))
        alive_fd = payload["alive_fd"]
        result = run_all(payload, alive_fd)
        result["isolation"] = {"pid1": os.getpid() == 1, "uid": os.getuid(), "mode": payload["mode"]}
    except BaseException as e:  # noqa: BLE001 - reported to the caller, who turns it into a reason
        result["harness_error"] = f"{type(e).__name__}: {e}"
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
