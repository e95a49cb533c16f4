"""Random but well-formed train batches, for tests and benchmarks (no rollout needed)."""

from __future__ import annotations

import torch

from cispo.trainer.batch import TrainBatch


def random_batch(rows: int, prompt_len: int, max_response_len: int, vocab_size: int, *, group_size: int = 2,
                 min_response_len: int = 1, seed: int = 0, first_token: int = 3) -> TrainBatch:
    """``rows`` responses of random length in [min_response_len, max_response_len] after a
    ``prompt_len``-token prompt shared by each group of ``group_size`` rows; right-padded with 0;
    advantages ~ N(0, 1). Token ids are drawn from [first_token, vocab_size) (skips special ids)."""
    if rows % group_size:
        raise ValueError(f"rows={rows} must be a multiple of group_size={group_size}")
    if not 1 <= min_response_len <= max_response_len:
        raise ValueError(f"need 1 <= min_response_len={min_response_len} <= max_response_len={max_response_len}")
    g = torch.Generator().manual_seed(seed)
    width = prompt_len + max_response_len
    prompts = torch.randint(first_token, vocab_size, (rows // group_size, prompt_len), generator=g)
    ids = torch.randint(first_token, vocab_size, (rows, width), generator=g)
    ids[:, :prompt_len] = prompts.repeat_interleave(group_size, dim=0)
    lengths = prompt_len + torch.randint(min_response_len, max_response_len + 1, (rows,), generator=g)
    positions = torch.arange(width)[None, :]
    attention = (positions < lengths[:, None]).long()
    response = attention * (positions >= prompt_len).long()
    return TrainBatch(
        input_ids=ids * attention, attention_mask=attention, response_mask=response,
        advantages=torch.randn(rows, generator=g), group_ids=torch.arange(rows) // group_size,
    )
