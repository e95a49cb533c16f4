"""Isolation levels and failing closed (issue 31): `reward.code_isolation`, the one-line refusal when
namespaces are unavailable, `none` running plain with a warning, and the cgroup v2 delegated path up
to the files it writes (a fake cgroupfs folder: these machines have cgroup v1)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from rewards import RewardConfig, score, score_batch
from rewards import cgroups, sandbox

CFG = RewardConfig(code_test_timeout_s=5.0, code_total_timeout_s=10.0, code_memory_mb=256, hard_timeout_grace_s=1.0)
CONTROL = ("```python\ndef f(x):\n    return 2 * x\n```", {"asserts": ["assert f(2) == 4"]})
OWN = "/user.slice/user-1000.slice/user@1000.service/app.slice/run.scope"  # a delegated scope, as systemd makes
MB = 1 << 20


# ----------------------------------------------------------------------------- the key
def test_code_isolation_is_validated() -> None:
    assert RewardConfig().code_isolation == "strict"
    with pytest.raises(ValueError, match="reward.code_isolation must be one of strict, none"):
        RewardConfig(code_isolation="loose")
    with pytest.raises(ValueError, match="code_use_namespaces=false needs reward.code_isolation=none"):
        RewardConfig(code_use_namespaces=False)
    assert RewardConfig(code_use_namespaces=False, code_isolation="none").code_isolation == "none"


def test_level_here() -> None:
    """Root with cgroups (CI): namespaces+cgroup; an ordinary user on cgroup v1: namespaces+rlimits."""
    iso = sandbox.isolation(CFG)
    assert sandbox.isolation_level(CFG) == iso.level in (sandbox.LEVEL_CGROUP, sandbox.LEVEL_RLIMITS)
    if os.geteuid() == 0 and cgroups.detect().version is not None:
        assert iso.level == sandbox.LEVEL_CGROUP
    assert sandbox.isolation_level(CFG.replace(code_use_namespaces=False, code_isolation="none")) == sandbox.LEVEL_NONE


# ----------------------------------------------------------------------------- failing closed
@pytest.fixture
def no_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Namespaces unavailable: `unshare` is /bin/false (fails at once), and nothing probed is cached."""
    monkeypatch.setattr(sandbox, "UNSHARE", "/bin/false")
    monkeypatch.setattr(sandbox, "_probe_cache", {})


@pytest.mark.usefixtures("no_namespaces")
def test_strict_refuses_with_one_line() -> None:
    response, gt = CONTROL
    with pytest.raises(sandbox.SandboxUnavailableError) as caught:
        score("code", response, gt, config=CFG)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and "\n" not in message, message
    assert message.startswith("code sandbox unavailable:") and "reward.code_isolation=none" in message, message
    with pytest.raises(sandbox.SandboxUnavailableError):
        sandbox.isolation_level(CFG)
    with pytest.raises(sandbox.SandboxUnavailableError):  # the whole batch, before any worker starts
        score_batch([("code", response, gt)], config=CFG, workers=1)


def test_refusal_names_the_switch_to_flip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ordinary user is told which sysctl keeps user namespaces away (fake /proc/sys files)."""
    values = {"unprivileged_userns_clone": "0", "max_user_namespaces": "15000", "apparmor_restrict_unprivileged_userns": "0"}
    switches = []
    for name, blocking, fix in sandbox.USERNS_SWITCHES:
        fake = tmp_path / Path(name).name
        fake.write_text(values[fake.name] + "\n")  # only the first one blocks
        switches.append((str(fake), blocking, fix))
    monkeypatch.setattr(sandbox, "USERNS_SWITCHES", tuple(switches))
    message = sandbox._namespaces_missing("unshare: Operation not permitted", root=False)
    assert "user namespaces are not usable" in message and "sysctl kernel.unprivileged_userns_clone=1" in message
    assert "max_user_namespaces" not in message and "\n" not in message
    assert "reward.code_isolation=none" in sandbox._namespaces_missing("x", root=True)


@pytest.mark.usefixtures("no_namespaces")
def test_none_runs_plain_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    cfg = CFG.replace(code_isolation="none")
    response, gt = CONTROL
    with caplog.at_level(logging.WARNING, logger="rewards.sandbox"):
        result = score("code", response, gt, config=cfg)
    assert result.correct, result
    assert sandbox.isolation_level(cfg) == sandbox.LEVEL_NONE
    warned = [r.getMessage() for r in caplog.records if "reward.code_isolation=none" in r.getMessage()]
    assert warned and "'none'" in warned[0], caplog.text


# ----------------------------------------------------------------------------- cgroup v2, delegated (fake cgroupfs)
def fake_cgroupfs(top: Path, controllers: str = "cpu io memory pids", procs: str = "11\n22\n") -> Path:
    """A folder shaped like a delegated v2 cgroup: plain files stand in for the kernel's."""
    own = top / OWN.lstrip("/")
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text(procs)
    return own


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """Record process moves (a plain file keeps only the last write)."""
    made: list[tuple[str, Path]] = []
    monkeypatch.setattr(cgroups, "_move", lambda pid, leaf: made.append((pid, leaf)))
    return made


