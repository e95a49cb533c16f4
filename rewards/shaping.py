"""DAPO's overlong handling: soft punishment (a shaping term) and overlong filtering (a mask)."""

from __future__ import annotations

from typing import Sequence

from rewards.config import RewardConfig

TRUNCATED = "length"  # finish reason of a response cut at the token limit


def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO soft overlong punishment for a response of `length` tokens.

    0 when length <= max_len - cache_len; ((max_len - cache_len) - length) / cache_len in the
    cache window (linear from 0 down to -1); -1 beyond max_len.
    """
    for name, value in (("length", length), ("max_len", max_len), ("cache_len", cache_len)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"overlong_penalty: {name} must be an int, got {value!r}")
    if length < 0:
        raise ValueError(f"overlong_penalty: length must be >= 0, got {length}")
    if max_len <= 0 or not 0 <= cache_len <= max_len:
        raise ValueError(f"overlong_penalty: need max_len > 0 and 0 <= cache_len <= max_len, got {max_len}, {cache_len}")
    free = max_len - cache_len
    if length <= free:
        return 0.0
    if length > max_len:
        return -1.0
    return (free - length) / cache_len


def apply_overlong_shaping(scores: Sequence[float], lengths: Sequence[int], cfg: RewardConfig) -> list[float]:
    """Scores plus the overlong penalty of each response's length (unchanged when shaping is off)."""
    if len(scores) != len(lengths):
        raise ValueError(f"apply_overlong_shaping: {len(scores)} scores but {len(lengths)} lengths")
    if not cfg.overlong_shaping:
        return [float(s) for s in scores]
    return [
        float(s) + overlong_penalty(int(n), cfg.overlong_max_len, cfg.overlong_cache_len)
        for s, n in zip(scores, lengths)
    ]


def overlong_keep_mask(finish_reasons: Sequence[str], cfg: RewardConfig) -> list[bool]:
    """Which responses keep their loss: with `overlong_filtering`, truncated ones are masked out."""
    if not cfg.overlong_filtering:
        return [True] * len(finish_reasons)
    return [reason != TRUNCATED for reason in finish_reasons]
