"""RolloutGroup on a real local Ray cluster: two actors, each with its own vLLM CPU engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rollout.config import EngineConfig, GroupConfig, SamplingConfig
from rollout.group import split_evenly
from rollout.models import prepare_model

MAX_LEN = 128


def test_split_evenly():
    assert split_evenly(5, 2) == [(0, 3), (3, 5)]
    assert split_evenly(6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert split_evenly(1, 3) == [(0, 1)]  # idle actors get no share
    assert split_evenly(0, 2) == []
    with pytest.raises(ValueError):
        split_evenly(3, 0)


def test_pack_weights_round_trip():
    from rollout.weight_format import pack_weights, unpack_weights

    w = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.randn(4, 3).t()}
    back = unpack_weights(pack_weights(w))
    assert back.keys() == w.keys()
    for k in w:
        assert back[k].dtype == w[k].dtype and torch.equal(back[k], w[k])


def test_group_config_validation():
    with pytest.raises(ValueError, match="GroupConfig.num_actors"):
        GroupConfig(num_actors=0).validate()
    with pytest.raises(ValueError, match="GroupConfig.generate_timeout_s"):
        GroupConfig(generate_timeout_s=0).validate()


@pytest.fixture(scope="module")
def group():
    ray = pytest.importorskip("ray")
    from rollout.group import RolloutGroup

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    g = RolloutGroup(
        EngineConfig(model="tiny", max_model_len=MAX_LEN),
        GroupConfig(num_actors=2, num_cpus_per_actor=0.5),
    )
    yield g
    g.shutdown()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def new_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(prepare_model("tiny", seed=1)), dtype=torch.float32).eval()


def _max_diff_vs_hf(results, model) -> float:
    worst = 0.0
    with torch.no_grad():
        for r in results:
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            lp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            p = len(r.prompt_ids)
            ref = lp[p - 1 : -1].gather(-1, torch.tensor(r.response_ids)[:, None])[:, 0]
            worst = max(worst, (ref - torch.from_numpy(r.logprobs).double()).abs().max().item())
    return worst


PROMPTS = [[10 + i, 20 + i, 30 + i] for i in range(5)]


@pytest.mark.slow
def test_results_in_prompt_order(group):
    pids = {info["pid"] for info in group.ready()}
    assert len(pids) == 2  # two processes, two engines
    res = group.generate(PROMPTS, SamplingConfig(n=2, max_tokens=8, seed=4))
    assert [r.group_id for r in res] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [r.prompt_ids for r in res] == [p for p in PROMPTS for _ in range(2)]
    assert [r.sample_index for r in res] == [0, 1] * 5
    custom = group.generate(PROMPTS, SamplingConfig(max_tokens=2, seed=4), group_ids=[9, 8, 7, 6, 5])
    assert [r.group_id for r in custom] == [9, 8, 7, 6, 5]
    with pytest.raises(ValueError, match="empty"):
        group.generate([])


@pytest.mark.slow
def test_weight_update_across_processes(group, new_model):
    from rollout.weight_format import to_safetensors_bytes

    s = SamplingConfig(n=2, max_tokens=16, seed=6, top_p=0.9)
    sd = new_model.state_dict()
    group.update_weights(to_safetensors_bytes(sd))  # bytes from elsewhere pass through as they are
    stats = group.update_weights(sd)  # default: numpy arrays through the object store
    assert stats["num_bytes"] == sum(t.numel() * 4 for t in sd.values())
    assert [i["weight_version"] for i in group.ready()] == [2, 2]
    res = group.generate(PROMPTS, s)
    assert _max_diff_vs_hf(res, new_model) <= 1e-4  # both actors' shares
    # A reference already in the object store (the trainer's path) is forwarded without a copy here.
    import ray

    from rollout.weight_format import pack_weights

    stats = group.update_weights((ray.put(pack_weights(sd)), 123))
    assert stats["num_bytes"] == 123 and stats["serialize_s"] == 0.0
    assert [i["weight_version"] for i in group.ready()] == [3, 3]
    assert _max_diff_vs_hf(group.generate(PROMPTS, s), new_model) <= 1e-4
    bad = dict(sd, **{"lm_head.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="lm_head.bias"):
        group.update_weights(bad)
    assert [i["weight_version"] for i in group.ready()] == [3, 3]


@pytest.mark.slow
def test_actor_death_mid_batch_loses_nothing(group, new_model):
    import ray

    s = SamplingConfig(n=3, max_tokens=24, seed=9)
    reference = group.generate(PROMPTS, s)
    old_pid = group.ready()[0]["pid"]
    pending = group.submit(PROMPTS, s)
    ray.kill(group.actors[0])  # its share (prompts 0-2) is in flight
    res = group.collect(pending)
    assert group.metrics["actor_restarts"] == 1
    assert group.metrics["resubmitted_prompts"] == 3
    info = group.ready()
    # A fresh actor that loaded the latest weights once (the survivor has had three updates).
    assert info[0]["pid"] != old_pid and info[0]["weight_version"] == 1 and info[1]["weight_version"] == 3
    assert [r.group_id for r in res] == [r.group_id for r in reference]
    # Same seeds and same (updated) weights: the replacement reproduces the lost share exactly.
    assert [r.response_ids for r in res] == [r.response_ids for r in reference]
    assert all(np.allclose(a.logprobs, b.logprobs, atol=1e-5) for a, b in zip(res, reference))
    assert _max_diff_vs_hf(res[:9], new_model) <= 1e-4
