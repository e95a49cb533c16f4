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
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import ray

from cispo.checkpoint import CHECKPOINTS_DIRNAME, LATEST_NAME
from cispo.checkpoint.lock import RunLock, RunLockedError, WorkerRecord, new_attempt_id, process_start_time
from cispo.config import TrainConfig
from cispo.driver.checkpoint_guard import CheckpointWriteError
from cispo.driver.components import Components
from cispo.driver.failures import EXIT_IO_ERROR, EXIT_RUN_LOCKED, EXIT_WORKER_FAILURE, RunStopped, classify
from cispo.driver.loop import train
from cispo.driver.resume_guard import plan_launch, record_launch
from cispo.tracking import MetricsWriteError

log = logging.getLogger(__name__)

EVENTS_FILENAME = "fault_events.jsonl"
RESTARTS_KEY = "fault/restarts"


def identify_process(_actor: object) -> tuple[str, int, int | None]:
    """Runs inside an actor (``__ray_call__``): its host, pid and process start time."""
    return socket.gethostname(), os.getpid(), process_start_time(os.getpid())


def worker_records(c: Components) -> list[WorkerRecord]:
    """Host, pid and start time of every trainer and rollout actor (for the run lock's owner record)."""

    actors = [("trainer", a) for a in c.trainer.actors] + [("rollout", a) for a in c.rollout.actors]
    found = ray.get([a.__ray_call__.remote(identify_process) for _, a in actors], timeout=c.cfg.fault_tolerance.call_timeout_s)
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
    pointer = run_dir / CHECKPOINTS_DIRNAME / LATEST_NAME
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else "none (a relaunch starts fresh)"


def train_with_recovery(cfg: TrainConfig, train_fn: Callable[..., Path] = train) -> Path:
    """Run `cispo.driver.loop.train` under the run lock, restarting it after worker failures.

    Raises `RunStopped` (a SystemExit with the exit code) with a one-paragraph message instead of a
    traceback when the run cannot go on: too many worker failures, a checkpoint or metrics line that
    cannot be written, or a run folder owned by another live process. Raises `ResumeRefused` before
    touching the run folder when a resume would change an identity key (`cispo.driver.resume_guard`).
    """
    ft = cfg.fault_tolerance
    run_dir = Path(cfg.run_dir).resolve()
    plan = plan_launch(cfg)  # read only: a refused resume leaves the folder as it was
    try:
        lock = RunLock(run_dir, wait_s=ft.lock_wait_s).acquire()
    except RunLockedError as exc:
        log.error("%s", exc)
        raise RunStopped(EXIT_RUN_LOCKED) from None
    ray_was_up = ray.is_initialized()  # a caller's cluster is left alone; one the loop started is not
    restarts = 0
    state: dict[str, float] = {RESTARTS_KEY: 0}
    attempt_cfg = cfg
    saved_at_start = _latest_checkpoint(run_dir)
    try:
        record_launch(plan)  # once per launch, not per in-run restart
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


def _on_built(c: Components, lock: RunLock, state: dict[str, float]) -> None:
    """Called by the loop once the components exist: count restarts in every metrics line and record
    the worker processes with the run lock."""
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
