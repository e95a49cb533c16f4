"""Atomic checkpoints, verification, auto-resume fallback, RNG capture and graceful stop."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cispo.checkpoint import (
    CheckpointError,
    CheckpointManager,
    GracefulStop,
    capture_rng_state,
    restore_rng_state,
    verify,
)

REPO = Path(__file__).resolve().parents[3]


def _write_checkpoint(folder: Path, step: int, size: int = 4096) -> dict[str, bytes]:
    """What the loop writes: a model file, a nested state file, trainer_state.json, config.yaml."""
    rng = np.random.default_rng(step)
    files = {
        "model/model.safetensors": rng.bytes(size),
        "model/config.json": json.dumps({"step": step}).encode(),
        "engine/optim_states.pt": rng.bytes(size // 2),
        "trainer_state.json": json.dumps({"step": step, "consumed": 8 * step}).encode(),
        "config.yaml": b"algorithm:\n  name: cispo\nseed: 0\n",
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def _save(manager: CheckpointManager, step: int) -> dict[str, bytes]:
    with manager.writing(step) as tmp:
        files = _write_checkpoint(tmp, step)
    return files


def _names(manager: CheckpointManager) -> list[str]:
    return sorted(p.name for p in manager.dir.iterdir())


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def test_commit_writes_layout_manifest_and_latest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=3)
    files = _save(manager, 4)

    final = tmp_path / "checkpoints" / "step_00000004"
    assert _names(manager) == ["latest", "step_00000004"]  # no temp folder left
    assert (manager.dir / "latest").read_text() == "step_00000004\n"
    manifest = json.loads((final / "MANIFEST.json").read_text())
    assert manifest["step"] == 4
    expected = {
        rel: {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, data in files.items()
    }
    assert {e["path"]: e for e in manifest["files"]} == expected
    for rel, data in files.items():
        assert (final / rel).read_bytes() == data
    assert verify(final) == []
    assert manager.latest() == final


def test_exception_inside_writing_removes_temp_and_changes_nothing(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=1)
    _save(manager, 2)
    before = _names(manager)
    with pytest.raises(RuntimeError, match="disk full"):
        with manager.writing(3) as tmp:
            _write_checkpoint(tmp, 3)
            raise RuntimeError("disk full")
    assert _names(manager) == before == ["latest", "step_00000002"]
    assert (manager.dir / "latest").read_text() == "step_00000002\n"
    assert verify(manager.dir / "step_00000002") == []


def test_symlink_in_checkpoint_is_refused(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="symlink"):
        with manager.writing(1) as tmp:
            (tmp / "link.bin").symlink_to(outside)
    assert _names(manager) == []


def test_keep_last_prunes_only_after_a_complete_save(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in range(1, 6):
        _save(manager, step)
    assert _names(manager) == ["latest", "step_00000004", "step_00000005"]

    # An incomplete step folder (no manifest) is not counted and not deleted.
    (manager.dir / "step_00000006").mkdir()
    (manager.dir / "step_00000006" / "half.bin").write_bytes(b"12")
    one = CheckpointManager(tmp_path, keep_last=1)
    _save(one, 7)
    assert _names(one) == ["latest", "step_00000006", "step_00000007"]


def test_keep_last_one_never_deletes_the_only_good_checkpoint(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=1)
    _save(manager, 1)
    with pytest.raises(KeyboardInterrupt):
        with manager.writing(2) as tmp:
            _write_checkpoint(tmp, 2)
            raise KeyboardInterrupt
    assert _names(manager) == ["latest", "step_00000001"]
    assert manager.find_resume("auto") == manager.dir / "step_00000001"


def test_saving_an_existing_step_replaces_it_atomically(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=3)
    _save(manager, 2)
    target = manager.dir / "step_00000002" / "model" / "model.safetensors"
    target.write_bytes(b"corrupted")
    with manager.writing(2) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert _names(manager) == ["latest", "step_00000002"]
    assert verify(manager.dir / "step_00000002") == []
    assert not target.exists() and (manager.dir / "step_00000002" / "new.bin").read_bytes() == b"new"


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
    manager = CheckpointManager(tmp_path, keep_last=None)
    with pytest.raises(ValueError, match="step"):
        with manager.writing(-1):
            pass
    with pytest.raises(ValueError, match="resume"):
        manager.find_resume(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Verification and resume
# --------------------------------------------------------------------------------------------------


def test_verify_reports_truncated_corrupted_missing_and_no_manifest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=None)
    files = _save(manager, 1)
    ckpt = manager.dir / "step_00000001"

    model = ckpt / "model" / "model.safetensors"
    model.write_bytes(files["model/model.safetensors"][:100])
    [problem] = verify(ckpt)
    assert str(model) in problem and "size 100" in problem and "4096" in problem

    flipped = bytearray(files["model/model.safetensors"])
    flipped[1234] ^= 0xFF
    model.write_bytes(bytes(flipped))
    [problem] = verify(ckpt)
    assert str(model) in problem and "sha256" in problem
    assert verify(ckpt, check_hashes=False) == []  # same size: only the hash sees it

    (ckpt / "trainer_state.json").unlink()
    assert any(str(ckpt / "trainer_state.json") in p and "missing" in p for p in verify(ckpt))

    (ckpt / "MANIFEST.json").write_text("{not json")
    [problem] = verify(ckpt)
    assert "MANIFEST.json" in problem and "JSON" in problem
    (ckpt / "MANIFEST.json").unlink()
    [problem] = verify(ckpt)
    assert "MANIFEST.json" in problem and "missing" in problem


def test_auto_resume_skips_a_corrupted_latest_and_reports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        _save(manager, step)
    assert manager.find_resume("auto") == manager.dir / "step_00000003"

    broken = manager.dir / "step_00000003" / "engine" / "optim_states.pt"
    with open(broken, "r+b") as f:
        f.truncate(10)
    with caplog.at_level(logging.WARNING, logger="cispo.checkpoint"):
        assert manager.find_resume("auto") == manager.dir / "step_00000002"
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and str(broken) in skipped[0] and "truncated" in skipped[0]

    # An explicit path that fails names the file; a folder name inside checkpoints/ is accepted.
    with pytest.raises(CheckpointError, match="optim_states.pt"):
        manager.find_resume(str(manager.dir / "step_00000003"))
    assert manager.find_resume("step_00000002") == manager.dir / "step_00000002"
    assert manager.find_resume(manager.dir / "step_00000001") == manager.dir / "step_00000001"
    assert manager.find_resume("none") is None and manager.find_resume(None) is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        manager.find_resume(str(tmp_path / "nope"))


def test_auto_resume_with_nothing_and_with_only_broken_checkpoints(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.find_resume("auto") is None
    _save(manager, 5)
    (manager.dir / "step_00000005" / "config.yaml").unlink()
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints.*config.yaml"):
        manager.find_resume("auto")


def test_startup_removes_leftover_temp_folders_and_promotes_a_complete_one(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=3)
    _save(manager, 1)
    # A crash mid-write: no manifest.
    partial = manager.dir / ".tmp_step_00000002_999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    # A crash between the manifest and the rename: complete, so it is kept.
    complete_tmp = manager.dir / ".tmp_step_00000003_999"
    complete_tmp.mkdir()
    with manager.writing(3) as tmp:
        _write_checkpoint(tmp, 3)
    os.replace(manager.dir / "step_00000003", complete_tmp)
    (manager.dir / "latest").write_text("step_00000001\n")
    (manager.dir / ".tmp_latest_999").write_text("step_0000")

    restarted = CheckpointManager(tmp_path, keep_last=3)
    assert _names(restarted) == ["latest", "step_00000001", "step_00000003"]
    assert (restarted.dir / "latest").read_text() == "step_00000003\n"
    assert restarted.find_resume("auto") == restarted.dir / "step_00000003"


def test_sha256_of_a_500mb_checkpoint_is_fast_enough(tmp_path: Path) -> None:
    """The cost that `resume=auto` and every save pay: measured ~0.4 s per 500 MB here (sha_ni)."""
    manager = CheckpointManager(tmp_path, keep_last=1)
    size = 32 * 1024 * 1024
    with manager.writing(1) as tmp:
        (tmp / "model.safetensors").write_bytes(os.urandom(size))
    start = time.perf_counter()
    assert verify(manager.dir / "step_00000001") == []
    seconds = time.perf_counter() - start
    per_500mb = seconds * (500 * 1024 * 1024) / size
    assert per_500mb < 10.0, f"sha256 verification would take {per_500mb:.1f} s per 500 MB"


# --------------------------------------------------------------------------------------------------
# RNG
# --------------------------------------------------------------------------------------------------


def _draw() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),  # leaves a cached gaussian in numpy's legacy state
        torch.rand(3).tolist(),
    )


def test_rng_state_round_trips_through_json() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draw()
    state = json.loads(json.dumps(capture_rng_state()))  # must be plain JSON
    expected = _draw()
    _draw()  # move every generator on
    restore_rng_state(state)
    assert _draw() == expected
    assert state["torch_cuda"] is None or torch.cuda.is_available()
    with pytest.raises(ValueError, match="rng state"):
        restore_rng_state({"python": {}})


# --------------------------------------------------------------------------------------------------
# Graceful stop
# --------------------------------------------------------------------------------------------------


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_graceful_stop_in_process_sets_flag_then_second_signal_is_default() -> None:
    # Tests that ran earlier in this process (Ray, vLLM) may have left their own SIGINT handler: start
    # from Python's default so that "the handler from before" is the one that raises KeyboardInterrupt.
    suite_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _graceful_stop_round_trip()
    finally:
        signal.signal(signal.SIGINT, suite_int)


def _graceful_stop_round_trip() -> None:
    before_term = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert _wait_for(lambda: stop.requested)
        assert stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # Python's default SIGINT behaviour
            os.kill(os.getpid(), signal.SIGINT)
            _wait_for(lambda: False, timeout=2.0)
        assert signal.getsignal(signal.SIGINT) is before_int  # restored by the second signal
    assert signal.getsignal(signal.SIGTERM) is before_term
    with GracefulStop(signals=(signal.SIGTERM,)) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: stop.requested) and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before_term


CHILD = textwrap.dedent(
    """
    import sys, time
    from cispo.checkpoint import CheckpointManager, GracefulStop
    run_dir, finish_step = sys.argv[1], sys.argv[2] == "finish"
    manager = CheckpointManager(run_dir, keep_last=2)
    with GracefulStop() as stop:
        print("READY", flush=True)
        for step in range(1, 2000):
            time.sleep(0.01)  # the step's work
            if stop.requested:
                print(f"STOP {step} {stop.signal_name}", flush=True)
                if not finish_step:
                    time.sleep(30)  # a long step: only a second signal ends it
                with manager.writing(step) as tmp:
                    (tmp / "trainer_state.json").write_text(str(step))
                print("SAVED", flush=True)
                sys.exit(0)
    sys.exit(3)
    """
)


def _start_child(tmp_path: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_sigterm_in_subprocess_checkpoints_and_exits_cleanly(tmp_path: Path) -> None:
    proc = _start_child(tmp_path, "finish")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stop_line = out.splitlines()[0].split()
    assert stop_line[0] == "STOP" and stop_line[2] == "SIGTERM" and out.splitlines()[-1] == "SAVED"
    step = int(stop_line[1])
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.find_resume("auto") == manager.dir / f"step_{step:08d}"
    assert "send it again" in err  # the first signal is announced


def test_second_sigterm_in_subprocess_kills_immediately(tmp_path: Path) -> None:
    proc = _start_child(tmp_path, "hang")
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().startswith("STOP")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert not any((tmp_path / "checkpoints").glob("step_*"))


def test_a_reader_never_cleans_a_live_run_and_the_attempt_id_stays_out_of_the_checkpoint(tmp_path: Path) -> None:
    owner = CheckpointManager(tmp_path, keep_last=2, attempt="42-beef")
    _save(owner, 1)
    with owner.writing(2) as tmp:
        assert tmp.name == ".tmp_step_00000002_42-beef" and (tmp / ".attempt").read_text() == "42-beef\n"
        _write_checkpoint(tmp, 2)
        reader = CheckpointManager(tmp_path, keep_last=None, cleanup=False)  # e.g. cispo.eval on a live run
        assert tmp.is_dir() and reader.find_resume("auto") == owner.dir / "step_00000001"
    assert not (owner.dir / "step_00000002" / ".attempt").exists() and verify(owner.dir / "step_00000002") == []
    with pytest.raises(ValueError, match="attempt"):
        CheckpointManager(tmp_path, keep_last=2, attempt="../x")
