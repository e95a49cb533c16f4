"""What the loop changes as it runs, kept apart from the parts it drives (`Components`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cispo.driver.dynamic_sampling import KeepRateEstimate
from cispo.driver.pipeline import PolicyVersions


@dataclass
class LoopState:
    """The loop's mutable state: restored from a checkpoint, or fresh."""

    start_step: int
    """The last step the run had finished when it (re)started; the loop runs start_step + 1 .. total_steps."""
    elapsed: float
    """Wall seconds of every step so far (restored on resume; `time/total_elapsed`)."""
    keep_rate: KeepRateEstimate
    """Dynamic sampling sizes its rounds from this; checkpointed so that a resumed run draws the same."""
    versions: PolicyVersions
    """Policy versions queued to the engines (= updates so far); the asynchronous loop tags groups with them."""
    pending_weights: Any = None
    """The asynchronous loop's weight update still in flight (`WeightBroadcast.queue`), if any."""

    @classmethod
    def fresh(cls, keep_rate_memory: float) -> "LoopState":
        return cls(0, 0.0, KeepRateEstimate(keep_rate_memory), PolicyVersions(0))

    @classmethod
    def resumed(cls, saved: dict[str, Any], keep_rate_memory: float) -> "LoopState":
        """From a checkpoint's trainer_state.json (``step``, ``elapsed`` and, since keep-rate sizing,
        ``keep_rate``: older checkpoints start from no observation)."""
        keep_rate = KeepRateEstimate(keep_rate_memory)
        if "keep_rate" in saved:
            keep_rate.load_state_dict(saved["keep_rate"])
        step = int(saved["step"])
        return cls(step, float(saved["elapsed"]), keep_rate, PolicyVersions(step))
