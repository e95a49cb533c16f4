"""`score(kind, response, ground_truth, **options)`: one response, one reward.

Where the work runs: code goes to the sandbox (a child process with its own limits) from this
process; math's equivalence check goes to a pool worker process (hard time limit, see
`rewards.batch`) unless this process *is* a pool worker; AIME answers are compared here.
"""

from __future__ import annotations

from typing import Any

from rewards import kinds
from rewards import types as R
from rewards.batch import guarded_verify
from rewards.config import RewardConfig, resolve_config
from rewards.math_reward import score_math, verify_inline
from rewards.types import RewardResult

# Set by rewards._worker in pool worker processes: there, math-verify runs inline.
IN_WORKER = False


def _verify(gold: str, pred: str, timeout_s: float, rel_tol: float | None = None) -> tuple[str, str]:
    if IN_WORKER:
        return verify_inline(gold, pred, timeout_s, rel_tol)
    return guarded_verify(gold, pred, timeout_s, rel_tol)


def score_math_response(response: str, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """The ``math`` kind's scorer: math-verify inline in a pool worker, else under a hard time limit."""
    return score_math(response, ground_truth, cfg, verify=_verify)


def score_with_config(kind: str, response: Any, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """`score` once options are resolved: the kind's scorer from the registry (`rewards.kinds`)."""
    scorer = kinds.get(kind).load()
    if not isinstance(response, str):
        return RewardResult(cfg.wrong_reward, False, None, R.NO_ANSWER, f"response is {type(response).__name__}, not str")
    return scorer(response, ground_truth, cfg)


def score(kind: str, response: Any, ground_truth: Any, **options: Any) -> RewardResult:
    """Score one response.

    kind: "math" (math-verify equivalence), "aime" (integer 0..999), "code" (sandboxed tests), or a
    kind registered with `rewards.kinds.register`.
    options: `config=RewardConfig(...)` and/or any RewardConfig field as a keyword override.
    Raises ValueError only for a bad `kind` or bad options (caller bugs); anything about the
    response or the ground truth is a result with a reason.
    """
    kinds.get(kind)  # a bad kind is a caller bug: ValueError before the options are resolved
    return score_with_config(kind, response, ground_truth, resolve_config(options))
