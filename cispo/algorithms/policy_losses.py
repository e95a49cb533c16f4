"""Policy losses: CISPO, GRPO (PPO-clip + KL), DAPO (clip-higher) and GSPO, as pure functions.

Each registered loss maps a typed :class:`LossInputs` to a :class:`TokenLoss`: the per-token loss
and which tokens keep a gradient. :func:`compute_policy_loss` adds what all of them share
(validation, truncated importance sampling, KL to a reference, aggregation, diagnostics).
Formulas and the papers behind them: ``docs/algorithms.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cispo.algorithms._checks import (
    broadcast_advantages,
    check_choice,
    check_finite,
    check_mask,
    check_nonnegative,
    check_positive,
    check_shape,
)
from cispo.algorithms.aggregation import AGGREGATIONS, aggregate
from cispo.algorithms.diagnostics import loss_diagnostics
from cispo.algorithms.kl import KL_ESTIMATORS, kl_penalty
from cispo.algorithms.options import CispoOptions, NoOptions, PPOClipOptions, parse_options


@dataclass(frozen=True)
class LossInputs:
    """Per-token tensors of shape [batch, tokens]; ``ratio`` = pi_theta / pi_old (with gradient)."""

    log_probs: Tensor
    old_log_probs: Tensor
    ratio: Tensor
    advantages: Tensor
    mask: Tensor
    eps_low: float
    eps_high: float
    options: Any = field(default_factory=NoOptions)
    """The loss's typed options (an instance of its class in :data:`LOSS_OPTIONS`)."""


@dataclass(frozen=True)
class TokenLoss:
    """``loss``: per-token loss to aggregate; ``keeps_grad``: tokens whose policy gradient survives
    clipping / trust-region masking (the rest are the "dropped" tokens of MiniMax-M1's argument)."""

    loss: Tensor
    keeps_grad: Tensor


PolicyLossFn = Callable[[LossInputs], TokenLoss]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}
DEFAULT_AGGREGATION: dict[str, str] = {}
LOSS_OPTIONS: dict[str, type] = {}
"""The typed options class of each loss (:mod:`cispo.algorithms.options`)."""


def register_policy_loss(name: str, *, default_agg: str, options: type = NoOptions):
    def wrap(fn: PolicyLossFn) -> PolicyLossFn:
        POLICY_LOSSES[name] = fn
        DEFAULT_AGGREGATION[name] = default_agg
        LOSS_OPTIONS[name] = options
        return fn

    return wrap


def _ppo_clip(x: LossInputs, ratio: Tensor) -> TokenLoss:
    """-min(r A, clip(r, 1-eps_low, 1+eps_high) A), with PPO's dual clip -c A bound for A < 0."""
    adv = x.advantages
    clipped_ratio = ratio.clamp(1.0 - x.eps_low, 1.0 + x.eps_high)
    unclipped_loss = -ratio * adv
    loss = torch.maximum(unclipped_loss, -clipped_ratio * adv)
    keeps_grad = unclipped_loss >= -clipped_ratio * adv
    dual_clip = getattr(x.options, "dual_clip", None)
    if dual_clip is not None:
        bound = -dual_clip * adv
        dual_active = (adv < 0) & (loss > bound)
        loss = torch.where(dual_active, bound, loss)
        keeps_grad = keeps_grad & ~dual_active
    return TokenLoss(loss=loss, keeps_grad=keeps_grad)


@register_policy_loss("cispo", default_agg="token-mean", options=CispoOptions)
def cispo_loss(x: LossInputs) -> TokenLoss:
    """MiniMax-M1 Eq. 4: -sg(clip(r, 1-eps_low, 1+eps_high)) * A * log pi.

    The clip bounds the stop-gradient weight, never the update: every token keeps gradient
    sg(w) * A. ``unified_mask=True`` adds Eq. 6-7's trust-region mask M (PPO's eps
    ``mask_eps_low``/``mask_eps_high``): tokens with A > 0 and r > 1 + mask_eps_high, or A < 0 and
    r < 1 - mask_eps_low, are zeroed.
    """
    weight = x.ratio.detach().clamp(1.0 - x.eps_low, 1.0 + x.eps_high)
    loss = -weight * x.advantages * x.log_probs
    keeps_grad = torch.ones_like(loss, dtype=torch.bool)
    opts: CispoOptions = x.options
    if opts.unified_mask:
        ratio = x.ratio.detach()
        outside = (((x.advantages > 0) & (ratio > 1.0 + opts.mask_eps_high))
                   | ((x.advantages < 0) & (ratio < 1.0 - opts.mask_eps_low)))
        keeps_grad = ~outside
        loss = loss * keeps_grad.to(loss.dtype)
    return TokenLoss(loss=loss, keeps_grad=keeps_grad)


def ppo_clip_loss(x: LossInputs) -> TokenLoss:
    """The per-token PPO clipped surrogate. GRPO (DeepSeekMath) and DAPO share this body; they differ
    in their presets: eps (0.2 vs clip-higher 0.2 / 0.28), aggregation (seq-mean-token-mean vs
    token-mean) and the KL term (GRPO's is added by :func:`compute_policy_loss`)."""
    return _ppo_clip(x, x.ratio)


register_policy_loss("grpo", default_agg="seq-mean-token-mean", options=PPOClipOptions)(ppo_clip_loss)
register_policy_loss("dapo", default_agg="token-mean", options=PPOClipOptions)(ppo_clip_loss)


