"""Advantage estimators against hand computation."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from cispo.algorithms import compute_advantages


def test_grpo_interleaved_groups_match_statistics_module():
    rewards = [1.0, 0.0, 0.5, 1.0, 0.0, 0.25, 1.0]
    groups = ["a", "b", "a", "b", "a", "b", "c"]
    adv = compute_advantages("grpo", torch.tensor(rewards, dtype=torch.float64), groups, eps=1e-6)
    for i, (r, g) in enumerate(zip(rewards, groups)):
        members = [rr for rr, gg in zip(rewards, groups) if gg == g]
        if len(members) == 1:
            expected = 0.0
        else:
            expected = (r - statistics.mean(members)) / (statistics.stdev(members) + 1e-6)
        assert adv[i].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_grpo_population_std_and_batch_std_options():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 1.0, 2.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = compute_advantages("grpo", rewards, groups, eps=0.0, std_unbiased=False)
    assert adv[0].item() == pytest.approx((1 - 1 / 3) / statistics.pstdev([1.0, 0.0, 0.0]))
    adv_b = compute_advantages("grpo", rewards, groups, eps=0.0, batch_std=True)
    batch_std = statistics.stdev(rewards.tolist())
    assert adv_b[3].item() == pytest.approx((3 - 2) / batch_std)


def test_all_equal_rewards_and_group_of_one_give_zero_not_nan():
    for name in ("grpo", "dr_grpo", "rloo"):
        adv = compute_advantages(name, torch.tensor([1.0, 1.0, 1.0, 0.3]), torch.tensor([0, 0, 0, 1]))
        assert torch.equal(adv, torch.zeros(4)), name


def test_dr_grpo_and_rloo_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0])
    assert compute_advantages("dr_grpo", rewards, groups).tolist() == [0.5, -0.5, -0.5, 0.5]
    # RLOO: r_i - mean of the other three
    assert compute_advantages("rloo", rewards, groups).tolist() == pytest.approx([1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3])
    # RLOO = G/(G-1) * dr_grpo
    torch.testing.assert_close(compute_advantages("rloo", rewards, groups),
                               compute_advantages("dr_grpo", rewards, groups) * 4 / 3)


def test_grpo_advantages_sum_to_zero_per_group():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(24, generator=g, dtype=torch.float64)
    groups = torch.randperm(24, generator=g) % 6
    adv = compute_advantages("grpo", rewards, groups)
    for k in range(6):
        assert math.isclose(adv[groups == k].sum().item(), 0.0, abs_tol=1e-9)


@pytest.mark.parametrize("args,needle", [
    (("ppo", [1.0], [0]), "name='ppo'"),
    (("grpo", [1.0, 2.0], [0]), "group_ids has 1 entries; expected 2"),
    (("grpo", [[1.0]], [0]), "rewards has shape (1, 1)"),
    (("grpo", [1.0, float("nan")], [0, 0]), "rewards contains 1 NaN"),
])
def test_bad_input(args, needle):
    name, rewards, groups = args
    with pytest.raises(ValueError) as err:
        compute_advantages(name, torch.tensor(rewards), groups)
    assert needle in str(err.value)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option"):
        compute_advantages("rloo", torch.tensor([1.0, 0.0]), [0, 0], batch_std=True)
    with pytest.raises(ValueError, match="eps"):
        compute_advantages("grpo", torch.tensor([1.0, 0.0]), [0, 0], eps=-1)
