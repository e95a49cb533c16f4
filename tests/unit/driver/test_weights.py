"""The weight broadcast: each channel class makes the calls its handshake needs, in order, and the
registry offers exactly the channels the config accepts."""

from __future__ import annotations

import pytest

from cispo.driver.weights import WEIGHT_BROADCASTS, CollectiveBroadcast, ObjectStoreBroadcast, make_broadcast
from rollout.config import WEIGHT_SYNC
from rollout.weight_channel import WeightStream
from rollout.weight_format import WeightSyncError


class Trainer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def export_weights_ref(self):
        self.calls.append("export")
        return ("ref", 7)

    def weight_channel_address(self):
        self.calls.append("address")
        return "127.0.0.1", 1234

    def open_weight_channel(self, spec):
        self.calls.append("open")
        return "sender-call"

    def send_weights(self):
        self.calls.append("send")
        return ("rank0-call", "rank1-call")


class Rollout:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.channel = None

    def update_weights(self, weights):
        self.calls.append(("update", weights))
        return {"ok": 1.0}

    def submit_weights(self, weights):
        self.calls.append(("submit", weights))
        return "pending"

    def finish_weights(self, pending):
        self.calls.append(("finish", pending))
        return {"ok": 1.0}

    def connect_weight_channel(self, host, port, open_sender, weights_source=None):
        self.calls.append(("connect", host, port, open_sender("spec"), weights_source()))
        self.channel = "spec"


def test_object_store_loads_and_queues_one_reference():
    trainer, rollout = Trainer(), Rollout()
    b = ObjectStoreBroadcast(trainer, rollout)
    b.connect()  # nothing to form
    assert b.load() == {"ok": 1.0}
    pending = b.queue(b.export())
    b.finish(pending)
    assert rollout.calls == [("update", ("ref", 7)), ("submit", ("ref", 7)), ("finish", "pending")]
    assert trainer.calls == ["export", "export"] and ObjectStoreBroadcast.can_queue


def test_collective_forms_the_channel_once_and_streams_every_rank():
    trainer, rollout = Trainer(), Rollout()
    b = CollectiveBroadcast(trainer, rollout)
    b.load()  # no channel yet: formed first, then streamed
    b.load()  # the same channel
    connect, update, update_again = rollout.calls
    # The rollout group got rank 0's address, its sender and the object-store export for replacements.
    assert connect == ("connect", "127.0.0.1", 1234, "sender-call", ("ref", 7))
    assert update[0] == "update" and isinstance(update[1], WeightStream)
    assert update[1].sender_refs == ("rank0-call", "rank1-call") and update_again[0] == "update"
    assert trainer.calls == ["address", "open", "export", "send", "send"]
    rollout.channel = None  # a failed sync closed it: the next load forms a new one
    b.load()
    assert rollout.calls[-2][0] == "connect"


def test_collective_cannot_queue_behind_generation():
    b = CollectiveBroadcast(Trainer(), Rollout())
    assert not b.can_queue
    with pytest.raises(WeightSyncError, match="collective cannot queue"):
        b.export()
    with pytest.raises(WeightSyncError, match="collective cannot queue"):
        b.queue(None)


def test_the_registry_offers_exactly_the_configured_channels():
    assert set(WEIGHT_BROADCASTS) == set(WEIGHT_SYNC)
    assert isinstance(make_broadcast("collective", Trainer(), Rollout()), CollectiveBroadcast)
    with pytest.raises(ValueError, match="rollout.group.weight_sync='ipc': expected one of"):
        make_broadcast("ipc", Trainer(), Rollout())
