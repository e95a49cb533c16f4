"""Diagnostics every policy loss reports.

The key one for MiniMax-M1's argument is ``dropped_token_frac``: the share of response tokens whose
policy gradient is exactly zero because clipping (PPO/GRPO/DAPO) or the trust-region mask removed
it, overall and among low-probability tokens (pi_old < 0.1), which are the "fork" tokens M1 says
PPO-style clipping silences. CISPO keeps it at 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_PROB_THRESHOLD = 0.1
ENTROPY_CHUNK_TOKENS = 1024


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    count = mask.sum()
    return float((values * mask).sum() / count) if count > 0 else 0.0


def entropy_from_logits(logits: Tensor, chunk_tokens: int = ENTROPY_CHUNK_TOKENS) -> Tensor:
    """Per-token entropy [batch, tokens] of softmax(logits), in chunks of tokens so the full-vocab
    softmax of the whole batch is never materialised at once (the OOM verl issue 456 hit)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], chunk_tokens):
        chunk = flat[start:start + chunk_tokens].float()
        log_p = torch.log_softmax(chunk, dim=-1)
        out[start:start + chunk_tokens] = -(log_p.exp() * log_p).sum(-1)
    return out.reshape(logits.shape[:-1])


@torch.no_grad()
def loss_diagnostics(
    *,
    ratio: Tensor,
    old_log_probs: Tensor,
    mask: Tensor,
    keeps_grad: Tensor,
    eps_low: float,
    eps_high: float,
    kl: Tensor | None = None,
    tis_weight: Tensor | None = None,
    logits: Tensor | None = None,
) -> dict[str, float]:
    mask = mask.to(ratio.dtype)
    n_tokens = mask.sum()
    dropped = (~keeps_grad).to(mask.dtype) * mask
    low_prob = (old_log_probs.exp() < LOW_PROB_THRESHOLD).to(mask.dtype) * mask
    metrics = {
        "n_tokens": float(n_tokens),
        "is_weight_mean": _masked_mean(ratio, mask),
        "is_weight_max": float(torch.where(mask > 0, ratio, torch.zeros_like(ratio)).max()) if n_tokens > 0 else 0.0,
        "is_clip_frac_high": _masked_mean((ratio > 1.0 + eps_high).to(mask.dtype), mask),
        "is_clip_frac_low": _masked_mean((ratio < 1.0 - eps_low).to(mask.dtype), mask),
        "dropped_token_frac": _masked_mean(dropped, mask),
        "dropped_token_frac_low_prob": float(dropped.mul(low_prob).sum() / low_prob.sum()) if low_prob.sum() > 0 else 0.0,
        "low_prob_token_frac": _masked_mean(low_prob, mask),
        # KL(pi_old || pi_theta) by the k3 estimator on samples of pi_old: r - 1 - log r.
        "approx_kl_old_new": _masked_mean(ratio - 1.0 - torch.log(ratio.clamp(min=1e-30)), mask),
    }
    if kl is not None:
        metrics["kl_ref"] = _masked_mean(kl, mask)
    if tis_weight is not None:
        metrics["tis_weight_mean"] = _masked_mean(tis_weight, mask)
    if logits is not None:
        metrics["entropy"] = _masked_mean(entropy_from_logits(logits.detach()).to(mask.dtype), mask)
    return metrics
