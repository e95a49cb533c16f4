"""What the loop needs from the rollout and trainer worker groups, as typed Protocols.

``rollout.group.RolloutGroup`` and ``cispo.trainer.group.TrainerGroup`` are the real implementations;
unit tests of the loop's glue pass stand-ins, and ``tests/unit/driver/test_handles.py`` checks that both the real
groups and the stand-ins have these methods with compatible signatures, so a fake cannot drift from
what it stands for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor

from cispo.trainer.batch import TrainBatch
from rollout.config import SamplingConfig
from rollout.types import RolloutResult


class RolloutHandle(Protocol):
    def generate(self, prompts: Sequence[Any], sampling: SamplingConfig) -> list[RolloutResult]:
        """G samples per prompt with their token ids, log-probs and finish reasons."""

    def submit(self, prompts: Sequence[Any], sampling: SamplingConfig) -> Any:
        """Send a generation and return at once (the asynchronous loop tags it with the policy version)."""

    def collect(self, pending: Any) -> list[RolloutResult]:
        """Wait for a submitted generation."""

    def update_weights(self, weights: Any) -> Any:
        """Load new policy weights into every engine and wait (what a `WeightBroadcast` hands over)."""

    def submit_weights(self, weights: Any) -> Any:
        """Queue an update behind the generations already sent and return at once (object store only)."""

    def finish_weights(self, pending: Any) -> Any:
        """Wait until a queued update is loaded everywhere."""

    def shutdown(self) -> None: ...


class TrainerHandle(Protocol):
    def compute_log_probs(self, batch: TrainBatch) -> Tensor:
        """log pi of the batch's response tokens under the current policy (pi_old before an update)."""

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """The optimizer steps of one rollout batch; metric names are final (``actor/...``)."""

    def export_weights_ref(self) -> tuple[Any, int]:
        """Rank 0's weights in the object store (a reference and its size in bytes)."""

    def save(self, directory: str | os.PathLike) -> None: ...

    def load(self, directory: str | os.PathLike) -> None: ...

    def shutdown(self) -> None: ...


class ChannelTrainer(TrainerHandle, Protocol):
    """The trainer's side of the collective weight channel (`cispo.driver.weights.CollectiveBroadcast`)."""

    def weight_channel_address(self) -> tuple[str, int]:
        """Host and free port where rank 0 will host the channel."""

    def open_weight_channel(self, spec: Any) -> Any:
        """Rank 0 joins the channel as its sender; the pending call."""

    def send_weights(self) -> tuple[Any, ...]:
        """Start one streamed sync on every rank; the pending calls."""


class ChannelRollout(RolloutHandle, Protocol):
    """The engines' side of the collective weight channel."""

    channel: Any
    """The open channel's spec, or None (never formed, or closed by a failed sync)."""

    def connect_weight_channel(self, host: str, port: int, open_sender: Any, weights_source: Any = None) -> Any:
        """Form the channel with the trainer's sender and every engine worker."""

