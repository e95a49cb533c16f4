"""The collective weight channel end to end: two DeepSpeed ZeRO-3 ranks (gloo) stream their weights to
two in-process vLLM engines on Ray, bucket by bucket; afterwards vLLM's log-probs of its own samples
equal the trainer's. A bad manifest, a sender that stalls and an engine that is gone fail clearly."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cispo.driver.weights import CollectiveBroadcast
from cispo.trainer import TrainBatch, TrainerConfig
from cispo.trainer.synthetic import random_batch
from rollout.config import EngineConfig, GroupConfig, SamplingConfig
from rollout.models import prepare_model
from rollout.weight_channel import TensorSpec, WeightStream
from rollout.weight_format import WeightSyncError

pytestmark = pytest.mark.slow

PROMPTS = [[5, 17, 42, 8], [9, 3, 77, 21, 30]]
TOLERANCE = 1e-4  # as tests/integration/test_trainer_vllm_sync.py (fp32)
BUCKET_MB = 0.1   # the tiny model is ~0.6 MiB: several buckets


class StubSender:
    """Stands in for the trainer's rank 0 on the real channel, to send manifests no trainer would."""

    def __init__(self, model_dir: str) -> None:
        from safetensors.torch import load_file

        self.weights = load_file(f"{model_dir}/model.safetensors")
        self.channel = None

    def address(self) -> tuple[str, int]:
        from cispo.trainer import comm

        return "127.0.0.1", comm.free_port()

    def open(self, spec) -> None:  # noqa: ANN001
        from rollout.weight_channel import WeightChannel

        self.channel = WeightChannel(spec, 0)

    def send(self, rename: dict[str, str | None]) -> dict[str, float]:
        """Send the checkpoint with names changed (None drops the tensor)."""
        items = [(rename.get(n, n), t) for n, t in self.weights.items() if rename.get(n, n) is not None]
        manifest = [TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in items]
        return self.channel.send(manifest, (t for _, t in items))

    def stall(self, seconds: float) -> None:
        time.sleep(seconds)

    def send_partly(self, buckets: int) -> None:
        """The protocol up to `buckets` buckets, then the sender vanishes (its group is aborted)."""
        import torch

        from rollout.weight_channel import pack_into, plan_buckets

        manifest = [TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in self.weights.items()]
        self.channel._broadcast_object({"sync": 0, "manifest": manifest})
        self.channel.agree(False, "manifest check")
        for bucket in plan_buckets(manifest, self.channel.spec.bucket_bytes)[:buckets]:
            buf = torch.empty(bucket.nbytes, dtype=torch.uint8)
            for spec, off in zip(bucket.specs, bucket.offsets):
                pack_into(spec, off, self.weights[spec.name], buf)
            self.channel.broadcast(buf, "bucket")
        self.channel.close()


@pytest.fixture(scope="module")
def cluster():
    import ray

    from cispo.trainer import TrainerGroup
    from rollout.group import RolloutGroup

    path = prepare_model("tiny-tied")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    trainer = TrainerGroup(TrainerConfig(zero_stage=3, world_size=2, num_cpus_per_rank=0.5, precision="fp32",
                                         lm_head_fp32=True, batch_size=8, mini_batch_size=8, lr=5e-2,
                                         micro_batch_max_tokens=64, logprob_chunk_size=16), path)
    rollout = RolloutGroup(EngineConfig(model=str(path), dtype="float32", max_model_len=64),
                           GroupConfig(num_actors=2, num_cpus_per_actor=0.5, weight_sync="collective",
                                       weight_bucket_mb=BUCKET_MB, weight_channel_timeout_s=60))
    # Two threads: the stalled-sender test leaves `stall(30)` sleeping in one; the tests after it use the other
    # instead of queueing behind it (~25 s).
    stub = ray.remote(num_cpus=0, max_concurrency=2)(StubSender).remote(str(path))
    yield trainer, rollout, stub
    rollout.shutdown()
    trainer.shutdown()
    ray.shutdown()


def _rollout_batch(rollout, seed: int) -> TrainBatch:
    results = rollout.generate(PROMPTS, SamplingConfig(n=4, max_tokens=12, temperature=1.0, seed=seed))
    return TrainBatch.from_sequences(
        [r.prompt_ids for r in results], [r.response_ids for r in results],
        advantages=np.zeros(len(results)), group_ids=[r.group_id for r in results],
        rollout_log_probs=[r.logprobs for r in results])


def _gap(trainer, batch: TrainBatch) -> float:
    return float((trainer.compute_log_probs(batch) - batch.rollout_log_probs)[batch.response_mask.bool()].abs().max())


def _connect_stub(rollout, stub) -> None:
    import ray

    host, port = ray.get(stub.address.remote())
    rollout.connect_weight_channel(host, port, stub.open.remote)


