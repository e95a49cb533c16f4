"""Hostile programs: each must be scored as a failure within its limit, leaving nothing behind.

Each hostile "solution" is written so that its test passes only if the attack worked; a
`correct` verdict would therefore mean an escape. Runs in namespace mode (the default here) and,
for the attacks that mode-independent limits must stop, in plain mode as well. The namespace-mode
cases also run as an ordinary user (test_rewards_sandbox_unprivileged.py), where the sandbox sits
in a user namespace: helpers here find the sandbox's processes by uid as root, else by command line.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from rewards import RewardConfig, score
from rewards import sandbox

ROOT = Path(__file__).resolve().parents[3]
IS_ROOT = os.geteuid() == 0
# Verdicts other than `timeout` must not depend on machine load: roomy limits by default,
# tight ones (TIGHT) only where a timeout is the expected verdict.
NS = RewardConfig(code_test_timeout_s=5.0, code_total_timeout_s=10.0, code_memory_mb=256, code_max_processes=8,
                  hard_timeout_grace_s=1.0)
PLAIN = NS.replace(code_use_namespaces=False, code_isolation="none")  # plain mode exists only unrequired
MODES = [pytest.param(NS, id="namespaces"), pytest.param(PLAIN, id="plain")]


def tight(cfg: RewardConfig) -> RewardConfig:
    return cfg.replace(code_test_timeout_s=1.0, code_total_timeout_s=3.0)

STARTUP_S = 10.0  # interpreter start, setup and clean-up: generous for a loaded, shared 2-core machine


def unique(cfg: RewardConfig) -> RewardConfig:
    """The same config with a one-uid range, so the test knows the sandbox's uid."""
    uid = 1_700_000 + secrets.randbelow(100_000)
    return cfg.replace(code_uid_range=(uid, uid + 1))


