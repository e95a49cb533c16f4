"""Run an untrusted program against tests in an isolated, resource-limited child.

Isolation levels (`Isolation.level`; docs/rewards.md says what each guarantees):
- `namespaces+cgroup` / `namespaces+rlimits`: new mount, net, pid, ipc and uts namespaces (not
  root: inside a new user namespace where this user is uid 0); the harness is PID 1 there, so
  everything dies with it. It builds a minimal read-only root (system dirs, the interpreter's
  stdlib, optionally site-packages, /dev nodes, a fresh /proc with read-only sysctls) plus a
  private size-limited tmpfs `/sandbox` (cwd and HOME), enters it (root: chroot, then a fresh
  unprivileged uid; not root: pivot_root, no nested user namespaces, every capability dropped).
  No network: only a downed loopback exists. Memory and tasks: the run's cgroup, or without one
  rlimits, the sandbox's resident total, IPC and tmpfs limits and no memfd (seccomp).
- `none`: plain mode, a fresh temp folder as cwd/HOME and, as root, a fresh uid; no network or
  file isolation. Only with `reward.code_isolation: none`; `strict` (the default) refuses to run
  code instead (`SandboxUnavailableError`).
Both modes: own session/process group killed whole on timeout; per-test and whole-program
wall-clock limits; rlimits on address space, CPU, processes, file size, open files; output
capped; environment scrubbed; the harness dies when this process dies (a liveness pipe).
As root, each run also gets its own cgroup (`rewards.cgroups`): memory (shm, memfd and tmpfs
pages included) and tasks are bounded by the kernel, and every task left is killed by
membership. Namespace mode adds IPC-namespace limits and an inode-limited tmpfs.

Tests of the `calls` form (asserts, check) never enter the sandbox: this process runs them with
the trusted judge (`rewards.judge`) while the sandbox answers calls.

This module is thread-safe and uses no preexec_fn, so it works from Ray actors' threads.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewards import cgroups
from rewards import judge as J
from rewards.config import RewardConfig

log = logging.getLogger(__name__)

HARNESS = Path(__file__).with_name("_harness.py")
PYTHON_FLAGS = ("-I", "-S", "-B")
UNSHARE = "unshare"  # looked up on PATH; tests point it at /bin/false to take namespaces away
UNSHARE_FLAGS = ("--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child")
USERNS_FLAGS = ("--user", "--map-root-user")  # not root: the other namespaces need one first
LEVEL_CGROUP, LEVEL_RLIMITS, LEVEL_NONE = "namespaces+cgroup", "namespaces+rlimits", "none"
DETAIL_CAP = 300  # characters of a probe failure quoted in a one-line error
NONE_HINT = "or set reward.code_isolation=none to run unisolated"
# sysctls that keep an ordinary user out of user namespaces: (file, blocking value, the fix)
USERNS_SWITCHES = (
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "sysctl kernel.unprivileged_userns_clone=1"),
    ("/proc/sys/user/max_user_namespaces", "0", "sysctl user.max_user_namespaces=15000"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "sysctl kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile allowing userns for this python)"),
)
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
NS_HOME = "/sandbox"
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
PROBE_TIMEOUT_S = 30.0
WORKDIR_PREFIX = "cispo-sbx-"
STDERR_KEEP = 2000
MB = 1 << 20


class SandboxUnavailableError(ValueError):
    """`reward.code_isolation` asks for isolation this machine cannot give; the message is one
    line saying what is missing and how to get it (or how to run without it)."""


@dataclass(frozen=True)
class Isolation:
    """What the sandbox can enforce on this machine (probed once per process)."""

    namespaces: bool
    drop_privileges: bool
    unshare: str | None
    note: str
    cgroup: cgroups.Support | None = None  # None: no per-run cgroup (see `note`)
    userns: bool = False  # the namespaces sit in a new user namespace (started by an ordinary user)
    missing: str = ""  # when namespaces are unavailable: the one-line error `strict` raises

    @property
    def level(self) -> str:
        """`namespaces+cgroup`, `namespaces+rlimits` or `none`: what a run's metrics can record."""
        if not self.namespaces:
            return LEVEL_NONE
        return LEVEL_CGROUP if self.cgroup is not None else LEVEL_RLIMITS


