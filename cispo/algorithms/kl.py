"""Per-token KL estimators of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman's k1/k2/k3).

k3 is the one GRPO uses (DeepSeekMath Eq. 4): unbiased and always >= 0. Like verl we clamp the
log-ratio to +-20 and k3 to +-10 so a single outlier token cannot blow up the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cispo.algorithms._checks import check_choice

KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


def kl_penalty(log_probs: Tensor, ref_log_probs: Tensor, estimator: str = "k3") -> Tensor:
    check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    log_ratio = log_probs - ref_log_probs  # log pi_theta / pi_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    neg = (-log_ratio).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # log pi_ref / pi_theta
    return (torch.exp(neg) - neg - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
