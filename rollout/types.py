"""What one rollout returns per response (the contract with rewards and the trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FINISH_REASONS = ("stop", "length", "repetition")


@dataclass
class RolloutResult:
    """One sampled response.

    `logprobs[t]` is log pi(response_ids[t] | prompt, response[:t]) under the raw policy
    (float32). Responses stopped by a stop string keep the tokens that produced it (the text
    does not); a response stopped by EOS ends with the EOS id.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: np.ndarray
    finish_reason: str
    group_id: int
    text: str
    sample_index: int = 0
    # Tokens dropped from the left of the prompt (EngineConfig.prompt_overflow="truncate_left").
    prompt_truncated_tokens: int = 0
    stop_reason: str | int | None = field(default=None)

    def __post_init__(self) -> None:
        self.logprobs = np.asarray(self.logprobs, dtype=np.float32)
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if len(self.logprobs) != len(self.response_ids):
            raise ValueError(
                f"logprobs has {len(self.logprobs)} entries for {len(self.response_ids)} response tokens"
            )

    @property
    def num_tokens(self) -> int:
        return len(self.response_ids)
