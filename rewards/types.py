"""Result type and reason codes shared by every reward kind.

Rewards never raise into the training loop: every outcome, including a failure of the
scoring machinery itself, is a `RewardResult` whose `reason` says what happened.
"""

from __future__ import annotations

from dataclasses import dataclass

# Reason codes (stable strings: they end up in metrics and logs).
CORRECT = "correct"
WRONG_ANSWER = "wrong_answer"
NO_ANSWER = "no_answer"
TIMEOUT = "timeout"
RUNTIME_ERROR = "runtime_error"
COMPILE_ERROR = "compile_error"
MEMORY = "memory"
OUTPUT_LIMIT = "output_limit"
BAD_GROUND_TRUTH = "bad_ground_truth"
INVALID_ITEM = "invalid_item"
SANDBOX_ERROR = "sandbox_error"
INTERNAL_ERROR = "internal_error"
MULTIPLE_ANSWERS = "multiple_answers"  # math: hedged or several differing final answers

REASONS = (
    CORRECT,
    WRONG_ANSWER,
    NO_ANSWER,
    TIMEOUT,
    RUNTIME_ERROR,
    COMPILE_ERROR,
    MEMORY,
    OUTPUT_LIMIT,
    BAD_GROUND_TRUTH,
    INVALID_ITEM,
    SANDBOX_ERROR,
    INTERNAL_ERROR,
    MULTIPLE_ANSWERS,
)

KINDS = ("math", "aime", "code")


@dataclass(frozen=True)
class RewardResult:
    """Outcome of scoring one response.

    `score` is the reward value (already mapped through the configured correct/wrong/format
    values); `correct` is the verdict; `extracted` is the answer or program taken from the
    response (None when nothing could be extracted); `reason` is one of `REASONS`; `detail`
    is free text for logs (e.g. which test failed), never used for decisions.
    """

    score: float
    correct: bool
    extracted: str | None
    reason: str
    detail: str = ""
