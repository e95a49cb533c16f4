"""Scores rollouts with the verifiable rewards, plus DAPO's overlong shaping."""

from __future__ import annotations

from collections.abc import Sequence

from cispo.data import PromptRow
from rewards import RewardConfig, RewardResult, overlong_penalty, score_batch
from rollout.types import RolloutResult


def score_rollouts(rows: Sequence[PromptRow], results: Sequence[RolloutResult], cfg: RewardConfig,
                   *, workers: int | None = None) -> tuple[list[float], list[RewardResult]]:
    """``rows[i]`` is the problem of ``results[i]``. Returns the shaped reward of each response and
    the raw verdicts (for accuracy and the per-reason counts)."""
    items = [{"kind": row.reward_kind, "response": res.text, "ground_truth": row.ground_truth}
             for row, res in zip(rows, results, strict=True)]
    verdicts = score_batch(items, config=cfg, workers=workers)
    rewards = [v.score for v in verdicts]
    if cfg.overlong_shaping:
        rewards = [r + overlong_penalty(res.num_tokens, cfg.overlong_max_len, cfg.overlong_cache_len)
                   for r, res in zip(rewards, results)]
    return rewards, verdicts
