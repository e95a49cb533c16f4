"""Fault tolerance without Ray: a kill during pruning, the run-folder lock and orphaned workers, a
stale worker's write, disk-full writes of checkpoints and metrics lines, and failure classification.

Real failures wherever the OS can make them: kill -9 of a child process, RLIMIT_FSIZE (the kernel
fails the write with EFBIG exactly as a full disk fails it with ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cispo.checkpoint import CheckpointManager, verify
from cispo.checkpoint.layout import ATTEMPT_FILE, OWNER_NAME
from cispo.checkpoint.lock import RunLock, RunLockedError, WorkerRecord, process_start_time
from cispo.config.fault_tolerance import FaultToleranceConfig
from cispo.driver.checkpoint_guard import CHECKPOINTS_SKIPPED_KEY, CheckpointWriteError, checkpoint_write_guard
from cispo.driver.failures import classify
from cispo.tracking import read_metrics

REPO = Path(__file__).resolve().parents[3]


def _run_child(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _save(manager: CheckpointManager, step: int, size: int = 2048) -> None:
    with manager.writing(step) as tmp:
        (tmp / "model").mkdir()
        for i in range(5):
            (tmp / "model" / f"shard{i}.bin").write_bytes(os.urandom(size))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))


# --------------------------------------------------------------------------------------------------
# 1. A kill during pruning (issue 14, failure 1)
# --------------------------------------------------------------------------------------------------

KILLED_DURING_PRUNE = """
    import os, shutil, signal, sys
    from cispo.checkpoint import CheckpointManager
    manager = CheckpointManager(sys.argv[1], keep_last=1)
    def write(step):
        with manager.writing(step) as tmp:
            (tmp / "model").mkdir()
            for i in range(5):
                (tmp / "model" / f"shard{i}.bin").write_bytes(os.urandom(2048))
    write(1)
    real_rmtree = shutil.rmtree
    def rmtree_then_die(path, *a, **k):
        # the first file of the folder being deleted goes, then the process is killed (kill -9)
        victim = sorted(p for p in __import__("pathlib").Path(path).rglob("*") if p.is_file())[0]
        victim.unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    shutil.rmtree = rmtree_then_die
    write(2)   # prunes step 1: killed half-way through the deletion
"""


def test_kill_during_prune_leaves_only_complete_checkpoints_and_is_cleaned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = _run_child(KILLED_DURING_PRUNE, str(tmp_path))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folders = sorted((tmp_path / "checkpoints").glob("step_*"))
    # Every step_* folder is complete at every instant (the old in-place delete left step_1 half gone).
    assert [verify(f, check_hashes=False) for f in folders] == [[]] * len(folders)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000002"

    restarted = CheckpointManager(tmp_path, keep_last=1)  # start-up removes the half-deleted leftover
    assert sorted(p.name for p in restarted.dir.iterdir()) == ["latest", "step_00000002"]
    with caplog.at_level("WARNING"):
        _save(restarted, 3)
    assert not [r for r in caplog.records if "incomplete" in r.getMessage()]
    assert sorted(p.name for p in restarted.dir.iterdir()) == ["latest", "step_00000003"]


def test_startup_removes_a_step_folder_half_deleted_by_an_old_in_place_prune(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=None)
    for step in (1, 2, 3):
        _save(manager, step)
    (manager.dir / "step_00000001" / "model" / "shard0.bin").unlink()  # what an interrupted rmtree leaves
    corrupted = manager.dir / "step_00000002" / "model" / "shard0.bin"
    corrupted.write_bytes(b"x" * 10)  # truncated, not missing: evidence, kept for a human
    CheckpointManager(tmp_path, keep_last=None)
    assert sorted(p.name for p in manager.dir.glob("step_*")) == ["step_00000002", "step_00000003"]


# --------------------------------------------------------------------------------------------------
# 2. Single owner of a run folder; workers of a dead owner (issue 14, failure 2)
# --------------------------------------------------------------------------------------------------

HOLD_LOCK = """
    import sys, time
    from cispo.checkpoint.lock import RunLock
    lock = RunLock(sys.argv[1], wait_s=1).acquire()
    print("LOCKED", flush=True)
    time.sleep(60)
