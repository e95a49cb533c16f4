"""Around one checkpoint write: a full disk or an I/O error skips the checkpoint or stops the run
(``fault_tolerance.on_checkpoint_error``); a worker failure passes through to the supervisor."""

from __future__ import annotations

import logging
from typing import Any

from cispo.config.fault_tolerance import FaultToleranceConfig
from cispo.driver.failures import classify

log = logging.getLogger(__name__)

CHECKPOINTS_SKIPPED_KEY = "fault/checkpoints_skipped"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written and ``on_checkpoint_error=stop``."""


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


