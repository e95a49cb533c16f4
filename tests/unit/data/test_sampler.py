"""The stateful sampler: per-epoch shuffles and resumes that neither skip nor repeat a prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cispo.data import PromptSampler, epoch_permutation

ITEMS = [f"p{i}" for i in range(10)]


def draw(sampler: PromptSampler, sizes: list[int]) -> list[list[str]]:
    return [sampler.sample(size) for size in sizes]


def test_each_epoch_is_a_seeded_permutation():
    sampler = PromptSampler(ITEMS, seed=5)
    drawn = sampler.sample(30)
    for epoch in range(3):
        chunk = drawn[epoch * 10 : (epoch + 1) * 10]
        assert sorted(chunk) == sorted(ITEMS)
        expected = np.random.default_rng([5, epoch]).permutation(10)
        assert chunk == [ITEMS[i] for i in expected]
    assert drawn[:10] != drawn[10:20]
    assert sampler.state_dict()["epoch"] == 3 and sampler.state_dict()["position"] == 0
    assert PromptSampler(ITEMS, seed=6).sample(10) != drawn[:10]
    assert PromptSampler(ITEMS, shuffle=False).sample(12) == ITEMS + ITEMS[:2]
    assert epoch_permutation(4, 0, 0, shuffle=False) == [0, 1, 2, 3]


# batch size 4 over 10 items: boundaries fall inside batches; batch size 5: exactly on them.
@pytest.mark.parametrize("batch_size", [4, 5])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5, 7])
def test_resume_equals_straight_run(batch_size, k):
    total = 8
    straight = draw(PromptSampler(ITEMS, seed=11), [batch_size] * total)

    first = PromptSampler(ITEMS, seed=11)
    before = draw(first, [batch_size] * k)
    state = json.loads(json.dumps(first.state_dict()))  # as stored in trainer_state.json
    resumed = PromptSampler(ITEMS, seed=0)  # the seed comes from the state
    resumed.load_state_dict(state)
    after = draw(resumed, [batch_size] * (total - k))
    assert before + after == straight
    if batch_size == 5 and k == 2:  # a checkpoint exactly at the end of epoch 0
        assert state["epoch"] == 1 and state["position"] == 0
        assert sorted(after[0] + after[1]) == sorted(ITEMS)


def test_variable_counts_and_consumed():
    sizes = [3, 0, 7, 12, 1, 5]
    straight = PromptSampler(ITEMS, seed=2).sample(sum(sizes))
    sampler = PromptSampler(ITEMS, seed=2)
    pieces = draw(sampler, sizes)
    assert [x for piece in pieces for x in piece] == straight
    assert sampler.consumed == 28
    assert sampler.state_dict()["epoch"] == 2 and sampler.state_dict()["position"] == 8


def test_batches_iterator():
    sampler = PromptSampler(ITEMS, seed=9)
    batches = sampler.batches(3)
    got = [next(batches) for _ in range(4)]
    assert [x for b in got for x in b] == PromptSampler(ITEMS, seed=9).sample(12)


def test_state_written_at_position_end_rolls_over():
    sampler = PromptSampler(ITEMS, seed=1)
    state = {**sampler.state_dict(), "epoch": 2, "position": 10}
    sampler.load_state_dict(state)
    assert sampler.sample(10) == PromptSampler(ITEMS, seed=1).sample(40)[30:]


def test_bad_states_and_arguments():
    sampler = PromptSampler(ITEMS, seed=1)
    with pytest.raises(ValueError, match="saved for 11 prompts, this data set has 10"):
        sampler.load_state_dict({**sampler.state_dict(), "num_items": 11})
    with pytest.raises(ValueError, match="missing keys \\['epoch'\\]"):
        sampler.load_state_dict({k: v for k, v in sampler.state_dict().items() if k != "epoch"})
    with pytest.raises(ValueError, match="position=11"):
        sampler.load_state_dict({**sampler.state_dict(), "position": 11})
    with pytest.raises(ValueError, match="count=-1"):
        sampler.sample(-1)
    with pytest.raises(ValueError, match="empty"):
        PromptSampler([])
    with pytest.raises(ValueError, match="seed=-3"):
        PromptSampler(ITEMS, seed=-3)


def test_retired_items_are_passed_over_and_kept_in_the_state():
    s = PromptSampler(list(range(6)), seed=1)
    order = epoch_permutation(6, 1, 0) + epoch_permutation(6, 1, 1)
    s.retire(order[1])
    s.retire(order[4])
    got = s.sample_indices(6)
    live = [i for i in order if i not in (order[1], order[4])]
    assert got == live[:6]
    state = s.state_dict()
    assert state["retired"] == sorted([order[1], order[4]])
    t = PromptSampler(list(range(6)), seed=1)
    t.load_state_dict(state)
    assert t.sample_indices(4) == s.sample_indices(4)


def test_all_items_retired_is_a_clear_error_and_old_states_load():
    s = PromptSampler(list(range(3)), seed=0)
    old = {k: v for k, v in s.state_dict().items() if k != "retired"}
    for i in range(3):
        s.retire(i)
    with pytest.raises(ValueError, match="all 3 prompts are retired"):
        s.sample_indices(1)
    with pytest.raises(ValueError, match=r"retire\(3\)"):
        s.retire(3)
    s.load_state_dict(old)  # written before no-positive-resampling existed
    assert s.retired == set() and len(s.sample_indices(2)) == 2
    with pytest.raises(ValueError, match="retired must be a list"):
        s.load_state_dict(old | {"retired": [7]})