def test_delegated_v2_writes_what_the_kernel_needs(tmp_path: Path, moves: list) -> None:
    own = fake_cgroupfs(tmp_path)
    support = cgroups.detect_delegated(tmp_path, OWN)
    parent = own / cgroups.PARENT
    assert (support.version, support.roots, support.note) == (2, (str(parent),), "")
    assert moves == [("11", own / cgroups.SCORER_LEAF), ("22", own / cgroups.SCORER_LEAF)]  # out of the way first
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids"
    run = cgroups.create(support, 96 * MB, 5)
    folder = Path(run.memory_dir)
    assert folder.parent == parent and folder.name.startswith(f"{os.getpid()}-")
    assert (folder / "memory.max").read_text() == str(96 * MB) and (folder / "pids.max").read_text() == "5"
    assert run.spec() == {"version": 2, "dirs": [str(folder)], "memory": str(folder)}


def test_delegated_v2_from_the_scorer_leaf_moves_nothing(tmp_path: Path, moves: list) -> None:
    """A later scorer process (a pool worker) already sits in the leaf: the same tree is reused."""
    own = fake_cgroupfs(tmp_path)
    (own / "cgroup.subtree_control").write_text("memory pids\n")  # as the kernel shows it once enabled
    (own / cgroups.SCORER_LEAF).mkdir()
    support = cgroups.detect_delegated(tmp_path, OWN + "/" + cgroups.SCORER_LEAF)
    assert support.version == 2 and support.roots == (str(own / cgroups.PARENT),) and moves == []


def test_delegated_v2_without_controllers_says_how(tmp_path: Path, moves: list) -> None:
    fake_cgroupfs(tmp_path, controllers="cpu io")
    support = cgroups.detect_delegated(tmp_path, OWN)
    assert support.version is None and "memory/pids" in support.note and "Delegate=yes" in support.note
    assert moves == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: nothing is undelegated to root")
def test_undelegated_v2_says_how(tmp_path: Path) -> None:
    own = fake_cgroupfs(tmp_path)
    (own / "cgroup.procs").chmod(0o444)
    support = cgroups.detect_delegated(tmp_path, OWN)
    assert support.version is None and "not delegated to this user" in support.note


def test_detect_routes_an_ordinary_user_on_v2_to_the_delegated_tree(tmp_path: Path, moves: list,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    own = fake_cgroupfs(tmp_path)
    monkeypatch.setattr(cgroups, "_mounts", lambda: [(str(tmp_path), "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroups, "_own_cgroup_v2", lambda: OWN)
    monkeypatch.setattr(cgroups, "_is_root", lambda: False)
    assert cgroups.detect().roots == (str(own / cgroups.PARENT),)


def test_detect_as_root_on_v2_uses_the_root_cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(cgroups, "_mounts", lambda: [(str(tmp_path), "cgroup2", {"rw"})])
    monkeypatch.setattr(cgroups, "_is_root", lambda: True)
    support = cgroups.detect()
    assert support.version == 2 and support.roots == (str(tmp_path / cgroups.PARENT),)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
