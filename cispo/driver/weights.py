"""How a new policy reaches the engines: one small interface, one class per channel.

The trainer exports, the rollout group loads; the driver owns the handshake between them. A
`WeightBroadcast` is chosen once by ``rollout.group.weight_sync`` (`WEIGHT_BROADCASTS`), so a new
channel (CUDA IPC for colocated engines, LoRA adapters) is one new subclass registered there, not
edits in the trainer, the rollout group and the loop. (prime-rl's ``WeightBroadcast`` with its
filesystem and NCCL subclasses is the same idea.)

- `ObjectStoreBroadcast`: rank 0's weights go into Ray's object store once; every engine reads the
  same object (zero-copy on one node). An update can be queued behind generations already sent,
  which the asynchronous loop needs.
- `CollectiveBroadcast`: rank 0 streams parameter buckets over a process group that every engine
  worker joins (gloo on CPU, NCCL on GPU); no full copy is ever materialised. Waits for the engines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from cispo.driver.handles import ChannelRollout, ChannelTrainer, RolloutHandle, TrainerHandle
from rollout.weight_channel import WeightStream
from rollout.weight_format import WeightSyncError


class WeightBroadcast(ABC):
    """Moves the trainer's current weights into every engine of the rollout group."""

    name: ClassVar[str]
    can_queue: ClassVar[bool] = False
    """Whether `queue` works: an update that waits behind the generations already sent to the engines
    (the asynchronous loop's requirement)."""

    def __init__(self, trainer: TrainerHandle, rollout: RolloutHandle) -> None:
        self.trainer, self.rollout = trainer, rollout

    def connect(self) -> None:
        """Form what the channel needs at start-up, so that a wiring problem fails before step 1."""

    @abstractmethod
    def load(self) -> dict[str, float]:
        """Send the trainer's weights and return once every engine runs them."""

    def export(self) -> Any:
        """The trainer's current weights in the form `queue` sends (the slow part: done before `queue`, so
        that the asynchronous loop holds its policy-version lock only while the update is queued)."""
        raise WeightSyncError(f"rollout.group.weight_sync={self.name} cannot queue an update behind generation")

    def queue(self, exported: Any) -> Any:
        """Queue `export()`'s weights behind the work already sent; `finish(pending)` waits for them."""
        raise WeightSyncError(f"rollout.group.weight_sync={self.name} cannot queue an update behind generation")

    def finish(self, pending: Any) -> dict[str, float]:
        """Wait for an update returned by `queue`."""
        raise WeightSyncError(f"rollout.group.weight_sync={self.name} cannot queue an update behind generation")


class ObjectStoreBroadcast(WeightBroadcast):
    """Rank 0's packed weights as one object-store reference that every engine loads."""

    name = "object_store"
    can_queue = True

    def load(self) -> dict[str, float]:
        return self.rollout.update_weights(self.trainer.export_weights_ref())

    def export(self) -> Any:
        return self.trainer.export_weights_ref()

    def queue(self, exported: Any) -> Any:
        return self.rollout.submit_weights(exported)

    def finish(self, pending: Any) -> dict[str, float]:
        return self.rollout.finish_weights(pending)


class CollectiveBroadcast(WeightBroadcast):
    """Rank 0 streams buckets to every engine worker over a process group formed at start-up (and
    formed again after a failed sync or a replaced actor)."""

    name = "collective"
    trainer: ChannelTrainer
    rollout: ChannelRollout

    def connect(self) -> None:
        host, port = self.trainer.weight_channel_address()
        self.rollout.connect_weight_channel(host, port, self.trainer.open_weight_channel,
                                            weights_source=self.trainer.export_weights_ref)

    def load(self) -> dict[str, float]:
        if self.rollout.channel is None:  # never formed, or closed by a failed sync
            self.connect()
        return self.rollout.update_weights(WeightStream(self.trainer.send_weights()))


WEIGHT_BROADCASTS: dict[str, type[WeightBroadcast]] = {
    cls.name: cls for cls in (ObjectStoreBroadcast, CollectiveBroadcast)
}
"""``rollout.group.weight_sync`` -> the class that implements it."""


def make_broadcast(name: str, trainer: TrainerHandle, rollout: RolloutHandle) -> WeightBroadcast:
    if name not in WEIGHT_BROADCASTS:
        raise ValueError(f"rollout.group.weight_sync={name!r}: expected one of {sorted(WEIGHT_BROADCASTS)}")
    return WEIGHT_BROADCASTS[name](trainer, rollout)
