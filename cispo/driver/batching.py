"""Turns scored rollouts into the trainer's :class:`TrainBatch` (right-padded, token-aligned)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cispo.trainer.batch import TrainBatch
from rollout.types import RolloutResult


def build_train_batch(
    results: Sequence[RolloutResult],
    advantages: torch.Tensor,
    *,
    pad_token_id: int,
    mask_truncated: bool = False,
) -> TrainBatch:
    """Row i = prompt + response of ``results[i]``. ``log_probs[b, t]`` scores token t given the
    tokens before it, so the response mask and the rollout log-probs sit on the response positions.

    ``mask_truncated`` is DAPO's overlong filtering: responses cut at max_tokens keep their row but
    get no loss tokens.
    """
    if len(results) != advantages.shape[0]:
        raise ValueError(f"{len(results)} results but {advantages.shape[0]} advantages")
    if not results:
        raise ValueError("cannot build a training batch from zero rollouts")
    width = max(len(r.prompt_ids) + len(r.response_ids) for r in results)
    rows = len(results)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros(rows, width, dtype=torch.long)
    response = torch.zeros(rows, width, dtype=torch.long)
    rollout_lp = torch.zeros(rows, width, dtype=torch.float32)
    for i, r in enumerate(results):
        p, n = len(r.prompt_ids), len(r.response_ids)
        input_ids[i, :p + n] = torch.tensor(list(r.prompt_ids) + list(r.response_ids), dtype=torch.long)
        attention[i, :p + n] = 1
        if not (mask_truncated and r.finish_reason == "length"):
            response[i, p:p + n] = 1
        rollout_lp[i, p:p + n] = torch.from_numpy(r.logprobs)
    return TrainBatch(
        input_ids=input_ids, attention_mask=attention, response_mask=response,
        advantages=advantages.to(torch.float32), group_ids=torch.tensor([r.group_id for r in results]),
        rollout_log_probs=rollout_lp,
    )
