"""Per-token KL estimators of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman's k1/k2/k3).

k3 is the one GRPO uses (DeepSeekMath Eq. 4): exp(ref - logp) - (ref - logp) - 1, unbiased and
always >= 0. DeepSeekMath, TRL and slime apply it unclamped, and so do we by default. verl clamps
the log-ratio to +-20 and k3 to +-10: ``clamp`` reproduces that. Where such a clamp binds, exactly the
most-diverged tokens lose their KL gradient, which is why it is off unless asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cispo.algorithms._checks import check_choice, check_positive

KL_ESTIMATORS = ("k1", "k2", "k3")
VERL_LOG_RATIO_CLAMP = 20.0
"""verl's bound on |log pi_ref / pi_theta| inside k3, applied together with ``clamp``."""


def kl_penalty(log_probs: Tensor, ref_log_probs: Tensor, estimator: str = "k3", *,
               clamp: float | None = None) -> Tensor:
    """Per-token KL estimate; ``clamp`` (k3 only) bounds k3 to [-clamp, clamp] as verl does (10.0)."""
    check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    log_ratio = log_probs - ref_log_probs  # log pi_theta / pi_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    neg = -log_ratio  # log pi_ref / pi_theta
    if clamp is None:
        return torch.exp(neg) - neg - 1.0
    check_positive("kl_clamp", clamp)
    neg = neg.clamp(-VERL_LOG_RATIO_CLAMP, VERL_LOG_RATIO_CLAMP)
    return (torch.exp(neg) - neg - 1.0).clamp(-clamp, clamp)
