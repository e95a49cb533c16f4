"""The schema of in-run recovery (`fault_tolerance.*`): restarts, call timeouts, checkpoint errors."""

from __future__ import annotations

from dataclasses import dataclass

from cispo.config.schema import Schema

ON_CHECKPOINT_ERROR = ("skip", "stop")


@dataclass
class FaultToleranceConfig(Schema):
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

    def validate(self) -> None:
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"fault_tolerance.max_restarts={self.max_restarts!r}: expected an int >= 0")
        for key in ("call_timeout_s", "lock_wait_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"fault_tolerance.{key}={value!r}: expected a number > 0")
        if self.on_checkpoint_error not in ON_CHECKPOINT_ERROR:
            raise ValueError(f"fault_tolerance.on_checkpoint_error={self.on_checkpoint_error!r}: expected one of "
                             f"{ON_CHECKPOINT_ERROR}")
