"""Aggregation modes and the global normaliser that makes any split of a mini-batch exact."""

from __future__ import annotations

import pytest
import torch

from cispo.algorithms import AGGREGATIONS, aggregate, aggregation_count, compute_policy_loss


def test_each_mode_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1])
    assert aggregate(loss, mask, "token-mean").item() == pytest.approx((1 + 2 + 4 + 7 + 8 + 9) / 6)
    assert aggregate(loss, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4 + 8) / 3)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx((3 / 3 + 4 / 3 + 24 / 3) / 3)
    assert aggregate(loss, mask, "seq-mean-token-sum-norm", token_budget=10).item() == pytest.approx((0.3 + 0.4 + 2.4) / 3)
    assert aggregate(loss, mask, "prompt-mean", group_ids=groups).item() == pytest.approx((7 / 3 + 8) / 2)


def test_fully_masked_sequences_do_not_count():
    loss = torch.tensor([[1.0, 3.0], [100.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [0, 0]], dtype=torch.float64)
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert aggregate(loss, mask, mode, token_budget=2).item() == pytest.approx(2.0)
    assert aggregate(loss, mask, "prompt-mean", group_ids=torch.tensor([0, 1])).item() == pytest.approx(2.0)
    assert aggregate(loss, torch.zeros_like(mask), "token-mean").item() == 0.0


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("loss_name", ["cispo", "grpo", "dapo"])
def test_summed_gradient_of_any_split_equals_gradient_of_the_whole(mode, loss_name):
    g = torch.Generator().manual_seed(0)
    batch, tokens = 8, 9
    old = -torch.rand(batch, tokens, generator=g, dtype=torch.float64) * 3
    new = old + (torch.rand(batch, tokens, generator=g, dtype=torch.float64) - 0.5)
    adv = torch.randn(batch, generator=g, dtype=torch.float64)
    mask = (torch.rand(batch, tokens, generator=g) > 0.3).double()
    mask[:, 0] = 1
    groups = torch.arange(batch) // 2
    common = dict(eps_low=0.2, eps_high=0.28, agg=mode, token_budget=float(tokens))

    whole = new.clone().requires_grad_(True)
    loss_whole, _ = compute_policy_loss(loss_name, whole, old, adv, mask, group_ids=groups, **common)
    loss_whole.backward()

    # Unequal micro-batches, as two "ranks" would see them; prompt groups stay whole.
    splits = [slice(0, 2), slice(2, 6), slice(6, 8)]
    normalizer = sum(aggregation_count(mask[s], mode, group_ids=groups[s]) for s in splits)
    part = new.clone().requires_grad_(True)
    total = 0.0
    for s in splits:
        loss_s, _ = compute_policy_loss(loss_name, part[s], old[s], adv[s], mask[s], group_ids=groups[s],
                                        normalizer=normalizer, **common)
        loss_s.backward()
        total += loss_s.item()
    assert total == pytest.approx(loss_whole.item(), rel=1e-12)
    torch.testing.assert_close(part.grad, whole.grad, rtol=1e-12, atol=1e-15)

    # Without the global normaliser the split changes the result (the bug the normaliser prevents).
    local = sum(compute_policy_loss(loss_name, new[s], old[s], adv[s], mask[s], group_ids=groups[s], **common)[0].item()
                for s in splits)
    assert local != pytest.approx(loss_whole.item(), rel=1e-6)


def test_aggregation_count_by_mode():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
    groups = torch.tensor([5, 5, 7])
    assert aggregation_count(mask, "token-mean") == 3
    assert aggregation_count(mask, "seq-mean-token-mean") == 2
    assert aggregation_count(mask, "prompt-mean", group_ids=groups) == 2


def test_bad_aggregation_input():
    loss = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="agg='sum'"):
        aggregate(loss, torch.ones(2, 3), "sum")
    with pytest.raises(ValueError, match="mask has shape"):
        aggregate(loss, torch.ones(2, 2), "token-mean")
    with pytest.raises(ValueError, match="normalizer"):
        aggregate(loss, torch.ones(2, 3), "token-mean", normalizer=0)
    with pytest.raises(ValueError, match="group_ids has shape"):
        aggregate(loss, torch.ones(2, 3), "prompt-mean", group_ids=torch.tensor([1, 2, 3]))