@dataclass(frozen=True)
class TrustedPlan:
    """The `calls` tests, run by the trusted judge in this process."""

    tests: tuple[J.TrustedTest, ...]
    setup: str = ""  # the ground truth's setup, run before the tests on the trusted side
    stop_on_failure: bool = True


@dataclass
class SandboxReport:
    """Per-test outcomes as the harness reported them, or why there are none."""

    tests: list[dict[str, Any]] = field(default_factory=list)
    compile_error: str | None = None
    bad_tests: str | None = None
    harness_error: str | None = None
    timed_out: bool = False
    isolation: Isolation | None = None
    elapsed_s: float | None = None


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[bool, bool, bool, str], Isolation] = {}


def _is_root() -> bool:
    return os.geteuid() == 0


def site_paths(cfg: RewardConfig) -> list[str]:
    """Installed-package folders the program may import from (read-only), if allowed."""
    if not cfg.code_allow_site_packages:
        return []
    paths: list[str] = []
    for p in site.getsitepackages() + [site.getusersitepackages()]:
        if p and os.path.isdir(p) and p not in paths:
            paths.append(p)
    return paths


def isolation(cfg: RewardConfig) -> Isolation:
    """What the sandbox enforces here (probed once per process and setting). Raises
    SandboxUnavailableError when `reward.code_isolation` is `strict` and namespaces do not work."""
    key = (cfg.code_use_namespaces, cfg.code_drop_privileges, cfg.code_use_cgroups, cfg.code_isolation)
    with _probe_lock:
        iso = _probe_cache.get(key)
        if iso is None:
            if not _probe_cache:
                remove_stale_workdirs()
            iso = _probe(cfg)
            _probe_cache[key] = iso
            if cfg.code_isolation == "none":
                log.warning("code sandbox: reward.code_isolation=none: isolation is not required; this run gets "
                            "level %r%s", iso.level, f" ({iso.note})" if iso.note else "")
    if cfg.code_isolation == "strict" and not iso.namespaces:
        raise SandboxUnavailableError(iso.missing)
    return iso


def isolation_level(cfg: RewardConfig) -> str:
    """The isolation level code rewards run at with `cfg` here, for the run's config and metrics
    (`namespaces+cgroup`, `namespaces+rlimits` or `none`); raises like `isolation`."""
    return isolation(cfg).level


def _probe(cfg: RewardConfig) -> Isolation:
    """Try namespace mode once (a probe program in the real sandbox) and describe what holds."""
    root = _is_root()
    drop = cfg.code_drop_privileges and root
    support = cgroups.detect() if cfg.code_use_cgroups else cgroups.Support(None, (), "disabled by reward.code_use_cgroups")
    cgroup = support if support.version else None
    unshare = shutil.which(UNSHARE) if cfg.code_use_namespaces else None
    note, missing = "", ""
    if unshare:
        candidate = Isolation(True, drop, unshare, "", cgroup, userns=not root)
        report = _launch("", {"form": "probe"}, cfg, candidate, probe=True)
        if not (report.tests and report.tests[0].get("status") == "pass"):
            why = _one_line(str(report.harness_error or report.tests or "no result"))
            missing = _namespaces_missing(why, root)
            note = f"namespace mode unavailable ({why}); plain mode"
            unshare = None
    elif cfg.code_use_namespaces:
        missing = f"code sandbox unavailable: no `{UNSHARE}` binary on PATH (install util-linux), {NONE_HINT}"
        note = f"no `{UNSHARE}` binary; plain mode"
    else:
        missing = "code sandbox unavailable: namespaces disabled by reward.code_use_namespaces"
        note = "namespaces disabled by reward.code_use_namespaces"
    if not unshare and not drop:
        note += "; not root or reward.code_drop_privileges off: the program runs as this user"
    elif not unshare and not _world_traversable(sys.base_prefix):
        note += f"; {sys.base_prefix} is not readable by other users: only preloaded stdlib modules import"
    if cgroup is None:
        note += (f"; no per-run cgroup ({support.note}): memory is bounded per process (address space), by "
                 "summing resident pages and by IPC/tmpfs limits (memfd refused), processes by RLIMIT_NPROC")
        if not unshare:
            note += "; no IPC or tmpfs limits, shm/memfd/tmpfs pages not counted (plain mode)"
        log.warning("code sandbox: %s", note.strip("; "))
    else:
        cgroups.remove_stale(support)
    return Isolation(bool(unshare), drop, unshare, note.strip("; "), cgroup, userns=bool(unshare) and not root,
                     missing=missing)


