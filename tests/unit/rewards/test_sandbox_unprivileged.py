"""The hostile and red-team code tests again, as an ordinary user (issue 31).

Started as root (as CI runs), this creates or reuses an unprivileged account and runs the code
test files once more in ONE child pytest that drops to it (setgid/setuid before exec, so before the
scorer is imported): the sandbox then has no root to lean on and must isolate through a user
namespace, with rlimits where no cgroup is delegated. Same files, same expectations; only the
plain-mode cases are left out (`-k "not plain"`): plain mode is level `none`, which promises no
isolation to an ordinary user. The memory and fork attacks must leave that child (the scorer) alive.

If the interpreter lives where others cannot reach it (this machine's pyenv under /root, mode 700),
the child gets a private mount namespace in which a tmpfs covers that folder and only the
interpreter's own tree is bound back: what an ordinary user's own Python would look like. Nothing
on the machine changes. Run as an ordinary user, the files already test that case: skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.unprivileged import NoUnprivilegedUser, account, drop_to, world_reachable

ROOT = Path(__file__).resolve().parents[3]
SUITES = ("tests/unit/rewards/test_sandbox.py", "tests/unit/rewards/test_code_attacks.py",
          "tests/unit/rewards/test_code_judge.py", "tests/unit/rewards/test_code.py",
          "tests/unit/rewards/test_sandbox_isolation.py")
SELECTION = "not plain"
RUN_TIMEOUT_S = 600.0
OUTPUT_TAIL = 6000
# must pass (not skip) as the ordinary user: isolation, the memory and fork attacks, controls
MUST_PASS = (
    "test_isolation_here", "test_memory_bomb[namespaces]", "test_fork_bomb[namespaces]",
    "test_memory_spread_over_processes", "test_process_limit_binds_as_root[namespaces]",
    "test_network_connection", "test_write_outside_its_folder[namespaces]", "test_ipc_and_inode_limits_in_namespace_mode",
    "test_worker_death_takes_the_sandbox_with_it", "test_io_form_codeforces", "test_strict_refuses_with_one_line",
    "test_undelegated_v2_says_how",
)
MUST_PASS_PREFIXES = ("test_honest_programs_pass[", "test_memory_outside_the_processes_is_bounded[",
                      "test_process_behind_an_exited_leader_is_found[")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="already unprivileged: the code test files run as this user")


def _account() -> pwd.struct_passwd:
    try:
        return account()
    except NoUnprivilegedUser as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def unprivileged_run() -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """One child pytest over the code test files as the unprivileged user: (process, outcome per test)."""
    user = _account()
    if not world_reachable(ROOT) or not ROOT.stat().st_mode & 0o004:
        pytest.skip(f"{ROOT} is not readable by other users")
    out_dir = Path(tempfile.mkdtemp(prefix="cispo-unprivileged-"))  # the child's HOME, temp and report
    os.chown(out_dir, user.pw_uid, user.pw_gid)
    junit = out_dir / "junit.xml"
    stage = tempfile.mkdtemp(prefix="cispo-interp-")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(out_dir), "TMPDIR": str(out_dir), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SELECTION,
           f"--junitxml={junit}", f"--basetemp={out_dir / 'tmp'}", *SUITES]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              preexec_fn=drop_to(user, Path(sys.base_prefix).resolve(), stage))
    except subprocess.SubprocessError as e:
        if "preexec_fn" in str(e):
            pytest.skip(f"cannot drop to the unprivileged user here: {e}")
        raise
    finally:
        os.rmdir(stage)
    outcomes: dict[str, str] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            verdict = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            outcomes[case.get("name", "")] = verdict
    shutil.rmtree(out_dir, ignore_errors=True)
    return proc, outcomes


def test_code_tests_pass_as_an_ordinary_user(unprivileged_run) -> None:
    """Every case of the code test files holds as the ordinary user, and the child (the scorer) lived."""
    proc, outcomes = unprivileged_run
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-OUTPUT_TAIL:]}{proc.stderr[-OUTPUT_TAIL:]}"
    failed = sorted(name for name, verdict in outcomes.items() if verdict in ("failure", "error"))
    assert not failed, failed


def test_attacks_were_not_skipped_as_an_ordinary_user(unprivileged_run) -> None:
    """The cases that matter ran (a skip would hide a hole): isolation level, memory and fork attacks
    (the scorer survived them), uncounted memory, hidden processes, network, files, controls."""
    _, outcomes = unprivileged_run
    for name in MUST_PASS:
        assert outcomes.get(name) == "passed", (name, outcomes.get(name))
    for prefix in MUST_PASS_PREFIXES:
        cases = {n: v for n, v in outcomes.items() if n.startswith(prefix)}
        assert cases and set(cases.values()) == {"passed"}, (prefix, cases)
