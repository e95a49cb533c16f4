"""Names and values of the per-step metrics (the keys ``cispo.compare`` reads)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from cispo.evaluation.metrics import EvalMetrics
from rewards import RewardResult
from rollout.types import RolloutResult


def rollout_metrics(results: Sequence[RolloutResult], rewards: Sequence[float],
                    verdicts: Sequence[RewardResult]) -> dict[str, float]:
    """Over every generated response of the step (before dynamic sampling dropped any)."""
    n = len(results)
    if n == 0:
        return {}
    lengths = [r.num_tokens for r in results]
    mean_reward = sum(rewards) / n
    out = {
        "reward/mean": mean_reward,
        "reward/std": (sum((x - mean_reward) ** 2 for x in rewards) / n) ** 0.5,
        "reward/accuracy": sum(v.correct for v in verdicts) / n,
        "response_length/mean": sum(lengths) / n,
        "response_length/max": float(max(lengths)),
        "response_length/truncated_frac": sum(r.finish_reason == "length" for r in results) / n,
        "response_length/repetition_stop_frac": sum(r.finish_reason == "repetition" for r in results) / n,
        "rollout/responses": float(n),
        "rollout/tokens": float(sum(lengths)),
    }
    for reason, count in Counter(v.reason for v in verdicts).items():
        out[f"reward/reason/{reason}"] = count / n
    return out


def eval_metrics(per_set: Mapping[str, EvalMetrics]) -> dict[str, float]:
    return {f"eval/{name}/{key}": value for name, m in per_set.items() for key, value in m.flat().items()}
