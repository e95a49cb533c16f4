"""Verifiable rewards: math answers (math-verify) and sandboxed code, safe against hostile output.

Public API (a contract, docs/architecture.md): `score(kind, response, ground_truth, **options)` and
`score_batch(items, *, workers=None)` returning `RewardResult(score, correct, extracted, reason)`.
Imports nothing from `cispo/` or `rollout/`.
"""

from rewards.batch import RewardPool, score_batch, shared_pool
from rewards.config import DEFAULT_CONFIG, RewardConfig
from rewards.scoring import score
from rewards.shaping import apply_overlong_shaping, overlong_keep_mask, overlong_penalty
from rewards.types import KINDS, REASONS, RewardResult

__all__ = [
    "score",
    "score_batch",
    "RewardResult",
    "RewardConfig",
    "DEFAULT_CONFIG",
    "RewardPool",
    "shared_pool",
    "overlong_penalty",
    "apply_overlong_shaping",
    "overlong_keep_mask",
    "KINDS",
    "REASONS",
]
