"""Sampling + grading of an eval set: the one code path behind in-loop eval and ``cispo.eval``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from cispo.data import PromptConfig, PromptDataset, encode_prompts
from cispo.evaluation.metrics import EvalMetrics, ProblemSamples, evaluate_samples
from cispo.evaluation.scoring import score_rollouts
from rewards import RewardConfig
from rollout.config import SamplingConfig
from rollout.types import RolloutResult


class Generator(Protocol):
    def generate(self, prompts: Sequence[Any], sampling: SamplingConfig) -> list[RolloutResult]: ...


def evaluate_dataset(generator: Generator, tokenizer: Any, dataset: PromptDataset, *, prompt_cfg: PromptConfig,
                     sampling: SamplingConfig, reward_cfg: RewardConfig) -> EvalMetrics:
    """``sampling.n`` samples per problem; avg@k, pass@k, maj@k, lengths and the per-problem table."""
    rows = list(dataset.rows)
    if not rows:
        raise ValueError(f"eval set {dataset.name!r} has no rows")
    prompts = encode_prompts(tokenizer, rows, prompt_cfg)
    results = generator.generate(prompts, sampling)
    k = sampling.n
    if len(results) != len(rows) * k:
        raise RuntimeError(f"eval set {dataset.name!r}: expected {len(rows) * k} samples, got {len(results)}")
    per_sample_rows = [row for row in rows for _ in range(k)]
    # Grade correctness only: shaping terms never enter accuracy.
    grading = dataclasses.replace(reward_cfg, overlong_shaping=False)
    _, verdicts = score_rollouts(per_sample_rows, results, grading)
    problems = []
    for i, row in enumerate(rows):
        chunk = slice(i * k, (i + 1) * k)
        problems.append(ProblemSamples(
            id=row.id, gold=str(row.ground_truth) if row.reward_kind != "code" else "tests",
            correct=[v.correct for v in verdicts[chunk]], answers=[v.extracted for v in verdicts[chunk]],
            lengths=[r.num_tokens for r in results[chunk]], finish_reasons=[r.finish_reason for r in results[chunk]],
        ))
    return evaluate_samples(problems)