def test_streamed_sync_gives_every_engine_the_trainer_log_probs(cluster):
    from transformers import AutoConfig

    trainer, rollout, _ = cluster
    vocab = AutoConfig.from_pretrained(prepare_model("tiny-tied")).vocab_size
    trainer.update(random_batch(8, prompt_len=4, max_response_len=8, vocab_size=vocab, seed=1))
    stale = _rollout_batch(rollout, seed=0)
    assert _gap(trainer, stale) > 100 * TOLERANCE  # the update changed the policy visibly

    stats = CollectiveBroadcast(trainer, rollout).load()  # forms the channel, then streams
    assert rollout.channel is not None and rollout.channel.world_size == 3  # rank 0 + 2 engines
    assert stats["num_buckets"] >= 4  # streamed, not one blob
    fresh = _rollout_batch(rollout, seed=0)  # both actors' shares
    assert int(fresh.response_mask.sum()) >= 8 and _gap(trainer, fresh) <= TOLERANCE

    # A second step over the same channel (no new group).
    channel = rollout.channel
    trainer.update(fresh)
    CollectiveBroadcast(trainer, rollout).load()
    assert rollout.channel is channel and _gap(trainer, _rollout_batch(rollout, seed=1)) <= TOLERANCE


@pytest.mark.parametrize(("rename", "message"), [
    ({"model.norm.weight": "model.nrom.weight"}, "unknown weight name.*model.nrom.weight"),
    ({"model.layers.0.mlp.up_proj.weight": None}, "missing 1 of .*model.layers.0.mlp.up_proj.weight"),
])
def test_a_misnamed_or_missing_tensor_is_refused_before_anything_loads(cluster, rename, message):
    import ray

    trainer, rollout, stub = cluster
    before = _rollout_batch(rollout, seed=2)
    _connect_stub(rollout, stub)
    sender = stub.send.remote(rename)
    with pytest.raises(ValueError, match=message):
        rollout.update_weights(WeightStream((sender,)))
    with pytest.raises(WeightSyncError, match="refused the weight manifest"):
        ray.get(sender, timeout=60)
    assert rollout.channel is None  # the next sync forms a new channel
    after = _rollout_batch(rollout, seed=2)  # same samples and log-probs: nothing was loaded
    assert [list(x) for x in after.input_ids] == [list(x) for x in before.input_ids]
    assert np.allclose(after.rollout_log_probs, before.rollout_log_probs, atol=1e-6)


def test_a_stalled_sender_times_out_with_a_clear_error(cluster):
    trainer, rollout, stub = cluster
    rollout.config.weight_channel_timeout_s = 5
    try:
        _connect_stub(rollout, stub)
        start = time.perf_counter()
        with pytest.raises(WeightSyncError, match="manifest size broadcast failed .*slower than 5 s"):
            rollout.update_weights(WeightStream((stub.stall.remote(30),)))
        assert time.perf_counter() - start < 30
    finally:
        rollout.config.weight_channel_timeout_s = 60
    # The trainer forms a fresh channel and syncs again.
    CollectiveBroadcast(trainer, rollout).load()
    assert _gap(trainer, _rollout_batch(rollout, seed=3)) <= TOLERANCE


def test_a_stream_cut_part_way_leaves_no_engine_generating_on_mixed_weights(cluster):
    trainer, rollout, stub = cluster
    _connect_stub(rollout, stub)
    with pytest.raises(WeightSyncError, match="bucket 3/.* broadcast failed"):
        rollout.update_weights(WeightStream((stub.send_partly.remote(2),)))
    # The stub gave the group no weights to repair with: the engines refuse to generate.
    with pytest.raises(WeightSyncError, match="mix of two versions"):
        _rollout_batch(rollout, seed=6)
    CollectiveBroadcast(trainer, rollout).load()  # a complete sync (new channel) fixes them
    assert _gap(trainer, _rollout_batch(rollout, seed=6)) <= TOLERANCE


def test_an_engine_gone_fails_the_sync_clearly_and_a_restart_recovers(cluster):
    import ray

    trainer, rollout, _ = cluster
    CollectiveBroadcast(trainer, rollout).load()
    ray.kill(rollout.actors[1], no_restart=True)
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match="rollout actor 1"):
        CollectiveBroadcast(trainer, rollout).load()
    assert time.perf_counter() - start < 60
    # The live engine may have been cut part-way: the group repaired it from the trainer's weights.
    rollout.restart_actor(1)  # gets the trainer's current weights through the object store
    fresh = _rollout_batch(rollout, seed=4)
    assert _gap(trainer, fresh) <= TOLERANCE
    trainer.update(fresh)
    CollectiveBroadcast(trainer, rollout).load()  # a new channel with the new actor
    assert _gap(trainer, _rollout_batch(rollout, seed=5)) <= TOLERANCE
