"""Loss aggregation: how per-token losses become one scalar.

The modes follow ScaleRL / verl naming (docs/algorithms.md, "Aggregation"). ``normalizer`` is
the GLOBAL count of the whole mini-batch (tokens, sequences or prompt groups, by mode) across
micro-batches and data-parallel ranks. With it, summing the losses of any split of a mini-batch
gives exactly the loss (and gradient) of the whole mini-batch; without it each call normalises by
its own counts, which makes the result depend on how the batch was split.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cispo.algorithms._checks import check_choice, check_mask, check_positive

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "prompt-mean")


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    *,
    normalizer: float | None = None,
    token_budget: float | None = None,
    group_ids: Tensor | None = None,
) -> Tensor:
    """Reduces a [batch, tokens] loss matrix to a scalar.

    - ``token-mean``: sum of all masked tokens / token count (DAPO, CISPO Eq. 4).
    - ``seq-mean-token-mean``: mean over each sequence's tokens, then over sequences (GRPO).
    - ``seq-mean-token-sum-norm``: each sequence's token sum / ``token_budget`` (default: the padded
      length), then mean over sequences (Dr. GRPO). Pass a constant budget when splitting.
    - ``prompt-mean``: token mean within each prompt group (``group_ids``), then mean over groups.
      A group must not be split across calls: its token count is taken locally.

    Sequences (or groups) with no masked token are not counted. ``normalizer`` replaces the local
    count of tokens / sequences / groups for the final division.
    """
    check_choice("agg", mode, AGGREGATIONS)
    mask = check_mask(mask, loss_mat.shape).to(loss_mat.dtype)
    if normalizer is not None:
        check_positive("normalizer", normalizer)
    masked = loss_mat * mask

    if mode == "token-mean":
        count = mask.sum()
        return masked.sum() / (normalizer if normalizer is not None else count.clamp(min=1))

    seq_tokens = mask.sum(dim=-1)
    has_tokens = seq_tokens > 0
    if mode == "seq-mean-token-mean":
        seq_loss = masked.sum(dim=-1) / seq_tokens.clamp(min=1)
        count = has_tokens.sum()
        return seq_loss.sum() / (normalizer if normalizer is not None else count.clamp(min=1))

    if mode == "seq-mean-token-sum-norm":
        budget = float(loss_mat.shape[-1]) if token_budget is None else token_budget
        check_positive("token_budget", budget)
        seq_loss = masked.sum(dim=-1) / budget
        count = has_tokens.sum()
        return seq_loss.sum() / (normalizer if normalizer is not None else count.clamp(min=1))

    # prompt-mean
    if group_ids is None:
        raise ValueError("agg='prompt-mean' needs group_ids: a [batch] tensor of prompt group ids")
    if group_ids.shape != loss_mat.shape[:1]:
        raise ValueError(f"group_ids has shape {tuple(group_ids.shape)}; expected ({loss_mat.shape[0]},)")
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    group_sum = torch.zeros(n_groups, dtype=loss_mat.dtype, device=loss_mat.device)
    group_tokens = torch.zeros_like(group_sum)
    group_sum.index_add_(0, inverse, masked.sum(dim=-1))
    group_tokens.index_add_(0, inverse, seq_tokens)
    group_loss = group_sum / group_tokens.clamp(min=1)
    count = (group_tokens > 0).sum()
    return group_loss.sum() / (normalizer if normalizer is not None else count.clamp(min=1))


def aggregation_count(mask: Tensor, mode: str, *, group_ids: Tensor | None = None) -> int:
    """The local count that ``normalizer`` replaces; sum it over micro-batches and ranks."""
    check_choice("agg", mode, AGGREGATIONS)
    if mode == "token-mean":
        return int(mask.sum().item())
    if mode == "prompt-mean":
        if group_ids is None:
            raise ValueError("agg='prompt-mean' needs group_ids to count prompt groups")
        tokens = mask.sum(dim=-1) > 0
        return int(torch.unique(group_ids[tokens]).numel())
    return int((mask.sum(dim=-1) > 0).sum().item())
