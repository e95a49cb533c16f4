"""Repetition early stop (MiniMax-M1): end a response once K consecutive tokens each had p > threshold.

Two parts with one rule:
- `repetition_cut` is the rule itself, applied to the returned log-probs after generation. It is
  authoritative: it decides `finish_reason="repetition"` and where the response is cut.
- `rollout.repetition_processor.RepetitionStopProcessor` is a vLLM logits processor that saves the
  compute: as soon as the rule fires for a running request it forces a stop token at the next
  step, so vLLM stops generating. That forced token is not the policy's; `repetition_cut` removes it.

Both compare float32 log-probs with the same float32 threshold, so they agree on every token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Key in vLLM SamplingParams.extra_args: [window, prob].
EXTRA_ARG = "cispo_repetition"


def log_threshold(prob: float) -> np.float32:
    """The float32 log-prob a token must exceed to count as 'probability > prob'."""
    if not 0.0 < prob < 1.0:
        raise ValueError(f"repetition prob must be in (0, 1), got {prob}")
    return np.float32(math.log(prob))


def repetition_cut(logprobs: Sequence[float] | np.ndarray, window: int, prob: float) -> int | None:
    """Number of tokens to keep: up to and including the `window`-th consecutive token with
    probability > `prob`; None if the rule never fires (or `window` is 0, i.e. off)."""
    if window < 0:
        raise ValueError(f"repetition window must be >= 0, got {window}")
    threshold = log_threshold(prob)
    if window == 0:
        return None
    lp = np.asarray(logprobs, dtype=np.float32)
    if lp.size < window:
        return None
    high = lp > threshold
    idx = np.arange(lp.size)
    # Index of the last low-probability token at or before t (-1 if none): run length = t - that.
    last_low = np.maximum.accumulate(np.where(high, -1, idx))
    run = idx - last_low
    hits = np.flatnonzero(run >= window)
    return int(hits[0]) + 1 if hits.size else None


def parse_extra_arg(value: object) -> tuple[int, float]:
    """Validate the `[window, prob]` extra arg a request carries."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"extra_args[{EXTRA_ARG!r}] must be [window, prob], got {value!r}")
    window, prob = value
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"repetition window must be an int >= 1, got {window!r}")
    log_threshold(float(prob))
    return window, float(prob)
