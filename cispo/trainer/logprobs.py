"""Per-token log-probs (and entropy) of the response tokens, chunked over the vocabulary dimension.

The LM head runs only on the positions that predict a response token, ``chunk`` positions at a
time; with gradients, each chunk is recomputed in backward (activation checkpointing), so at most
one [chunk, vocab] logits block is alive at once: the full-vocabulary log-softmax of the whole
batch, the OOM other frameworks hit (verl 456), never exists.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cispo.trainer import comm
from cispo.trainer.packing import LAYOUT_KWARG, enable_packed_attention, pack_rows


class FP32Linear(nn.Linear):
    """An ``nn.Linear`` whose matmul runs in fp32 whatever the weight dtype (MiniMax-M1's fix for
    the trainer/rollout probability mismatch). Swapped in by class so parameter names, tying and
    ZeRO-3 hooks are untouched."""

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias)


def use_fp32_head(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear and type(head) is not FP32Linear:
        raise ValueError(f"trainer.lm_head_fp32 needs an nn.Linear LM head; {type(model).__name__} has "
                         f"{type(head).__name__}")
    head.__class__ = FP32Linear


def _chunk_log_probs(head: nn.Module, hidden: Tensor, targets: Tensor, with_entropy: bool
                     ) -> tuple[Tensor, Tensor]:
    logits = head(hidden).float()
    lse = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return log_probs, torch.zeros_like(lse).detach()
    with torch.no_grad():
        # H = logsumexp(z) - sum softmax(z) z, without a second [chunk, vocab] log-softmax buffer.
        entropy = lse.detach() - (torch.softmax(logits.detach(), dim=-1) * logits.detach()).sum(-1)
    return log_probs, entropy


def chunked_token_log_probs(head: nn.Module, hidden: Tensor, targets: Tensor, chunk: int, *,
                            with_entropy: bool = False, n_chunks: int | None = None
                            ) -> tuple[Tensor, Tensor | None]:
    """log softmax(head(hidden))[target] for [N, H] hidden states, as fp32 [N] (+ entropy [N]).

    ``n_chunks`` (>= ceil(N / chunk)) fixes how many times ``head`` runs; trailing chunks are
    empty. Under ZeRO-3 every head call all-gathers its weight, so all ranks must agree on it.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: expected >= 1 tokens per LM-head chunk")
    n = hidden.shape[0]
    needed = max(1, math.ceil(n / chunk))
    n_chunks = needed if n_chunks is None else n_chunks
    if n_chunks < needed:
        raise ValueError(f"n_chunks={n_chunks} cannot hold {n} tokens in chunks of {chunk}")
    recompute = torch.is_grad_enabled() and hidden.requires_grad and n_chunks > 1
    log_probs, entropies = [], []
    for i in range(n_chunks):
        h, t = hidden[i * chunk:(i + 1) * chunk], targets[i * chunk:(i + 1) * chunk]
        if recompute:
            lp, ent = checkpoint(_chunk_log_probs, head, h, t, with_entropy, use_reentrant=False)
        else:
            lp, ent = _chunk_log_probs(head, h, t, with_entropy)
        log_probs.append(lp)
        entropies.append(ent)
    return torch.cat(log_probs), (torch.cat(entropies) if with_entropy else None)


class PolicyModel(nn.Module):
    """A causal LM whose forward returns per-token log-probs [B, T] (fp32) of ``input_ids`` at the
    positions of ``response_mask`` (0 elsewhere), instead of [B, T, V] logits.

    This is the module DeepSpeed wraps, so under ZeRO-3 the body and head gather their parameters
    through their own forward hooks. State-dict keys carry the ``model.`` prefix of ``self.model``.

    ``packing``: the body runs on the rows' real tokens packed into one row, attention per row
    (cispo/trainer/packing.py); inputs and outputs keep the [B, T] layout.
    """

    def __init__(self, model: nn.Module, chunk: int, *, sync_chunks: bool = False, packing: bool = False):
        super().__init__()
        self.model = model
        self.chunk = chunk
        # ZeRO-3 with several ranks: agree on the number of LM-head calls (see chunked_token_log_probs).
        self.sync_chunks = sync_chunks
        self.packing = packing
        if packing:
            enable_packed_attention(model)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        # Position t-1 predicts token t: select the positions whose next token is a response token.
        select = response_mask[:, 1:].bool()
        n_chunks = max(1, math.ceil(int(select.sum()) / self.chunk))
        if self.sync_chunks:
            (n_chunks,) = comm.all_max(n_chunks)
        body = getattr(self.model, self.model.base_model_prefix)
        if self.packing and bool(attention_mask.any()):
            packed = pack_rows(input_ids, attention_mask)
            # An all-ones mask: transformers then builds no [L, L] mask; the layout keeps attention per row.
            hidden = body(input_ids=packed.input_ids, attention_mask=torch.ones_like(packed.input_ids),
                          position_ids=packed.position_ids, use_cache=False,
                          **{LAYOUT_KWARG: packed}).last_hidden_state[0]
            predicting = hidden[packed.index[:, :-1][select]]
        else:
            hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            predicting = hidden[:, :-1][select]
        log_probs, entropy = chunked_token_log_probs(
            self.model.get_output_embeddings(), predicting, input_ids[:, 1:][select],
            self.chunk, with_entropy=with_entropy, n_chunks=int(n_chunks))
        return _scatter(select, log_probs), (None if entropy is None else _scatter(select, entropy))


def _scatter(select: Tensor, values: Tensor) -> Tensor:
    """[N] values back to [B, T] (column 0 and unselected positions 0), keeping autograd."""
    rows, cols = select.shape
    out = torch.zeros(rows, cols, dtype=values.dtype, device=values.device).masked_scatter(select, values)
    return F.pad(out, (1, 0))
