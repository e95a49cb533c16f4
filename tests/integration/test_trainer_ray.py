"""Two DeepSpeed ranks as Ray actors (local cluster, gloo, ZeRO-3) against one in-process rank."""

from __future__ import annotations

import pytest
import torch

from cispo.trainer import TrainerConfig
from cispo.trainer.synthetic import random_batch
from cispo.trainer.worker import PolicyWorker
from rollout.models import prepare_model

pytestmark = pytest.mark.slow

# fp32, Adam eps 1 (first step ~ lr * g), clipping on: the global grad norm must agree too.
COMMON = dict(precision="fp32", batch_size=8, mini_batch_size=4, lr=1e-1, adam_eps=1.0, grad_clip=1.0,
              logprob_chunk_size=4, log_entropy=False)


@pytest.fixture(scope="module")
def tiny():
    return prepare_model("tiny")


@pytest.fixture(scope="module")
def batch(tiny):
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny).vocab_size
    return random_batch(8, prompt_len=4, max_response_len=10, vocab_size=vocab, seed=5)


@pytest.fixture(scope="module")
def group(tiny):
    import ray

    from cispo.trainer import TrainerGroup

    # address="local": a private cluster even if another one runs on this (shared) machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = TrainerConfig(zero_stage=3, world_size=2, num_cpus_per_rank=0.5, micro_batch_max_tokens=28, **COMMON)
    g = TrainerGroup(cfg, tiny)
    yield g
    g.shutdown()
    ray.shutdown()


def test_two_ranks_equal_one_rank(group, tiny, batch, tmp_path):
    """Same log-probs; after one update (2 mini-batches, different micro-batch budgets) the same
    weights; then save, train on, load: the saved state comes back exactly."""
    single = PolicyWorker(TrainerConfig(zero_stage=0, micro_batch_max_tokens=1000, **COMMON), tiny)
    log_probs = group.compute_log_probs(batch)
    assert torch.allclose(log_probs, single.compute_log_probs(batch), rtol=0, atol=1e-6)

    before = single.export_weights()
    metrics, metrics_single = group.update(batch), single.update(batch)
    after, after_single = group.export_weights(), single.export_weights()
    assert metrics["actor/optimizer_steps"] == 2 and metrics["actor/skipped_steps"] == 0
    assert metrics["actor/loss"] == pytest.approx(metrics_single["actor/loss"], rel=1e-5)
    assert metrics["actor/grad_norm"] == pytest.approx(metrics_single["actor/grad_norm"], rel=1e-5)
    moved = max(float((after_single[k] - before[k]).abs().max()) for k in before)
    diff = max(float((after[k] - after_single[k]).abs().max()) for k in before)
    assert moved > 1e-3 and diff <= 2e-6, (moved, diff)

    saved_state = group.training_state()
    group.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model" / "config.json").is_file()
    group.update(batch)
    assert group.scheduler_state()["global_step"] == 4
    group.load(tmp_path / "ckpt")
    assert group.scheduler_state()["global_step"] == 2
    restored = group.training_state()
    for name, entry in saved_state.items():
        for key, value in entry.items():
            assert torch.equal(restored[name][key], value), (name, key)