"""


def test_a_live_owner_is_refused_and_a_killed_one_is_not(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "LOCKED"
        start = time.monotonic()
        with pytest.raises(RunLockedError, match=f"pid {owner.pid}.*lock_wait_s=0.5"):
            RunLock(tmp_path, wait_s=0.5).acquire()
        assert time.monotonic() - start >= 0.5
        owner.kill()  # kill -9: the kernel drops the flock with the process
        owner.wait()
        with RunLock(tmp_path, wait_s=0.5) as lock:
            assert lock.read_owner()["pid"] == os.getpid()
        assert not (tmp_path / OWNER_NAME).exists()
    finally:
        owner.kill()
        owner.wait()


def test_workers_left_by_a_dead_owner_are_waited_for_then_killed(tmp_path: Path) -> None:
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = RunLock(tmp_path, wait_s=5).acquire()
        lock.set_workers([WorkerRecord("trainer", os.uname().nodename, orphan.pid, process_start_time(orphan.pid))])
        os.close(lock._fd)  # the owner dies without releasing: its record stays, the flock goes
        lock._fd = None
        assert json.loads((tmp_path / OWNER_NAME).read_text())["workers"][0]["pid"] == orphan.pid

        start = time.monotonic()
        with RunLock(tmp_path, wait_s=0.5):
            assert orphan.poll() is not None or process_start_time(orphan.pid) is None
        assert 0.5 <= time.monotonic() - start < 5
    finally:
        orphan.kill()
        orphan.wait()


def test_a_reused_pid_is_not_taken_for_an_orphan(tmp_path: Path) -> None:
    me = WorkerRecord("rollout", os.uname().nodename, os.getpid(), process_start_time(os.getpid()))
    assert me.alive_here()
    assert not WorkerRecord("rollout", me.host, me.pid, me.start_time - 1).alive_here()  # same pid, other process
    assert not WorkerRecord("rollout", "another-host", me.pid, me.start_time).alive_here()


class _RecordingWorker:
    """A test double of the SavableWorker protocol: records what save_worker asks of it."""

    def __init__(self, tmp: Path) -> None:
        self.rank, self.skipped_steps_total, self.model_path = 0, 0, tmp / "src_model"
        self.model_path.mkdir()
        self.calls: list[str] = []
        self.hf_model = SimpleNamespace(save_pretrained=lambda d, state_dict: self.calls.append(f"model:{d}"))
        self.engine = SimpleNamespace(save_checkpoint=lambda d, **k: self.calls.append(f"engine:{d}"))

    def export_weights(self) -> dict:
        return {}


def test_a_worker_writes_only_into_the_attempt_that_created_it(tmp_path: Path) -> None:
    from cispo.trainer.checkpoint import StaleCheckpointFolderError, save_worker

    manager = CheckpointManager(tmp_path / "run", keep_last=None, attempt="111-aaaa")
    worker = _RecordingWorker(tmp_path)
    with manager.writing(1) as tmp:
        assert (tmp / ATTEMPT_FILE).read_text().strip() == "111-aaaa"
        save_worker(worker, tmp / "trainer")  # the live attempt's own folder: written
        dead_folder = tmp
    assert len(worker.calls) == 2 and not (manager.dir / "step_00000001" / ATTEMPT_FILE).exists()

    # The driver died and the next one cleaned its temp folder: a late worker must not recreate it.
    worker.calls.clear()
    with pytest.raises(StaleCheckpointFolderError, match="gone"):
        save_worker(worker, dead_folder / "trainer")
    assert worker.calls == [] and not dead_folder.exists()

    # The folder exists but another attempt owns it now.
    other = manager.dir / ".tmp_step_00000002_222-bbbb"
    other.mkdir()
    (other / ATTEMPT_FILE).write_text("222-bbbb\n")
    (tmp_path / "w2").mkdir()
    holder_switch = _RecordingWorker(tmp_path / "w2")
    # While this worker gathers its weights, a new driver attempt takes the folder over.
    holder_switch.export_weights = lambda: (other / ATTEMPT_FILE).write_text("333-cccc\n")  # type: ignore[method-assign]
    with pytest.raises(StaleCheckpointFolderError, match="another driver attempt"):
        save_worker(holder_switch, other / "trainer")
    assert holder_switch.calls == [] and not (other / "trainer").exists()


# --------------------------------------------------------------------------------------------------
# Disk full / I/O errors (RLIMIT_FSIZE: the kernel refuses the write with EFBIG)
# --------------------------------------------------------------------------------------------------

METRICS_DISK_FULL = """
    import json, os, resource, signal, sys
    from cispo.tracking import MetricsLogger, MetricsWriteError
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
    logger = MetricsLogger(sys.argv[1], wandb_mode="disabled", console=False)
    logger.log(1, {"loss": 0.5})
    size = os.path.getsize(logger.path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))   # room for 20 more bytes only
    try:
        logger.log(2, {"loss": 0.25, "note": "x" * 200})
    except MetricsWriteError as exc:
        print("FAILED", exc.errno, os.path.getsize(logger.path) == size, flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))        # space again: the step is redone
    logger.log(2, {"loss": 0.25, "note": "x" * 200})
    logger.close()
