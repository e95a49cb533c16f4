"""The collective weight channel without vLLM: bucket planning (pure), and a real gloo group of two
processes (a sender and a receiver) for transfer, refusal and a receiver that is gone."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time

import pytest
import torch

from rollout.config import GroupConfig
from rollout.weight_channel import (
    ChannelSpec,
    TensorSpec,
    WeightChannel,
    pack_into,
    plan_buckets,
    unpack_bucket,
)
from rollout.weight_format import ExpectedWeights, WeightSyncError


def spec_of(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))


def test_plan_buckets_cuts_in_order_aligns_and_sends_big_tensors_alone():
    specs = [TensorSpec("a", (10,), "float32"),     # 40 B at 0
             TensorSpec("b", (3,), "bfloat16"),     # 6 B at 64 (aligned)
             TensorSpec("c", (100,), "float32"),    # 400 B: does not fit 128 -> own bucket (too big)
             TensorSpec("d", (4,), "float64")]      # 32 B: new bucket after the big one
    buckets = plan_buckets(specs, 128)
    assert [[s.name for s in b.specs] for b in buckets] == [["a", "b"], ["c"], ["d"]]
    assert buckets[0].offsets == (0, 64) and buckets[0].nbytes == 70
    assert buckets[1].nbytes == 400 and buckets[2].nbytes == 32
    assert [s.name for b in buckets for s in b.specs] == ["a", "b", "c", "d"]
    assert len(plan_buckets(specs, 10**6)) == 1
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(specs, 0)


def test_pack_and_unpack_round_trip_every_dtype():
    tensors = {"w": torch.randn(3, 5), "h": torch.randn(7).to(torch.bfloat16), "d": torch.randn(2, 2).double()}
    (bucket,) = plan_buckets([spec_of(n, t) for n, t in tensors.items()], 10**6)
    buf = torch.zeros(bucket.nbytes, dtype=torch.uint8)
    for spec, off, t in zip(bucket.specs, bucket.offsets, tensors.values()):
        pack_into(spec, off, t, buf)
    out = dict(unpack_bucket(bucket, buf))
    assert all(torch.equal(out[n], t) and out[n].dtype == t.dtype for n, t in tensors.items())
    with pytest.raises(ValueError, match="'w' is \\(5, 3\\)"):
        pack_into(bucket.specs[0], 0, torch.zeros(5, 3), buf)


def test_channel_spec_and_group_config_reject_bad_values():
    with pytest.raises(ValueError, match="backend"):
        ChannelSpec("127.0.0.1", 1, 2, backend="mpi").validate()
    with pytest.raises(ValueError, match="world_size"):
        ChannelSpec("127.0.0.1", 1, 1).validate()
    with pytest.raises(ValueError, match="GroupConfig.weight_sync"):
        GroupConfig(weight_sync="nccl").validate()
    with pytest.raises(ValueError, match="GroupConfig.weight_bucket_mb"):
        GroupConfig(weight_bucket_mb=0).validate()
    with pytest.raises(ValueError, match="GroupConfig.weight_channel_backend"):
        GroupConfig(weight_channel_backend="mpi").validate()


def test_manifest_check_names_the_bad_tensor_and_fills_the_tied_head():
    expected = ExpectedWeights(shapes={"model.embed_tokens.weight": (8, 4), "model.norm.weight": (4,),
                                       "lm_head.weight": (8, 4)},
                               tied_pairs=(("lm_head.weight", "model.embed_tokens.weight"),))
    good = [("model.embed_tokens.weight", (8, 4), "float32"), ("model.norm.weight", (4,), "float32")]
    assert expected.check_manifest(good) == {"model.embed_tokens.weight": ["lm_head.weight"]}
    with pytest.raises(ValueError, match="unknown weight name.*model.nrom.weight"):
        expected.check_manifest([good[0], ("model.nrom.weight", (4,), "float32")])
    with pytest.raises(ValueError, match="missing 1 of 3.*model.norm.weight"):
        expected.check_manifest(good[:1])
    with pytest.raises(ValueError, match="'model.norm.weight' has shape \\(5,\\)"):
        expected.check_manifest([good[0], ("model.norm.weight", (5,), "float32")])
    with pytest.raises(ValueError, match="floating dtype"):
        expected.check_manifest([good[0], ("model.norm.weight", (4,), "int64")])


# ------------------------------------------------------------------ two processes, real gloo
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _receiver(spec: ChannelSpec, mode: str, queue) -> None:  # noqa: ANN001 - a multiprocessing queue
    channel = WeightChannel(spec, 1)
    if mode == "leave":
        queue.put("joined")
        return  # the process exits: its sockets close
    got: dict[str, torch.Tensor] = {}
    buckets_seen = []

    def check(manifest) -> None:  # noqa: ANN001
        if mode == "refuse":
            raise ValueError(f"refused {manifest[0].name}")

    def load(stream) -> None:  # noqa: ANN001
        for name, t in stream:
            got[name] = t.clone()
            buckets_seen.append(t.untyped_storage().data_ptr())

    try:
        stats = channel.receive(check, load)
        queue.put(("ok", got, stats))
    except Exception as e:  # noqa: BLE001 - the test reads it
        queue.put(("error", type(e).__name__, str(e), bool(got)))


def _start(mode: str, **spec_kw):  # noqa: ANN202
    ctx = mp.get_context("spawn")
    spec = ChannelSpec("127.0.0.1", _free_port(), 2, **spec_kw)
    queue = ctx.Queue()
    proc = ctx.Process(target=_receiver, args=(spec, mode, queue), daemon=True)
    proc.start()
    return spec, queue, proc, WeightChannel(spec, 0)


TENSORS = {"a": torch.randn(40, 30), "b": torch.randn(17).to(torch.bfloat16), "c": torch.randn(700)}


def test_stream_arrives_bit_exact_in_several_buckets():
    spec, queue, proc, sender = _start("ok", timeout_s=60, bucket_bytes=4096)
    try:
        stats = sender.send([spec_of(n, t) for n, t in TENSORS.items()], iter(TENSORS.values()))
        status, got, rstats = queue.get(timeout=60)
    finally:
        proc.join(timeout=30)
    assert status == "ok" and stats["num_buckets"] == rstats["num_buckets"] == 2  # a: 4800 B alone; b + c
    assert all(torch.equal(got[n], t) and got[n].dtype == t.dtype for n, t in TENSORS.items())
    assert stats["num_bytes"] == sum(t.numel() * t.element_size() for t in TENSORS.values())


def test_a_refused_manifest_stops_everyone_before_any_tensor_moves():
    spec, queue, proc, sender = _start("refuse", timeout_s=60, bucket_bytes=4096)
    produced = []

    def tensors():
        for t in TENSORS.values():
            produced.append(t)
            yield t

    try:
        with pytest.raises(WeightSyncError, match="refused the weight manifest"):
            sender.send([spec_of(n, t) for n, t in TENSORS.items()], tensors())
        status, kind, message, loaded = queue.get(timeout=60)
    finally:
        proc.join(timeout=30)
    assert (status, kind, message, loaded) == ("error", "ValueError", "refused a", False)
    assert produced == []  # the sender did not even gather a tensor


def test_a_receiver_that_is_gone_fails_the_send_with_a_clear_error():
    spec, queue, proc, sender = _start("leave", timeout_s=20, bucket_bytes=4096)
    assert queue.get(timeout=60) == "joined"
    proc.join(timeout=30)
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match="weight channel rank 0: manifest size broadcast failed"):
        sender.send([spec_of(n, t) for n, t in TENSORS.items()], iter(TENSORS.values()))
    assert time.perf_counter() - start < 25


def test_a_member_that_never_joins_times_out_naming_the_address():
    spec = ChannelSpec("127.0.0.1", _free_port(), 2, timeout_s=2)
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match=f"rank 0/2 could not join the group at 127.0.0.1:{spec.port}"):
        WeightChannel(spec, 0)
    assert time.perf_counter() - start < 30


def test_a_sender_whose_tensors_disagree_with_its_manifest_fails_the_receivers_at_once():
    spec, queue, proc, sender = _start("ok", timeout_s=60, bucket_bytes=4096)
    manifest = [spec_of(n, t) for n, t in TENSORS.items()]
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="tensor 'b' is \\(18,\\)"):
            sender.send(manifest, iter([TENSORS["a"], torch.zeros(18, dtype=torch.bfloat16), TENSORS["c"]]))
        status, kind, message, _ = queue.get(timeout=60)
    finally:
        proc.join(timeout=30)
    assert (status, kind) == ("error", "WeightSyncError") and "bucket 2/2 broadcast failed" in message
    assert time.perf_counter() - start < 30  # the receiver did not wait for its 60 s timeout
