"""A reward kind of a user's own, registered by import path in test_kinds.py (a module, so that the
pool's worker processes can import it too)."""

from __future__ import annotations

from typing import Any

from rewards.config import RewardConfig
from rewards.types import CORRECT, WRONG_ANSWER, RewardResult


def score_exact_length(response: str, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """Correct when the response has exactly `ground_truth` characters."""
    ok = len(response) == int(ground_truth)
    return RewardResult(cfg.correct_reward if ok else cfg.wrong_reward, ok, str(len(response)),
                        CORRECT if ok else WRONG_ANSWER)
