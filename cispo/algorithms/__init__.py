"""The math of the project: policy losses, advantages, KL estimators, aggregation, diagnostics.

Pure torch, no I/O: tensors in, tensors out. The formulas: ``docs/algorithms.md``.
"""

from cispo.algorithms.advantages import ADVANTAGE_ESTIMATORS, ADVANTAGE_OPTIONS, compute_advantages
from cispo.algorithms.aggregation import AGGREGATIONS, aggregate, aggregation_count
from cispo.algorithms.diagnostics import entropy_from_logits
from cispo.algorithms.kl import KL_ESTIMATORS, kl_penalty
from cispo.algorithms.options import CispoOptions, GrpoAdvantageOptions, NoOptions, PPOClipOptions, parse_options
from cispo.algorithms.policy_losses import (
    DEFAULT_AGGREGATION,
    LOSS_OPTIONS,
    POLICY_LOSSES,
    LossInputs,
    TokenLoss,
    compute_policy_loss,
    register_policy_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "ADVANTAGE_OPTIONS", "LOSS_OPTIONS", "CispoOptions", "GrpoAdvantageOptions",
    "NoOptions", "PPOClipOptions", "parse_options", "AGGREGATIONS", "DEFAULT_AGGREGATION", "KL_ESTIMATORS", "POLICY_LOSSES",
    "LossInputs", "TokenLoss", "aggregate", "aggregation_count", "compute_advantages",
    "compute_policy_loss", "entropy_from_logits", "kl_penalty", "register_policy_loss",
]
