"""What failed: a worker that died, hung, or lost a peer (recoverable by rebuilding the workers), told
apart from a bug or a bad input (not retried), and the exit codes of a run that stops on purpose."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import ray.exceptions as rx

import rollout
from rollout.group import RolloutGroupError
from rollout.weight_format import WeightSyncTimeoutError

EXIT_WORKER_FAILURE = 3
"""Exit code: a worker failed more than ``fault_tolerance.max_restarts`` times."""
EXIT_IO_ERROR = 4
"""Exit code: a checkpoint (with ``on_checkpoint_error=stop``) or a metrics line could not be written."""
EXIT_RUN_LOCKED = 5
"""Exit code: another live process owns the run folder."""
WORKER_CLASSES = re.compile(r"\b(PolicyActor|RolloutActor)\b")
# A rank whose peer died fails its collective with one of these (gloo / NCCL / torch.distributed).
PEER_FAILURE_RE = re.compile(r"Connection closed by peer|Connection reset by peer|gloo|NCCL|Broken pipe", re.I)
_PACKAGE_ROOTS = (str(Path(__file__).resolve().parents[1]), str(Path(rollout.__file__).resolve().parent))


class RunStopped(SystemExit):
    """The run stopped on purpose with a clear message (already logged) and an exit code."""


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


WORKER_GROUPS = {"TrainerGroup": "PolicyActor", "RolloutGroup": "RolloutActor"}
"""The driver-side handles of the workers, and the actor class each one drives."""


def _where(exc: BaseException) -> str:
    """The innermost method of a worker group (`TrainerGroup.update`, `RolloutGroup.generate`) the
    exception passed through, found from the frames' ``self``; else the innermost function."""
    tb, found, innermost = exc.__traceback__, None, "an unknown call"
    while tb is not None:
        frame = tb.tb_frame
        owner = type(frame.f_locals.get("self")).__name__
        if owner in WORKER_GROUPS:
            found = f"{owner}.{frame.f_code.co_name}"
        elif frame.f_code.co_filename.startswith(_PACKAGE_ROOTS):
            innermost = f"{owner}.{frame.f_code.co_name}" if "self" in frame.f_locals else frame.f_code.co_name
        tb = tb.tb_next
    return found or innermost


def classify(exc: BaseException) -> WorkerFailure | None:
    """A `WorkerFailure` if `exc` means a worker died, hung, or failed because a peer died; else None
    (a bug or a bad input: restarting would fail the same way)."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    match = WORKER_CLASSES.search(str(exc))
    where = _where(exc)
    # A timeout names no actor: the group whose call it was does.
    worker = match.group(1) if match else WORKER_GROUPS.get(where.split(".")[0], "a worker")
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


