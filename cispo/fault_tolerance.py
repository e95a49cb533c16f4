"""In-run recovery: a run that survives its workers dying or hanging, and stops cleanly otherwise.

`train_with_recovery(cfg)` wraps the training loop the way Ray Train's ``FailureConfig(max_failures)``
and torchelastic's ``--max-restarts`` wrap a job: when a trainer or rollout worker dies (killed, OOM,
node lost) or a call into one outlives ``fault_tolerance.call_timeout_s`` (a hang), the loop's
components are torn down (every actor killed, placement groups released), rebuilt, the latest
checkpoint is restored and the loop continues. That is exactly what a kill and relaunch does, in the
same process, so the continuation is the same as a run that never failed (same weights, same metrics
lines apart from timings and the ``fault/`` counters).

The whole run holds the run folder's `RunLock`, so no second driver (and no worker of a dead one)
writes into it. A failure that is not a worker failure (a bug, a bad config) is not retried.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:
    from cispo.components import Components
    from cispo.config import TrainConfig

log = logging.getLogger(__name__)

ON_CHECKPOINT_ERROR = ("skip", "stop")
EVENTS_FILENAME = "fault_events.jsonl"
RESTARTS_KEY = "fault/restarts"
CHECKPOINTS_SKIPPED_KEY = "fault/checkpoints_skipped"
EXIT_WORKER_FAILURE = 3
"""Exit code: a worker failed more than ``fault_tolerance.max_restarts`` times."""
EXIT_IO_ERROR = 4
"""Exit code: a checkpoint (with ``on_checkpoint_error=stop``) or a metrics line could not be written."""
EXIT_RUN_LOCKED = 5
"""Exit code: another live process owns the run folder."""
WORKER_CLASSES = re.compile(r"\b(PolicyActor|RolloutActor)\b")
# A rank whose peer died fails its collective with one of these (gloo / NCCL / torch.distributed).
PEER_FAILURE_RE = re.compile(r"Connection closed by peer|Connection reset by peer|gloo|NCCL|Broken pipe", re.I)


@dataclass
class FaultToleranceConfig:
    max_restarts: int = 3
    """In-run restarts after a worker dies or hangs (tear down, rebuild, restore the latest checkpoint,
    continue); 0 stops at the first failure. As Ray Train's ``FailureConfig.max_failures`` and
    torchelastic's ``--max-restarts``."""
    call_timeout_s: float = 1800.0
    """Seconds one call into a worker may take before it counts as a hang (a worker failure): trainer
    log-probs, update, weight export, save and load; rollout generation when
    ``rollout.group.generate_timeout_s`` is null (the weight sync has
    ``rollout.engine.weight_update_timeout_s``)."""
    on_checkpoint_error: str = "skip"
    """A checkpoint that cannot be written (disk full, I/O error): ``skip`` removes the partial one,
    logs a loud error and trains on (``latest`` still names the previous one); ``stop`` stops the run
    cleanly (exit code 4)."""
    lock_wait_s: float = 60.0
    """Seconds a launch waits for the run folder's live owner (and then for the workers a killed
    owner left) before refusing (exit code 5)."""

    def validate(self) -> "FaultToleranceConfig":
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"fault_tolerance.max_restarts={self.max_restarts!r}: expected an int >= 0")
        for key in ("call_timeout_s", "lock_wait_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"fault_tolerance.{key}={value!r}: expected a number > 0")
        if self.on_checkpoint_error not in ON_CHECKPOINT_ERROR:
            raise ValueError(f"fault_tolerance.on_checkpoint_error={self.on_checkpoint_error!r}: expected one of "
                             f"{ON_CHECKPOINT_ERROR}")
        return self

    def __post_init__(self) -> None:
        self.validate()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written and ``on_checkpoint_error=stop``."""


class RunStopped(SystemExit):
    """The run stopped on purpose with a clear message (already logged) and an exit code."""


# ---------------------------------------------------------------------------------------------------
# What failed
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerFailure:
    """A failure the driver can recover from by rebuilding the workers."""

    worker: str  # "PolicyActor", "RolloutActor" or "a worker"
    kind: str  # "died", "hang", "peer"
    where: str  # the driver-side call it surfaced in, e.g. "RolloutGroup.update_weights"
    message: str

    def describe(self) -> str:
        verb = {"died": "died", "hang": "did not answer in time", "peer": "failed (a peer rank died)"}[self.kind]
        return f"{self.worker} {verb} during {self.where}: {self.message.rstrip('.')}"


def _where(exc: BaseException) -> str:
    """The innermost driver-side frame of ours (cispo/ or rollout/) the exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/cispo/" in f.filename or "/rollout/" in f.filename]
    ours = [f for f in ours if not f.filename.endswith("fault_tolerance.py")]
    if not ours:
        return "an unknown call"
    frame = ours[-1]
    owner = {"group.py": "Group", "loop.py": "loop", "components.py": "Components"}.get(Path(frame.filename).name)
    if Path(frame.filename).name == "group.py":
        owner = "RolloutGroup" if "/rollout/" in frame.filename else "TrainerGroup"
    return f"{owner}.{frame.name}" if owner else frame.name


def classify(exc: BaseException) -> WorkerFailure | None:
    """A `WorkerFailure` if `exc` means a worker died, hung, or failed because a peer died; else None
    (a bug or a bad input: restarting would fail the same way)."""
    import ray.exceptions as rx

    from rollout.group import RolloutGroupError
    from rollout.weight_sync import WeightSyncTimeoutError

    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    match = WORKER_CLASSES.search(str(exc))
    where = _where(exc)
    # A timeout names no actor: the group whose call it was does.
    worker = match.group(1) if match else {"TrainerGroup": "PolicyActor", "RolloutGroup": "RolloutActor"}.get(
        where.split(".")[0], "a worker")
    died = (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError, rx.OutOfMemoryError,
            RolloutGroupError)
    if isinstance(exc, rx.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        if cause is not None and not isinstance(cause, rx.RayTaskError):
            inner = classify(cause)
            if inner is not None:
                return dataclasses.replace(inner, where=where)
        if PEER_FAILURE_RE.search(str(exc)) or (cause is not None and PEER_FAILURE_RE.search(str(cause))):
            return WorkerFailure(worker, "peer", where, text)
        return None
    if isinstance(exc, died):
        return WorkerFailure(worker, "died", where, text)
    if isinstance(exc, (rx.GetTimeoutError, WeightSyncTimeoutError, TimeoutError)):
        return WorkerFailure(worker, "hang", where, text)
    return None


# ---------------------------------------------------------------------------------------------------
# Hooks the components call
# ---------------------------------------------------------------------------------------------------


class checkpoint_write_guard:  # noqa: N801 - used like a function: `with checkpoint_write_guard(...)`
    """Around one checkpoint write: an OSError (ENOSPC, EIO, EFBIG; also raised inside a trainer
    rank) is logged loudly and swallowed (``skip``) or turned into `CheckpointWriteError` (``stop``).
    The manager has already removed the partial folder and left `latest` alone by then."""

    def __init__(self, cfg: FaultToleranceConfig, step: int, counter: dict[str, float] | None = None):
        self.cfg, self.step, self.counter = cfg, step, counter
        self.skipped = False

    def __enter__(self) -> "checkpoint_write_guard":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or not isinstance(exc, OSError) or classify(exc) is not None:
            return False  # a hang (TimeoutError is an OSError) or a dead rank is a worker failure
        if self.cfg.on_checkpoint_error == "stop":
            raise CheckpointWriteError(exc.errno, f"checkpoint of step {self.step} could not be written "
                                       f"({exc}); fault_tolerance.on_checkpoint_error=stop") from exc
        log.error("!!! CHECKPOINT OF STEP %d SKIPPED: %s. The partial checkpoint was removed and the previous one "
                  "stays `latest`; training continues (fault_tolerance.on_checkpoint_error=skip). Free disk "
                  "space or the next checkpoint fails too.", self.step, exc)
        self.skipped = True
        if self.counter is not None:
            self.counter[CHECKPOINTS_SKIPPED_KEY] = self.counter.get(CHECKPOINTS_SKIPPED_KEY, 0) + 1
        return True


def worker_records(c: "Components") -> list[Any]:
    """Host, pid and start time of every trainer and rollout actor (for the run lock's owner record)."""
    import ray

    from cispo.checkpoint.lock import WorkerRecord

    def identify(_self: object) -> tuple[str, int, int | None]:
        import os as _os
        import socket as _socket

        from cispo.checkpoint.lock import process_start_time as _start

        return _socket.gethostname(), _os.getpid(), _start(_os.getpid())

    actors = [("trainer", a) for a in c.trainer.actors] + [("rollout", a) for a in c.rollout.actors]
    found = ray.get([a.__ray_call__.remote(identify) for _, a in actors], timeout=c.cfg.fault_tolerance.call_timeout_s)
    return [WorkerRecord(role, host, pid, start) for (role, _), (host, pid, start) in zip(actors, found)]


# ---------------------------------------------------------------------------------------------------
# The recovery loop
# ---------------------------------------------------------------------------------------------------


def _append_event(run_dir: Path, event: dict[str, Any]) -> None:
    """One JSON line per restart / give-up in `run_dir/fault_events.jsonl` (best effort: the disk may
    be the thing that failed)."""
    try:
        with open(run_dir / EVENTS_FILENAME, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
    except OSError as exc:
        log.warning("could not record the fault event in %s: %s", run_dir / EVENTS_FILENAME, exc)


def _latest_checkpoint(run_dir: Path) -> str:
    from cispo.checkpoint import CHECKPOINTS_DIRNAME, LATEST_NAME

    pointer = run_dir / CHECKPOINTS_DIRNAME / LATEST_NAME
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else "none (a relaunch starts fresh)"


def train_with_recovery(cfg: "TrainConfig", train_fn: Callable[..., Path] | None = None) -> Path:
    """Run `cispo.loop.train` under the run lock, restarting it after worker failures.

    Raises `RunStopped` (a SystemExit with the exit code) with a one-paragraph message instead of a
    traceback when the run cannot go on: too many worker failures, a checkpoint or metrics line that
    cannot be written, or a run folder owned by another live process.
    """
    from cispo.checkpoint.lock import RunLock, RunLockedError
    from cispo.tracking import MetricsWriteError

    if train_fn is None:
        from cispo.loop import train as train_fn
    ft = cfg.fault_tolerance
    run_dir = Path(cfg.run_dir).resolve()
    try:
        lock = RunLock(run_dir, wait_s=ft.lock_wait_s).acquire()
    except RunLockedError as exc:
        log.error("%s", exc)
        raise RunStopped(EXIT_RUN_LOCKED) from None
    import ray

    ray_was_up = ray.is_initialized()  # a caller's cluster is left alone; one the loop started is not
    restarts = 0
    state: dict[str, float] = {RESTARTS_KEY: 0}
    attempt_cfg = cfg
    saved_at_start = _latest_checkpoint(run_dir)
    try:
        while True:
            started = time.time()
            try:
                return train_fn(attempt_cfg, on_built=lambda c: _on_built(c, lock, state))
            except (MetricsWriteError, CheckpointWriteError) as exc:
                log.error("stopping: %s. A relaunch on %s resumes from checkpoint %s.", exc, run_dir,
                          _latest_checkpoint(run_dir))
                raise RunStopped(EXIT_IO_ERROR) from None
            except Exception as exc:  # noqa: BLE001 - classified below; anything else is re-raised
                failure = classify(exc)
                if failure is None:
                    raise
                latest = _latest_checkpoint(run_dir)
                event = {"time_unix": time.time(), "attempt_seconds": time.time() - started, "worker": failure.worker,
                         "kind": failure.kind, "where": failure.where, "message": failure.message,
                         "restarts_before": restarts, "max_restarts": ft.max_restarts, "resume_from": latest,
                         "host": socket.gethostname()}
                if restarts >= ft.max_restarts:
                    _append_event(run_dir, event | {"action": "stop"})
                    log.error("stopping: %s. That is failure %d, and fault_tolerance.max_restarts=%d. A relaunch on "
                              "%s resumes from checkpoint %s.", failure.describe(), restarts + 1, ft.max_restarts,
                              run_dir, latest)
                    raise RunStopped(EXIT_WORKER_FAILURE) from None
                if not ray_was_up and ray.is_initialized():
                    # A failure while the components were still being built skips their clean-up:
                    # shutting the run's own cluster down kills every worker it still has.
                    ray.shutdown()
                restarts += 1
                state[RESTARTS_KEY] = restarts
                _append_event(run_dir, event | {"action": "restart"})
                log.warning("restart %d/%d: %s; rebuilding the workers and resuming from checkpoint %s",
                            restarts, ft.max_restarts, failure.describe(), latest)
                # Once this run has saved a checkpoint, resume from its newest; before that, start
                # the way the first attempt did (fresh for resume=none, the same given checkpoint).
                if latest != saved_at_start:
                    attempt_cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint,
                                                                                          resume="auto"))
    finally:
        lock.release()


def _on_built(c: "Components", lock: Any, state: dict[str, float]) -> None:
    """Called by the loop once the components exist: count restarts in every metrics line and record
    the worker processes with the run lock."""
    from cispo.checkpoint.lock import new_attempt_id

    c.logger.constant_metrics.update(state)
    # A fresh attempt id per (re)build: a worker of the torn-down attempt that is still alive for a
    # moment cannot write into this attempt's temp checkpoint folders.
    c.checkpoints.attempt = new_attempt_id()
    try:
        lock.set_workers(worker_records(c))
    except Exception as exc:  # noqa: BLE001 - the record is a safeguard, not worth failing the run
        log.warning("could not record the worker processes in the run lock: %s", exc)


def iter_events(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The restart / stop events of a run folder (for tests and the chaos benchmark)."""
    path = Path(run_dir) / EVENTS_FILENAME
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)
