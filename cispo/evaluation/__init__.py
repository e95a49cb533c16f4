"""Evaluation: metrics over k samples per problem (pure functions in `metrics`)."""

from cispo.evaluation.metrics import (
    EvalMetrics,
    MajorityVote,
    ProblemRow,
    ProblemSamples,
    avg_at_k,
    default_pass_ks,
    evaluate_samples,
    length_stats,
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
    truncation_rate,
)

__all__ = [
    "EvalMetrics",
    "MajorityVote",
    "ProblemRow",
    "ProblemSamples",
    "avg_at_k",
    "default_pass_ks",
    "evaluate_samples",
    "length_stats",
    "maj_at_k",
    "majority_vote",
    "mean_pass_at_k",
    "pass_at_k",
    "truncation_rate",
]
