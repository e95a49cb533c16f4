"""Sequence packing: the rows of a micro-batch run as ONE row without padding, attention per sequence.

Right-padded [B, T] micro-batches spend forward/backward work on padding positions: with uneven
128-token responses ~19% of them (``actor/perf/padding_frac``, benchmarks/results/packing.md).
Packed, the micro-batch is the concatenation of its rows' real tokens, [1, L] with L = sum of the
row lengths, with position ids restarting at 0 for every row (RoPE sees the positions it sees
unpacked): embeddings, projections, MLPs and norms, nearly all of the work, run on real tokens only.

Attention must not cross rows. A block-diagonal causal [L, L] mask would do it, but SDPA computes
every masked score: for a 32-row micro-batch of 40-128-token responses, 271 ms a layer against 28
ms, and a forward slower than the padded one (12.1 vs 7.0 s; benchmarks/results/packing.md). So the
attention function ``cispo_packed_sdpa`` (registered with transformers' ``AttentionInterface``)
scatters the packed queries, keys and values back to a [B, heads, T, d] grid, runs ONE causal SDPA
call (rows are right-padded, so a real query only ever sees its own row's real keys) and gathers the
real positions back: the padded path's attention (the same hidden states, bit for bit, in that
benchmark), at its cost, a few % of the model's work at these lengths. One SDPA call per row (no
grid) measured faster still on CPU at SmolLM2's shapes (12 vs 28 ms a layer for 32 rows): a
candidate once A/B-tested end to end.
Called without the packing layout (any other caller of the model), it is plain ``sdpa``.

``PolicyModel`` maps the packed hidden states back to the [B, T] grid, so log-probs, entropy and the
loss are computed exactly as without packing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

ATTENTION = "cispo_packed_sdpa"
LAYOUT_KWARG = "cispo_packed_layout"


@dataclass(frozen=True)
class PackedRows:
    """A right-padded [B, T] micro-batch as one packed row.

    ``input_ids`` / ``position_ids``: [1, L], L = the number of real tokens, in row order;
    ``flat``: [L] position of each packed token in the flattened [B * T] grid; ``index``: [B, T]
    packed position of token (b, t), valid where ``t < length[b]`` (elsewhere clamped to a valid
    packed position and never used: the masks select real tokens only)."""

    input_ids: Tensor
    position_ids: Tensor
    flat: Tensor
    index: Tensor
    rows: int
    width: int


def pack_rows(input_ids: Tensor, attention_mask: Tensor) -> PackedRows:
    """Packs the real tokens (``attention_mask`` 1s, right-padded rows) in row order."""
    real = attention_mask.bool()
    rows, width = input_ids.shape
    lengths = real.sum(dim=1)
    starts = torch.cumsum(lengths, dim=0) - lengths
    positions = torch.arange(width, device=input_ids.device)
    total = int(lengths.sum())
    index = (starts[:, None] + positions[None, :]).clamp(max=max(total - 1, 0))
    return PackedRows(input_ids=input_ids[real][None, :], position_ids=positions.expand_as(input_ids)[real][None, :],
                      flat=real.reshape(-1).nonzero().squeeze(1), index=index, rows=rows, width=width)


def packed_sdpa_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                          attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs) -> tuple[Tensor, None]:
    """transformers attention function: packed q/k/v [1, heads, L, d] -> [1, L, heads, d], each
    row of ``kwargs[LAYOUT_KWARG]`` attending causally to itself only."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    layout: PackedRows | None = kwargs.pop(LAYOUT_KWARG, None)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    total = layout.flat.shape[0]
    if query.shape[0] != 1 or query.shape[2] != total or key.shape[2] != total:
        raise ValueError(f"packed attention expects one packed row of {total} tokens and no cache; got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}")
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("sequence packing does not support sliding-window attention layers")
    groups = getattr(module, "num_key_value_groups", 1)
    grid = [_to_grid(t, layout) for t in (query, repeat_kv(key, groups), repeat_kv(value, groups))]
    out = torch.nn.functional.scaled_dot_product_attention(*grid, dropout_p=dropout, scale=scaling,
                                                           is_causal=layout.width > 1)
    # [B, heads, T, d] -> the real positions, [1, L, heads, d] (the layout transformers expects back).
    heads, dim = out.shape[1], out.shape[3]
    return out.transpose(1, 2).reshape(layout.rows * layout.width, heads, dim)[layout.flat][None], None


def _to_grid(packed: Tensor, layout: PackedRows) -> Tensor:
    """[1, heads, L, d] packed -> [B, heads, T, d], zeros at the padding positions."""
    heads, dim = packed.shape[1], packed.shape[3]
    grid = packed.new_zeros(layout.rows * layout.width, heads, dim)
    grid = grid.index_copy(0, layout.flat, packed[0].transpose(0, 1))
    return grid.view(layout.rows, layout.width, heads, dim).transpose(1, 2)


def register_packed_attention() -> None:
    """Makes ``ATTENTION`` a valid ``attn_implementation`` (idempotent). Its mask function is
    SDPA's, so a call without the packing layout gets exactly what ``sdpa`` would."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def enable_packed_attention(model: nn.Module) -> None:
    """Switches a transformers model to ``ATTENTION`` (checked: decoder-only, no sliding window)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"trainer.sequence_packing needs a decoder-only model; {type(model).__name__} is not")
    if getattr(config, "use_sliding_window", False) or any(
            t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        raise ValueError(f"trainer.sequence_packing supports full-attention layers only; {type(model).__name__} "
                         "has sliding-window layers")
    register_packed_attention()
    model.set_attn_implementation(ATTENTION)