def processes_of(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                status = Path(f"/proc/{name}/status").read_text()
            except OSError:
                continue
            uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
            state = next((line for line in status.splitlines() if line.startswith("State:")), "")
            if uid_line.split()[1:2] == [str(uid)] and " Z " not in state + " ":
                pids.append(int(name))
    return pids


def harness_processes() -> list[int]:
    """Live processes of this user that run the harness: `unshare`, the harness, its test processes
    (how an ordinary user's sandbox is found: it runs under this user's own uid)."""
    me, marker = str(os.getuid()), str(sandbox.HARNESS).encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
                status = Path(f"/proc/{name}/status").read_text()
            except OSError:
                continue
            uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
            state = next((line for line in status.splitlines() if line.startswith("State:")), "")
            if marker in cmdline and uid_line.split()[1:2] == [me] and " Z " not in state + " ":
                pids.append(int(name))
    return pids


def sandbox_processes(cfg: RewardConfig) -> list[int]:
    """What is alive of the sandbox: by its fresh uid as root, else by the harness's command line."""
    if IS_ROOT and cfg.code_drop_privileges:
        return processes_of(cfg.code_uid_range[0])
    return harness_processes()


def assert_nothing_left(cfg: RewardConfig) -> None:
    """No process of the run may survive it (SIGKILLed ones take a moment to disappear)."""
    if not IS_ROOT and not cfg.code_use_namespaces:
        return  # plain mode as this user: nothing to tell the program's processes from this user's
    deadline = time.monotonic() + 2.0
    while sandbox_processes(cfg) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(cfg) == [], "sandbox processes outlived the run"


def run(program: str, asserts: list[str], cfg: RewardConfig):
    cfg = unique(cfg)
    start = time.perf_counter()
    result = score("code", "```python\n" + textwrap.dedent(program) + "\n```", {"asserts": asserts}, config=cfg)
    elapsed = time.perf_counter() - start
    assert_nothing_left(cfg)
    return result, elapsed


def within(elapsed: float, cfg: RewardConfig, *, limit: float | None = None) -> bool:
    return elapsed < (limit if limit is not None else cfg.code_total_timeout_s) + cfg.hard_timeout_grace_s + STARTUP_S


# ----------------------------------------------------------------------------- the machine
def test_isolation_here() -> None:
    iso = sandbox.isolation(NS)  # strict: raises SandboxUnavailableError where namespaces do not work
    assert iso.namespaces and iso.drop_privileges == IS_ROOT and iso.userns == (not IS_ROOT), iso.note
    assert sandbox.isolation_level(NS) == (sandbox.LEVEL_CGROUP if iso.cgroup else sandbox.LEVEL_RLIMITS)
    plain = sandbox.isolation(PLAIN)
    assert not plain.namespaces and plain.drop_privileges == IS_ROOT


def test_benign_program_can_use_its_folder_and_stdlib() -> None:
    program = """
    import os, json, fractions, decimal, heapq, tempfile
    def f():
        with open("data.txt", "w") as fh:
            fh.write("hi")
        with open(os.path.join(os.environ["HOME"], "h.txt"), "w") as fh:
            fh.write("home")
        with tempfile.NamedTemporaryFile() as tmp:
            tmp.write(b"x")
        return open("data.txt").read() + str(fractions.Fraction(1, 2))
    """
    for cfg in (NS, PLAIN):
        result, _ = run(program, ["assert f() == 'hi1/2'"], cfg)
        assert result.correct, (cfg.code_use_namespaces, result)


# ----------------------------------------------------------------------------- time
@pytest.mark.parametrize("cfg", MODES)
def test_infinite_loop(cfg: RewardConfig) -> None:
    cfg = tight(cfg)
    result, elapsed = run("def f():\n    while True:\n        pass", ["assert f() == 1"], cfg)
    assert (result.correct, result.reason) == (False, "timeout")
    assert within(elapsed, cfg, limit=cfg.code_test_timeout_s)


def test_infinite_loop_at_import_and_whole_program_limit() -> None:
    result, elapsed = run("while True:\n    pass", ["assert True"], tight(NS))
    assert result.reason == "timeout" and within(elapsed, NS, limit=1.0)
    slow = "import time\ndef f():\n    time.sleep(0.7)\n    return 1"
    cfg = NS.replace(code_total_timeout_s=2.5, code_partial_credit=True)
    result, elapsed = run(slow, ["assert f() == 1"] * 6, cfg)
    assert result.reason == "timeout" and 0 < result.score < 1  # the first tests passed, the rest ran out of time
    assert within(elapsed, cfg)


@pytest.mark.parametrize("cfg", MODES)
def test_sleeping_child_past_the_limit(cfg: RewardConfig) -> None:
    waits = """
    import os, time
    def f():
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        os.waitpid(pid, 0)
        return 1
    """
    result, elapsed = run(waits, ["assert f() == 1"], tight(cfg))
    assert result.reason == "timeout" and within(elapsed, cfg, limit=1.0)
    daemon = """
    import os, time
    def f():
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        return 1
    """
    result, elapsed = run(daemon, ["assert f() == 1"], cfg)  # run() also checks that nothing survived
    assert (result.correct, result.reason) == (False, "runtime_error") and "left running" in result.detail


# ----------------------------------------------------------------------------- processes
@pytest.mark.parametrize("cfg", MODES)
def test_fork_bomb(cfg: RewardConfig) -> None:
    bomb = """
    import os
    def f():
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """
    result, elapsed = run(bomb, ["assert f() == 1"], tight(cfg))
    assert not result.correct and result.reason in ("timeout", "runtime_error")
    assert within(elapsed, cfg, limit=1.0)


@pytest.mark.parametrize("cfg", MODES)
def test_process_limit_binds_as_root(cfg: RewardConfig) -> None:
    """RLIMIT_NPROC does not bind root: it must bind here because the program is not root (started
    as root: a fresh uid), or is uid 0 of a user namespace, where the kernel counts it anyway."""
    if not IS_ROOT and not cfg.code_use_namespaces:
        pytest.skip("plain mode as an ordinary user shares RLIMIT_NPROC with this user's processes")
    counter = """
    import os, signal, time
    def f():
        pids = []
        try:
            while len(pids) < 200:
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                pids.append(pid)
        except OSError:
            pass
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        return (os.getuid(), len(pids))
    """
    limit = cfg.code_max_processes
    not_root = "uid != 0 and " if IS_ROOT else ""
    result, _ = run(counter, [f"uid, n = f()\nassert {not_root}0 < n < {limit}, (uid, n)"], cfg)
    assert result.correct, result


# ----------------------------------------------------------------------------- memory
@pytest.mark.parametrize("cfg", MODES)
def test_memory_bomb(cfg: RewardConfig) -> None:
    result, elapsed = run("def f():\n    return len(bytearray(8 << 30))", ["assert f() > 0"], cfg)
    assert (result.correct, result.reason) == (False, "memory")
    grow = "def f():\n    keep = []\n    while True:\n        keep.append(b'x' * (8 << 20))"
    result, elapsed = run(grow, ["assert f()"], cfg)
    assert (result.correct, result.reason) == (False, "memory") and within(elapsed, cfg)


def test_memory_spread_over_processes() -> None:
    """Per-process address-space limits alone would allow nproc x limit: the sandbox total is capped."""
    spread = """
    import os, time
    def f():
        kids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = b'y' * (150 << 20)
                time.sleep(30)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
        return 1
    """
    cfg = NS
    result, elapsed = run(spread, ["assert f() == 1"], cfg)
    assert (result.correct, result.reason) == (False, "memory") and within(elapsed, cfg)


# ----------------------------------------------------------------------------- output
@pytest.mark.parametrize("cfg", MODES)
def test_gigabytes_of_output(cfg: RewardConfig) -> None:
    flood = "import sys\ndef f():\n    while True:\n        sys.stdout.write('x' * (1 << 20))"
    result, elapsed = run(flood, ["assert f()"], cfg)
    assert (result.correct, result.reason) == (False, "output_limit") and within(elapsed, cfg, limit=cfg.code_test_timeout_s)
    flood_err = "import os\nwhile True:\n    os.write(2, b'e' * 65536)"
    result, _ = run(flood_err, ["assert True"], cfg)
    assert result.reason == "output_limit"
    big_file = "def f():\n    with open('big.bin', 'wb') as fh:\n        fh.write(b'z' * (64 << 20))\n    return 1"
    result, _ = run(big_file, ["assert f() == 1"], cfg.replace(code_memory_mb=512))
    assert (result.correct, result.reason) == (False, "output_limit")


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("cfg", MODES)
def test_write_outside_its_folder(cfg: RewardConfig, tmp_path: Path) -> None:
    tag = secrets.token_hex(6)
    targets = [f"/tmp/cispo_escape_{tag}", f"/var/tmp/cispo_escape_{tag}", f"/dev/shm/cispo_escape_{tag}",
               str(tmp_path / f"escape_{tag}"), str(ROOT / f"escape_{tag}"), f"/root/escape_{tag}"]
    program = f"""
    def f():
        done = []
        for path in {targets!r}:
            try:
                with open(path, "w") as fh:
                    fh.write("escaped")
                done.append(path)
            except OSError:
                pass
        return done
    """
    result, _ = run(program, ["assert f() != []"], cfg)
    if cfg.code_use_namespaces:
        assert not result.correct and result.reason == "wrong_answer"
    for path in targets:
        assert not os.path.exists(path), path


@pytest.mark.skipif(not IS_ROOT, reason="plain mode as an ordinary user runs the program as this user (level none)")
def test_write_outside_plain_mode_is_cleaned_up() -> None:
    """Plain mode cannot stop writes to world-writable folders; it removes what the uid left there."""
    tag = secrets.token_hex(6)
    program = f"def f():\n    open('/tmp/cispo_plain_{tag}', 'w').write('x')\n    return 1"
    run(program, ["assert f() == 1"], PLAIN)
    assert not os.path.exists(f"/tmp/cispo_plain_{tag}")


@pytest.mark.parametrize("cfg", MODES)
def test_delete_files(cfg: RewardConfig, tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    public_dir = Path(f"/tmp/cispo_victim_{secrets.token_hex(6)}")
    public_dir.mkdir(mode=0o755)
    public = public_dir / "keep.txt"
    public.write_text("precious")
    try:
        program = f"""
        import os, shutil
        def f():
            gone = 0
            for path in ({str(victim)!r}, {str(public)!r}):
                try:
                    os.remove(path)
                    gone += 1
                except OSError:
                    pass
            for folder in ({str(tmp_path)!r}, {str(public_dir)!r}):
                shutil.rmtree(folder, ignore_errors=True)
            return gone
        """
        result, _ = run(program, ["assert f() > 0"], cfg)
        assert not result.correct
        assert victim.read_text() == "precious" and public.read_text() == "precious"
    finally:
        public.unlink()
        public_dir.rmdir()


# ----------------------------------------------------------------------------- network
def test_network_connection() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = f"""
    import socket
    def f():
        ok = 0
        for host in ("127.0.0.1", "1.1.1.1", "8.8.8.8"):
            try:
                socket.create_connection((host, {port}), timeout=0.5).close()
                ok += 1
            except OSError:
                pass
        return ok
    """
    try:
        result, elapsed = run(program, ["assert f() > 0"], NS)
        assert (result.correct, result.reason) == (False, "wrong_answer")
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


# ----------------------------------------------------------------------------- the caller
@pytest.mark.parametrize("cfg", MODES)
def test_kill_parent(cfg: RewardConfig) -> None:
    me = os.getpid()
    program = f"""
    import os, signal
    def f():
        hits = 0
        for target in (os.getppid(), {me}, 1, {os.getppid()}):
            try:
                os.kill(target, signal.SIGKILL)
                hits += 1
            except OSError:
                pass
        try:
            os.killpg({os.getpgid(me)}, signal.SIGKILL)
            hits += 1
        except OSError:
            pass
        os.kill(-1, signal.SIGKILL)
        return hits
    """
    result, elapsed = run(program, ["assert f() >= 0"], cfg)
    assert not result.correct and within(elapsed, cfg)
    assert os.getpid() == me  # and this test process is still here to say so


@pytest.mark.parametrize("cfg", MODES)
def test_read_parent_environment(cfg: RewardConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = secrets.token_hex(16)
    monkeypatch.setenv("CISPO_TEST_SECRET", secret)
    program = f"""
    import os
    def f():
        found = [k for k, v in os.environ.items() if "{secret[:4]}" in v or k == "CISPO_TEST_SECRET"]
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if b"CISPO_TEST_SECRET" in open(f"/proc/{{pid}}/environ", "rb").read():
                        found.append(pid)
                except OSError:
                    pass
        for pid in ({os.getpid()}, {os.getppid()}):
            try:
                found.append(open(f"/proc/{{pid}}/environ", "rb").read().decode())
            except OSError:
                pass
        print(found)
        return found
    """
    result, _ = run(program, ["assert f() != []"], cfg)
    assert (result.correct, result.reason) == (False, "wrong_answer")
    assert secret not in result.detail


def test_worker_death_takes_the_sandbox_with_it() -> None:
    """If the scoring process dies mid-run, the harness and the program die too (liveness pipe)."""
    cfg = unique(NS.replace(code_test_timeout_s=60.0, code_total_timeout_s=60.0))
    uid = cfg.code_uid_range[0]
    alive = lambda: sandbox_processes(cfg)  # noqa: E731
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from rewards import RewardConfig, score
        cfg = RewardConfig(code_test_timeout_s=60.0, code_total_timeout_s=60.0, code_uid_range=({uid}, {uid + 1}))
        score("code", "```python\\nwhile True:\\n    pass\\n```", {{"asserts": ["assert True"]}}, config=cfg)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the start-up probe's processes come and go first
            if alive():
                time.sleep(1.0)
                if alive():
                    break
            time.sleep(0.05)
        assert alive(), "the sandbox never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == []
    # the killed process could not remove its work folder: the next scorer that starts does
    left = list(Path(tempfile.gettempdir()).glob(f"{sandbox.WORKDIR_PREFIX}{proc.pid}-*"))
    assert left
    assert sandbox.remove_stale_workdirs() >= 1
    assert not any(p.exists() for p in left)


def test_stale_workdir_cleanup_spares_live_processes() -> None:
    mine = Path(tempfile.mkdtemp(prefix=f"{sandbox.WORKDIR_PREFIX}{os.getpid()}-"))
    try:
        sandbox.remove_stale_workdirs()
        assert mine.exists()
    finally:
        mine.rmdir()


# ----------------------------------------------------------------------------- fake passes
FAKE_PASSES = {
    "os._exit(0) at import": "import os\nos._exit(0)\ndef f():\n    return 0",
    "sys.exit(0) at import": "import sys\nsys.exit(0)\ndef f():\n    return 0",
    "SystemExit in the function": "def f():\n    raise SystemExit(0)",
    "KeyboardInterrupt in the function": "def f():\n    raise KeyboardInterrupt",
    "os._exit in the function": "import os\ndef f():\n    os._exit(0)",
    "kill itself": "import os, signal\ndef f():\n    os.kill(os.getpid(), signal.SIGKILL)",
    "fake success markers": (
        "import os, sys\nprint('OK')\nprint('{\"tests\": [{\"status\": \"pass\"}], \"nonce\": \"\"}')\n"
        "sys.stderr.write('PASSED\\n')\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, b'x\\tOK\\t\\t\\t\\n')\n"
        "    except OSError:\n        pass\ndef f():\n    return 0"
    ),
    "redefine check and assert helpers": (
        "def check(candidate):\n    return True\nclass AssertionError(Exception):\n    pass\ndef f():\n    return 0"
    ),
    "patch builtins": (
        "import builtins\nbuiltins.len = lambda x: 3\nbuiltins.AssertionError = type('E', (Exception,), {})\n"
        "builtins.isinstance = lambda *a: True\ndef f():\n    return [0]"
    ),
    "patch os and exit paths": (
        "import os, sys, atexit\nos._exit = lambda code=0: None\nos.write = lambda fd, data: len(data)\n"
        "sys.exit = lambda *a: None\natexit.register(lambda: print('OK'))\ndef f():\n    return 0"
    ),
    "trace function swallowing the failure": (
        "import sys\ndef tracer(frame, event, arg):\n    if event == 'exception':\n        frame.f_globals['__passed__'] = True\n"
        "    return tracer\nsys.settrace(tracer)\ndef f():\n    return 0"
    ),
}


@pytest.mark.parametrize("trick", sorted(FAKE_PASSES))
def test_fake_pass_tricks_fail(trick: str) -> None:
    asserts = ["assert f() == 1", "assert len(f()) == 1 if isinstance(f(), list) else f() == 1"]
    result, elapsed = run(FAKE_PASSES[trick], asserts, NS)
    assert not result.correct and result.score == 0.0, (trick, result)
    assert within(elapsed, NS)


@pytest.mark.parametrize("trick", ["os._exit(0) at import", "fake success markers", "SystemExit in the function"])
def test_fake_pass_tricks_fail_plain_mode(trick: str) -> None:
    result, _ = run(FAKE_PASSES[trick], ["assert f() == 1"], PLAIN)
    assert not result.correct, (trick, result)


def test_check_form_fake_pass() -> None:
    """For check(candidate) tests the program's own `check` must not replace the real one."""
    gt = {"check": "def check(candidate):\n    assert candidate(2) == 4\n", "entry_point": "f"}
    program = "def check(candidate):\n    pass\ndef f(x):\n    return 0"
    assert not score("code", f"```python\n{program}\n```", gt, config=NS).correct
