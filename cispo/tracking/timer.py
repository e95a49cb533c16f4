"""Seconds per phase of a training step (generate, score, update, sync, eval, checkpoint, ...)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cispo.tracking.console import TIME_PREFIX
from cispo.tracking.metrics_file import ELAPSED_KEY, STEP_TIME_KEY

OTHER_PHASE = "other"


@dataclass
class PhaseTimer:
    """Seconds per phase of a step, plus the step's wall time and the run's total.

    ``timer.start_step(); with timer.phase("generate"): ...; metrics |= timer.end_step()`` gives
    ``time/generate``, ``time/other`` (step time not inside any phase), ``time/step`` and
    ``time/total_elapsed`` (`elapsed` restored from the checkpoint + every step since). A phase
    entered twice in one step adds up. Phases do not nest (the per-phase times then sum to the step).
    """

    elapsed: float = 0.0
    clock: Callable[[], float] = time.perf_counter
    on_phase: Callable[[str], None] | None = None
    """Called with the phase's name as it starts (the live progress display shows it)."""
    seconds: dict[str, float] = field(default_factory=dict)
    _step_start: float | None = None
    _active: str | None = None

    def start_step(self) -> None:
        self.seconds = {}
        self._step_start = self.clock()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not name or "/" in name or name in (OTHER_PHASE, "step", "total_elapsed"):
            raise ValueError(
                f"phase name must be non-empty, without '/', and not one of "
                f"{OTHER_PHASE!r}, 'step', 'total_elapsed'; got {name!r}"
            )
        if self._active is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._active!r}: phases do not nest")
        if self._step_start is None:
            self.start_step()
        self._active = name
        if self.on_phase is not None:
            self.on_phase(name)
        start = self.clock()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + (self.clock() - start)
            self._active = None

    def end_step(self) -> dict[str, float]:
        if self._step_start is None:
            raise RuntimeError("end_step() called without start_step() (or any phase)")
        if self._active is not None:
            raise RuntimeError(f"end_step() called inside phase {self._active!r}")
        step_seconds = self.clock() - self._step_start
        self._step_start = None
        self.elapsed += step_seconds
        out = {f"{TIME_PREFIX}{name}": secs for name, secs in self.seconds.items()}
        out[f"{TIME_PREFIX}{OTHER_PHASE}"] = max(0.0, step_seconds - sum(self.seconds.values()))
        out[STEP_TIME_KEY] = step_seconds
        out[ELAPSED_KEY] = self.elapsed
        return out
