"""`score(kind, response, ground_truth, **options)`: one response, one reward.

Where the work runs: code goes to the sandbox (a child process with its own limits) from this
process; math's equivalence check goes to a pool worker process (hard time limit, see
`rewards.batch`) unless this process *is* a pool worker; AIME answers are compared here.
"""

from __future__ import annotations

from typing import Any

from rewards import types as R
from rewards.code_reward import score_code
from rewards.batch import guarded_verify
from rewards.config import RewardConfig, resolve_config
from rewards.math_reward import score_aime, score_math, verify_inline
from rewards.types import RewardResult

# Set by rewards._worker in pool worker processes: there, math-verify runs inline.
IN_WORKER = False


def _verify(gold: str, pred: str, timeout_s: float, rel_tol: float | None = None) -> tuple[str, str]:
    if IN_WORKER:
        return verify_inline(gold, pred, timeout_s, rel_tol)
    return guarded_verify(gold, pred, timeout_s, rel_tol)


def score_with_config(kind: str, response: Any, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """`score` once options are resolved."""
    if not isinstance(response, str):
        return RewardResult(cfg.wrong_reward, False, None, R.NO_ANSWER, f"response is {type(response).__name__}, not str")
    if kind == "math":
        return score_math(response, ground_truth, cfg, verify=_verify)
    if kind == "aime":
        return score_aime(response, ground_truth, cfg)
    if kind == "code":
        return score_code(response, ground_truth, cfg)
    raise ValueError(f"kind must be one of {', '.join(R.KINDS)}, got {kind!r}")


def score(kind: str, response: Any, ground_truth: Any, **options: Any) -> RewardResult:
    """Score one response.

    kind: "math" (math-verify equivalence), "aime" (integer 0..999), "code" (sandboxed tests).
    options: `config=RewardConfig(...)` and/or any RewardConfig field as a keyword override.
    Raises ValueError only for a bad `kind` or bad options (caller bugs); anything about the
    response or the ground truth is a result with a reason.
    """
    if kind not in R.KINDS:
        raise ValueError(f"kind must be one of {', '.join(R.KINDS)}, got {kind!r}")
    return score_with_config(kind, response, ground_truth, resolve_config(options))