@register_policy_loss("gspo", default_agg="seq-mean-token-mean")
def gspo_loss(x: LossInputs) -> TokenLoss:
    """GSPO (arXiv 2507.18071): the sequence-level ratio s_i = exp(mean_t log r_{i,t}) clipped at the
    sequence level, with the token-level form s_{i,t} = sg(s_i) * pi / sg(pi) so gradients reach tokens."""
    mask = x.mask.to(x.log_probs.dtype)
    log_ratio = (x.log_probs - x.old_log_probs) * mask
    seq_log_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)
    seq_ratio = torch.exp(seq_log_ratio.detach()).unsqueeze(-1)
    token_ratio = seq_ratio * torch.exp(x.log_probs - x.log_probs.detach())
    return _ppo_clip(x, token_ratio)


def compute_policy_loss(
    name: str,
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    agg: str | None = None,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    kl_clamp: float | None = None,
    rollout_log_probs: Tensor | None = None,
    tis_cap: float | None = None,
    normalizer: float | None = None,
    token_budget: float | None = None,
    group_ids: Tensor | None = None,
    logits: Tensor | None = None,
    **options: Any,
) -> tuple[Tensor, dict[str, float]]:
    """The policy loss of one (micro-)batch and its diagnostics.

    Args:
        name: a key of :data:`POLICY_LOSSES` (``cispo``, ``grpo``, ``dapo``, ``gspo``).
        log_probs: [batch, tokens] log pi_theta of the sampled tokens (carries the gradient).
        old_log_probs: [batch, tokens] log pi_old (the behaviour policy of the rollout batch).
        advantages: [batch] or [batch, tokens].
        mask: [batch, tokens] 0/1, 1 on response tokens that count.
        eps_low, eps_high: offsets from 1; the clip range is [1 - eps_low, 1 + eps_high] for every loss.
        agg: aggregation mode (see :func:`aggregate`); ``None`` = the loss's default.
        ref_log_probs, kl_coef, kl_estimator: KL(pi_theta || pi_ref) penalty added to the loss.
        kl_clamp: None (DeepSeekMath, TRL, slime) or verl's bound on k3 (10.0); see :mod:`.kl`.
        rollout_log_probs, tis_cap: truncated importance sampling (Yao et al. 2025): the loss of each
            token is multiplied by the detached min(pi_old / pi_rollout, tis_cap).
        normalizer, token_budget, group_ids: passed to :func:`aggregate`.
        logits: [batch, tokens, vocab], only for the entropy diagnostic.
        options: loss-specific (``cispo``: unified_mask, mask_eps_low, mask_eps_high;
            ``grpo``/``dapo``: dual_clip).
    """
    check_choice("name", name, POLICY_LOSSES)
    agg = DEFAULT_AGGREGATION[name] if agg is None else agg
    check_choice("agg", agg, AGGREGATIONS)
    check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    typed_options = parse_options(LOSS_OPTIONS[name], options, f"options of loss {name!r}")
    check_nonnegative("eps_low", eps_low)
    check_nonnegative("eps_high", eps_high)
    check_nonnegative("kl_coef", kl_coef)
    check_finite("log_probs", log_probs)
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs has shape {tuple(log_probs.shape)}; expected [batch, tokens]")
    shape = log_probs.shape
    for arg, tensor in (("old_log_probs", old_log_probs), ("ref_log_probs", ref_log_probs),
                        ("rollout_log_probs", rollout_log_probs)):
        if tensor is not None:
            check_finite(arg, tensor)
            check_shape(arg, tensor, shape, "same as log_probs")
    check_mask(mask, shape)
    advantages = broadcast_advantages(advantages, shape).to(log_probs.dtype)
    mask_f = mask.to(log_probs.dtype)
    old_log_probs = old_log_probs.to(log_probs.dtype)

    # Padding positions may hold arbitrary log-probs: zero the log-ratio there so exp() stays finite.
    log_ratio = torch.where(mask_f > 0, log_probs - old_log_probs, torch.zeros_like(log_probs))
    inputs = LossInputs(
        log_probs=log_probs, old_log_probs=old_log_probs, ratio=torch.exp(log_ratio),
        advantages=advantages, mask=mask_f, eps_low=float(eps_low), eps_high=float(eps_high),
        options=typed_options,
    )
    token_loss = POLICY_LOSSES[name](inputs)
    loss_mat = token_loss.loss

    tis_weight = None
    if rollout_log_probs is not None:
        if tis_cap is None:
            raise ValueError("tis_cap is required when rollout_log_probs is given (truncated IS cap C, commonly 2.0)")
        check_positive("tis_cap", tis_cap)
        tis_log = torch.where(mask_f > 0, old_log_probs - rollout_log_probs.to(log_probs.dtype), torch.zeros_like(log_probs))
        tis_weight = torch.exp(tis_log).clamp(max=tis_cap).detach()
        loss_mat = loss_mat * tis_weight

    kl = None
    if ref_log_probs is not None:
        kl = kl_penalty(log_probs, ref_log_probs.to(log_probs.dtype), kl_estimator, clamp=kl_clamp)
        if kl_coef > 0:
            loss_mat = loss_mat + kl_coef * kl
    elif kl_coef > 0:
        raise ValueError("kl_coef > 0 needs ref_log_probs (log-probs of the reference policy)")

    loss = aggregate(loss_mat, mask_f, agg, normalizer=normalizer, token_budget=token_budget, group_ids=group_ids)
    metrics = loss_diagnostics(
        ratio=inputs.ratio.detach(), old_log_probs=old_log_probs, mask=mask_f,
        keeps_grad=token_loss.keeps_grad, eps_low=eps_low, eps_high=eps_high,
        kl=None if kl is None else kl.detach(), tis_weight=tis_weight, logits=logits,
    )
    metrics["loss"] = float(loss.detach())
    return loss, metrics
