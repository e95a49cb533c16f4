"""The math of the project: policy losses, advantages, KL estimators, aggregation, diagnostics.

Pure torch, no I/O: tensors in, tensors out. See ``REFERENCES.md`` for the formulas.
"""

from cispo.algorithms.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from cispo.algorithms.aggregation import AGGREGATIONS, aggregate, aggregation_count
from cispo.algorithms.diagnostics import entropy_from_logits
from cispo.algorithms.kl import KL_ESTIMATORS, kl_penalty
from cispo.algorithms.policy_losses import (
    DEFAULT_AGGREGATION,
    POLICY_LOSSES,
    LossInputs,
    TokenLoss,
    compute_policy_loss,
    register_policy_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "DEFAULT_AGGREGATION", "KL_ESTIMATORS", "POLICY_LOSSES",
    "LossInputs", "TokenLoss", "aggregate", "aggregation_count", "compute_advantages",
    "compute_policy_loss", "entropy_from_logits", "kl_penalty", "register_policy_loss",
]
