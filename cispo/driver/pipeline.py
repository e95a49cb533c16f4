"""Asynchronous rollout (``rollout.mode=async``): a producer thread collects the next steps' batches
with whatever weights the engines have, while the trainer updates.

Policy versions. Version v is the policy after v updates (the weights of step v). The driver counts
the updates it has queued to the engines; each actor runs its calls in the order they were sent, so
a generation sent while the newest queued version is v runs entirely with v's weights (a request is
never split across two versions: an update queued during a generation waits for it, as an update
between two vLLM ``generate`` calls must). That number is recorded with each group and is exact.

Bounded staleness. Step s trains at trainer version t = s - 1. The producer starts step s's batch
only once version s - 1 - k has been queued (k = ``algorithm.max_staleness``), so every group in it
is at most k versions old when trained; the loop still checks t - v <= k per group and drops and
counts any older one (possible only when an actor died and its share was resubmitted). k = 0 makes
the producer wait for the newest weights: the synchronous loop, call for call.

Resume. The producer snapshots the data state (sampler position, keep-rate estimate, retired
prompts) right after drawing each batch; the checkpoint of step s saves the snapshot of batch s, so
a resumed run draws batch s + 1's prompts again (batches generated ahead and not trained are
re-generated with the resumed weights: same prompts and seeds, fresher policy). No prompt is skipped
or repeated.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
import logging

G = TypeVar("G")
log = logging.getLogger(__name__)


class PolicyVersions:
    """The newest policy version queued to the engines, and the lock that ties a generation to it."""

    def __init__(self, start: int) -> None:
        self.queued = start
        self._cond = threading.Condition()

    def generate(self, rollout: Any, prompts: Sequence[Any], sampling: Any) -> tuple[list[Any], int]:
        """Results and the version that produced them (submitted under the lock, collected outside it)."""
        with self._cond:
            pending = rollout.submit(prompts, sampling)
            version = self.queued
        return rollout.collect(pending), version

    def push(self, queue_weights: Callable[[], Any]) -> Any:
        """Queue the next version's weights (``queue_weights()``, e.g. `WeightBroadcast.queue`, called
        under the lock so no generation is sent between it and the version count); returns what it
        returned (the pending update)."""
        with self._cond:
            pending = queue_weights()
            self.queued += 1
            self._cond.notify_all()
        return pending

    def advance(self) -> None:
        """The next version without new weights (a synchronous update, or a step that skipped its update)."""
        with self._cond:
            self.queued += 1
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake a waiting producer (to see that it was stopped)."""
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, version: int, stopped: threading.Event, poll_s: float = 0.5) -> float:
        """Blocks until ``version`` is queued (or ``stopped``); the seconds it waited."""
        start = time.perf_counter()
        with self._cond:
            while self.queued < version and not stopped.is_set():
                self._cond.wait(poll_s)
        return time.perf_counter() - start


@dataclass
class ProducedBatch(Generic[G]):
    """One step's groups as the producer made them."""

    step: int
    groups: list[G]
    metrics: dict[str, float]
    data_state: dict[str, Any]
    """Sampler / keep-rate / retired-prompt state right after this batch was drawn (its checkpoint's)."""
    rollout_idle_s: float = 0.0
    """Seconds the producer waited for weights (the staleness bound) before starting this batch."""
    produced_at: float = field(default_factory=time.perf_counter)


class RolloutProducer(Generic[G]):
    """Runs ``collect(step)`` for steps ``first..last`` in a background thread, each once version
    ``step - 1 - max_staleness`` is queued; :meth:`next_batch` hands them over in order."""

    def __init__(self, collect: Callable[[int], tuple[list[G], dict[str, float]]],
                 data_state: Callable[[], dict[str, Any]], versions: PolicyVersions, *, first: int, last: int,
                 max_staleness: int) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness={max_staleness}: expected >= 0")
        self.collect, self.data_state, self.versions = collect, data_state, versions
        self.first, self.last, self.max_staleness = first, last, max_staleness
        self.stopped = threading.Event()
        self._ready: queue.Queue[ProducedBatch[G] | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="cispo-rollout-producer", daemon=True)

    def start(self) -> "RolloutProducer[G]":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for step in range(self.first, self.last + 1):
                idle = self.versions.wait_for(step - 1 - self.max_staleness, self.stopped)
                if self.stopped.is_set():
                    return
                groups, metrics = self.collect(step)
                self._ready.put(ProducedBatch(step, groups, metrics, self.data_state(), idle))
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            if not self.stopped.is_set():
                self._ready.put(e)

    @property
    def queued_batches(self) -> int:
        """Batches generated and not yet taken (the buffer's occupancy)."""
        return self._ready.qsize()

    def next_batch(self, step: int, timeout_s: float | None = None) -> ProducedBatch[G]:
        """Step ``step``'s batch (blocks until it is ready); re-raises the producer's error."""
        try:
            item = self._ready.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"the rollout producer made no batch for step {step} within {timeout_s} s") from None
        if isinstance(item, BaseException):
            # The original exception (its traceback runs through the producer's frames): fault
            # tolerance classifies a dead or hung engine by its type, wherever it surfaced.
            log.error("the rollout producer failed while making step %d's batch", step)
            raise item
        if item.step != step:
            raise RuntimeError(f"the rollout producer handed step {item.step}'s batch for step {step}")
        return item

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop after the current collection (its results are discarded); waits up to ``timeout_s``."""
        self.stopped.set()
        self.versions.wake()
        if timeout_s > 0:
            self._thread.join(timeout_s)


def split_by_staleness(versions: Sequence[int], trainer_version: int, max_staleness: int) -> tuple[list[int], list[int]]:
    """Indices of the groups young enough to train on (t - v <= k) and of those to drop."""
    keep, drop = [], []
    for i, v in enumerate(versions):
        if v > trainer_version:
            raise ValueError(f"group {i} has policy version {v} > trainer version {trainer_version}")
        (keep if trainer_version - v <= max_staleness else drop).append(i)
    return keep, drop


def staleness_metrics(staleness: Sequence[int], dropped: int, queued_batches: int, max_staleness: int
                      ) -> dict[str, float]:
    """Per step: mean / max staleness of the trained groups, their histogram (share per value
    0..k), groups dropped as too old, and the buffer's occupancy when the batch was taken."""
    n = len(staleness)
    out = {
        "async/staleness_mean": sum(staleness) / n if n else 0.0,
        "async/staleness_max": float(max(staleness)) if n else 0.0,
        "async/dropped_stale": float(dropped),
        "async/queued_batches": float(queued_batches),
    }
    for value in range(max_staleness + 1):
        out[f"async/staleness_frac/{value}"] = sum(1 for s in staleness if s == value) / n if n else 0.0
    return out