def _one_line(text: str) -> str:
    """A probe failure as one short line (harness output may span several)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= DETAIL_CAP else flat[:DETAIL_CAP] + "..."


def _namespaces_missing(why: str, root: bool) -> str:
    """The one-line error for `strict` when the namespace probe failed: what failed, how to fix it."""
    if root:
        return f"code sandbox unavailable: namespaces could not be created ({why}); check that `{UNSHARE} --mount " \
               f"--net --pid --fork true` works here, {NONE_HINT}"
    fixes = []
    for path, blocking, fix in USERNS_SWITCHES:
        try:
            if Path(path).read_text().strip() == blocking:
                fixes.append(fix)
        except OSError:
            continue
    how = " and ".join(fixes) if fixes else "allow unprivileged user namespaces (see docs/rewards.md)"
    return f"code sandbox unavailable: user namespaces are not usable by this user ({why}); {how}, or run as root, " \
           f"{NONE_HINT}"


def _world_traversable(path: str) -> bool:
    """Whether a user without privileges can reach `path` (every ancestor has o+x)."""
    current = Path(path).resolve()
    for folder in [current, *current.parents]:
        try:
            if not folder.stat().st_mode & 0o001:
                return False
        except OSError:
            return False
    return True


def remove_stale_workdirs() -> int:
    """Delete work folders left by scoring processes that were killed mid-run (their pid is gone)."""
    removed = 0
    for entry in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        pid_text = entry.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # its process is alive: maybe in use
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _limits(cfg: RewardConfig) -> dict[str, Any]:
    return {
        "test_timeout": cfg.code_test_timeout_s,
        "total_timeout": cfg.code_total_timeout_s,
        "memory": cfg.code_memory_mb * MB,
        "output_cap": cfg.code_output_cap_bytes,
        "nproc": cfg.code_max_processes,
        "nofile": cfg.code_max_open_files,
        "fsize": cfg.code_max_file_mb * MB,
        "disk_mb": cfg.code_disk_mb,
        "inodes": cfg.code_max_inodes,
        "ipc": {
            "shmmax": cfg.code_ipc_shm_mb * MB,
            "shmall": max(1, cfg.code_ipc_shm_mb * MB // os.sysconf("SC_PAGE_SIZE")),
            "shmmni": cfg.code_ipc_max_objects,
            "msgmni": cfg.code_ipc_max_objects,
            "msgmnb": cfg.code_ipc_msg_queue_bytes,
        },
    }


def _env(home: str) -> dict[str, str]:
    return {
        "PATH": SANDBOX_PATH,
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _sweep_uid(uid: int) -> None:
    """Kill every process of a sandbox uid (plain mode, when the harness could not do it itself)."""
    code = f"import os\nos.setgroups([])\nos.setresgid({uid},{uid},{uid})\nos.setresuid({uid},{uid},{uid})\n" \
           "try:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"
    subprocess.run([sys.executable, *PYTHON_FLAGS, "-c", code], env=_env("/"), timeout=PROBE_TIMEOUT_S,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _remove_uid_files(uid: int) -> None:
    """Plain mode: delete what a sandbox uid left in world-writable folders."""
    for folder in WORLD_WRITABLE:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def run_program(program: str, tests: dict[str, Any], cfg: RewardConfig, trusted: TrustedPlan | None = None) -> SandboxReport:
    """Run `program` for its tests: `tests` is the harness payload part (form, inputs, setup); for
    the `calls` form `trusted` holds the tests that the judge runs here against the sandbox."""
    iso = isolation(cfg)  # raises SandboxUnavailableError: code rewards refuse to run unisolated
    if iso.cgroup is None and cfg.code_require_cgroups:
        return SandboxReport(isolation=iso, harness_error=f"refused: reward.code_require_cgroups is set and {iso.note}")
    return _launch(program, tests, cfg, iso, trusted=trusted)


def _launch(program: str, tests: dict[str, Any], cfg: RewardConfig, iso: Isolation, *, probe: bool = False,
            trusted: TrustedPlan | None = None) -> SandboxReport:
    low, high = cfg.code_uid_range
    uid = secrets.randbelow(high - low) + low if iso.drop_privileges else None
    workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
    alive_r, alive_w = os.pipe()
    judge_ctl, harness_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    report = SandboxReport(isolation=iso)
    proc: subprocess.Popen | None = None
    run_cg: cgroups.RunCgroup | None = None
    try:
        if iso.cgroup is not None and not probe:
            try:
                run_cg = cgroups.create(iso.cgroup, cfg.code_memory_mb * MB, cfg.code_max_processes)
            except OSError as e:
                report.harness_error = f"cannot create the run's cgroup: {e}"
                return report
        if iso.namespaces:
            userns = USERNS_FLAGS if iso.userns else ()
            cmd = [iso.unshare or UNSHARE, *userns, *UNSHARE_FLAGS, "--", sys.executable, *PYTHON_FLAGS, str(HARNESS)]
            home = NS_HOME
        else:
            cmd = [sys.executable, *PYTHON_FLAGS, str(HARNESS)]
            home = workdir
            if uid is not None:
                os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        payload = {
            "mode": "ns" if iso.namespaces else "plain",
            "userns": iso.namespaces and iso.userns,
            "seccomp": iso.namespaces and iso.cgroup is None,  # nothing counts memfd pages: refuse them
            "root": workdir,
            "uid": uid,
            "alive_fd": alive_r,
            "ctl_fd": harness_ctl.fileno(),
            "cgroup": run_cg.spec() if run_cg is not None else None,
            "limits": _limits(cfg),
            "site_paths": site_paths(cfg),
            "program": program,
            "stop_on_failure": not cfg.code_partial_credit,
            **tests,
        }
        body = json.dumps(payload).encode()
        nonce = secrets.token_hex(32)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(home),
            cwd=workdir, start_new_session=True, pass_fds=(alive_r, harness_ctl.fileno()), close_fds=True,
        )
        os.close(alive_r)
        alive_r = -1
        harness_ctl.close()
        limit = (PROBE_TIMEOUT_S if probe else cfg.code_total_timeout_s) + cfg.hard_timeout_grace_s
        started = time.monotonic()
        judged: list[J.Outcome] | None = None
        supervised: list[dict] = []
        lost_in_time = False
        if trusted is not None:
            try:
                proc.stdin.write(len(body).to_bytes(8, "big") + body)
                proc.stdin.flush()
                judged = _drive(J.Channel(judge_ctl, cfg.code_max_message_mb * MB), trusted, cfg, started + limit, supervised)
            except (OSError, J.SandboxEnded, ValueError) as e:  # ValueError: a malformed control message
                judged = None
                lost_in_time = isinstance(e, J.SandboxEnded) and e.status == "timeout"
                for op in ("stop", "finish"):  # let the harness end its test and report
                    try:
                        judge_ctl.send(json.dumps({"op": op}).encode())
                    except OSError:
                        pass
            data = nonce.encode()
        else:
            data = len(body).to_bytes(8, "big") + body + nonce.encode()
        try:
            out, err = proc.communicate(data, timeout=max(0.1, started + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            report.timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        result = _parse(out, nonce)
        if result is None:
            if not report.timed_out:
                tail = err[-STDERR_KEEP:].decode("utf-8", "replace").strip()
                report.harness_error = f"no valid result from the harness (exit {proc.returncode}): {tail}"
        else:
            report.tests = result.get("tests", [])
            report.compile_error = result.get("compile_error")
            report.bad_tests = result.get("bad_tests")
            report.harness_error = result.get("harness_error")
            report.elapsed_s = result.get("elapsed_s")
            if judged is not None and not (report.compile_error or report.bad_tests or report.harness_error):
                seen = [r.get("status") for r in supervised]
                said = [r.get("status") for r in report.tests]
                if seen != said:
                    report.harness_error = f"the supervisor's statuses {said} differ from its events {seen}"
                else:
                    report.tests = [{"status": o.status, "detail": o.detail, **o.extra} for o in judged]
            elif trusted is not None and judged is None and not (
                    report.compile_error or report.bad_tests or report.harness_error):
                if lost_in_time:
                    report.timed_out = True
                else:
                    report.harness_error = "the judge lost the sandbox"
        if run_cg is not None and cgroups.oom_kills(run_cg) and (report.harness_error or report.timed_out):
            # the kernel OOM-killed the harness itself: the run ran out of memory
            count = len(trusted.tests) if trusted is not None else len(tests.get("inputs") or [None])
            report.harness_error, report.timed_out = None, False
            report.tests = [{"status": "memory", "detail": f"the sandbox's cgroup ran out of its {cfg.code_memory_mb} MiB"}]
            report.tests += [{"status": "skipped", "detail": "the sandbox ran out of memory"}] * (count - 1)
    finally:
        if alive_r >= 0:
            os.close(alive_r)
        os.close(alive_w)
        judge_ctl.close()
        if harness_ctl.fileno() >= 0:
            harness_ctl.close()
        if proc is not None and proc.returncode is None:  # never signal a reaped (reusable) pid
            _kill_group(proc)
            proc.wait()
        if run_cg is not None:
            cgroups.destroy(run_cg)
        if not iso.namespaces and uid is not None:
            # Anything of this uid still alive was started by the program (the harness checks, but a
            # process forked after its check would escape it): kill it, then delete its files.
            _sweep_uid(uid)
            _remove_uid_files(uid)
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def _drive(channel: J.Channel, plan: TrustedPlan, cfg: RewardConfig, deadline: float,
           supervised: list[dict]) -> list[J.Outcome] | None:
    """Run the trusted tests one by one, each against a fresh test process; None when the harness
    did not get as far as running tests (compile error, bad setup: its result says which)."""
    ready = channel.wait_event(deadline, "ready")
    outcomes: list[J.Outcome] = []
    if ready.get("compile_error") or ready.get("bad_tests"):
        channel.ctl_send({"op": "finish"})
        return None
    setup = J.compile_trusted(plan.setup, "setup.py")[0] if plan.setup else None
    failed = False
    for test in plan.tests:
        if failed and plan.stop_on_failure:
            outcomes.append(J.Outcome("skipped", "an earlier test failed"))
            continue
        channel.ended = None
        channel.ctl_send({"op": "start"})
        channel.wait_event(deadline, "started", "ended")
        if channel.ended is not None:  # refused: the whole-program limit was reached
            supervised.append(channel.ended)
            outcomes.append(J.Outcome(str(channel.ended.get("status")), str(channel.ended.get("detail", ""))))
            failed = True
            continue
        test_deadline = min(deadline, time.monotonic() + cfg.code_test_timeout_s + cfg.hard_timeout_grace_s)
        judged = J.run_test(channel, test, setup, test_deadline)
        if channel.ended is None:
            channel.ctl_send({"op": "stop"})
            channel.wait_event(deadline, "ended")
        ended = channel.ended or {"status": "error", "detail": "no end of test from the sandbox"}
        supervised.append(ended)
        if channel.data is not None:
            channel.data.close()
            channel.data = None
        outcome = J.combine(judged, ended)
        outcomes.append(outcome)
        failed = failed or outcome.status != "pass"
    channel.ctl_send({"op": "finish"})
    return outcomes


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except OSError:
        pass


def _parse(out: bytes, nonce: str) -> dict[str, Any] | None:
    """The harness's result, only if it is well-formed and carries this run's nonce."""
    lines = out.strip().splitlines()
    if not lines:
        return None
    try:
        result = json.loads(lines[-1])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(result, dict) or not secrets.compare_digest(str(result.get("nonce", "")), nonce):
        return None
    return result