"""


def test_a_metrics_line_that_hits_a_full_disk_is_cut_back_whole(tmp_path: Path) -> None:
    proc = _run_child(METRICS_DISK_FULL, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["FAILED", str(errno.EFBIG), "True"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]  # none lost, none duplicated, no half line


CHECKPOINT_DISK_FULL = """
    import os, resource, signal, sys
    from cispo.checkpoint import CheckpointManager
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    manager = CheckpointManager(sys.argv[1], keep_last=2)
    with manager.writing(1) as tmp:
        (tmp / "weights.bin").write_bytes(os.urandom(4096))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))  # no file may grow past 8 kB: "disk full"
    try:
        with manager.writing(2) as tmp:
            (tmp / "weights.bin").write_bytes(os.urandom(65536))
    except OSError as exc:
        print("FAILED", exc.errno, flush=True)
"""


def test_a_checkpoint_that_hits_a_full_disk_leaves_latest_on_the_previous_one(tmp_path: Path) -> None:
    proc = _run_child(CHECKPOINT_DISK_FULL, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["FAILED", str(errno.EFBIG)]
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000001"]  # partial one removed
    assert (ckpts / "latest").read_text().strip() == "step_00000001"
    assert verify(ckpts / "step_00000001") == []


def test_checkpoint_error_policy_skip_counts_and_stop_raises(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=2)
    _save(manager, 1)
    counter: dict[str, float] = {}
    skip = checkpoint_write_guard(FaultToleranceConfig(on_checkpoint_error="skip"), 2, counter)
    with skip, manager.writing(2):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert skip.skipped and counter == {CHECKPOINTS_SKIPPED_KEY: 1}
    assert (manager.dir / "latest").read_text().strip() == "step_00000001"
    with pytest.raises(CheckpointWriteError, match="step 3.*No space left.*on_checkpoint_error=stop"):
        with checkpoint_write_guard(FaultToleranceConfig(on_checkpoint_error="stop"), 3), manager.writing(3):
            raise OSError(errno.ENOSPC, "No space left on device")
    # A hang (TimeoutError is an OSError) is a worker failure, not a disk problem: not swallowed.
    import ray.exceptions as rx

    with pytest.raises(rx.GetTimeoutError):
        with checkpoint_write_guard(FaultToleranceConfig(), 4), manager.writing(4):
            raise rx.GetTimeoutError("rank 1 did not answer")
    assert sorted(p.name for p in manager.dir.iterdir()) == ["latest", "step_00000001"]


# --------------------------------------------------------------------------------------------------
# Classification and config
# --------------------------------------------------------------------------------------------------


def test_worker_failures_are_told_apart_from_bugs() -> None:
    import ray.exceptions as rx

    from rollout.group import RolloutGroupError
    from rollout.weight_format import WeightSyncTimeoutError

    died = classify(rx.ActorDiedError())
    assert died is not None and died.kind == "died"
    assert classify(RolloutGroupError("3 actor deaths in one call")).kind == "died"
    assert classify(rx.GetTimeoutError("late")).kind == "hang"
    assert classify(WeightSyncTimeoutError("late")).kind == "hang"
    assert classify(TimeoutError("rollout actors [0] returned nothing within 5 s")).kind == "hang"
    assert classify(ValueError("bad batch")) is None
    assert classify(KeyError("x")) is None
    peer = rx.RayTaskError("update", "Traceback ...", RuntimeError("[gloo] Connection closed by peer"))
    assert classify(peer).kind == "peer"
    bug = rx.RayTaskError("update", "Traceback ...", ValueError("shapes differ"))
    assert classify(bug) is None


def test_fault_tolerance_config_names_bad_fields() -> None:
    with pytest.raises(ValueError, match="fault_tolerance.max_restarts"):
        FaultToleranceConfig(max_restarts=-1)
    with pytest.raises(ValueError, match="fault_tolerance.on_checkpoint_error"):
        FaultToleranceConfig(on_checkpoint_error="ignore")
    with pytest.raises(ValueError, match="fault_tolerance.call_timeout_s"):
        FaultToleranceConfig(call_timeout_s=0)
    assert FaultToleranceConfig().max_restarts > 0


# --------------------------------------------------------------------------------------------------
# The recovery loop's decisions (a stand-in for the training loop: pure control flow)
# --------------------------------------------------------------------------------------------------


def _cfg(tmp_path: Path, **ft: object):  # noqa: ANN202 - a TrainConfig
    from cispo.config import TrainConfig

    cfg = TrainConfig()
    cfg.run_dir = str(tmp_path / "run")
    cfg.checkpoint.resume = "none"
    cfg.fault_tolerance = FaultToleranceConfig(**ft)
    return cfg


def test_recovery_restarts_resumes_from_the_newest_checkpoint_and_gives_up_with_a_code(tmp_path: Path) -> None:
    import ray.exceptions as rx

    from cispo.driver.failures import EXIT_WORKER_FAILURE, RunStopped
    from cispo.driver.supervisor import iter_events, train_with_recovery

    cfg = _cfg(tmp_path, max_restarts=2)
    seen: list[str] = []

    def flaky(attempt_cfg, on_built):  # noqa: ANN001, ANN202 - the loop's signature
        seen.append(attempt_cfg.checkpoint.resume)
        assert (Path(cfg.run_dir) / OWNER_NAME).is_file()  # the run lock is held throughout
        if len(seen) == 1:
            raise rx.ActorDiedError()  # before any checkpoint: start fresh again
        if len(seen) == 2:
            _save(CheckpointManager(cfg.run_dir, keep_last=2), 1)
            raise rx.GetTimeoutError("Get timed out")
        return Path(attempt_cfg.run_dir)

    assert train_with_recovery(cfg, train_fn=flaky) == Path(cfg.run_dir)
    assert seen == ["none", "none", "auto"]
    events = list(iter_events(cfg.run_dir))
    assert [(e["kind"], e["action"], e["resume_from"]) for e in events] == [
        ("died", "restart", "none (a relaunch starts fresh)"), ("hang", "restart", "step_00000001")]
    assert not (Path(cfg.run_dir) / OWNER_NAME).exists()  # released

    def always_dies(attempt_cfg, on_built):  # noqa: ANN001, ANN202
        raise rx.ActorDiedError()

    with pytest.raises(RunStopped) as stopped:
        train_with_recovery(_cfg(tmp_path / "b", max_restarts=1), train_fn=always_dies)
    assert stopped.value.code == EXIT_WORKER_FAILURE
    assert [e["action"] for e in iter_events(tmp_path / "b" / "run")] == ["restart", "stop"]

    def bug(attempt_cfg, on_built):  # noqa: ANN001, ANN202
        raise ValueError("a bug is not retried")

    with pytest.raises(ValueError, match="not retried"):
        train_with_recovery(_cfg(tmp_path / "c"), train_fn=bug)
    assert list(iter_events(tmp_path / "c" / "run")) == []
