"""DAPO's dynamic sampling: keep prompt groups whose rewards vary, until the batch is full.

A group whose G responses all got the same reward has zero advantage everywhere and contributes
no gradient, so it only dilutes the batch. The collector keeps the informative groups across
generation rounds; when the round cap is hit the loop trains on what it has (verl issue 953 was a
crash there) and the ``shortfall`` is logged.

How many prompts a round draws: with ``refill_sizing=keep_rate`` each round is sized from the keep
rate observed so far (this step's rounds plus a decayed memory of past steps, saved with the
checkpoint), so that one round is expected to fill the batch with margin; one large round is much
cheaper than several small ones (a generation batch is mostly fixed cost on CPU, and each round
pays the engine's start-up latency). ``oversample`` is the older rule (missing x factor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

G = TypeVar("G")


def has_reward_variance(rewards: Sequence[float], tol: float = 0.0) -> bool:
    return len(rewards) > 1 and (max(rewards) - min(rewards)) > tol


@dataclass
class GroupCollector(Generic[G]):
    """Accumulates groups (any object) with their rewards until ``target_groups`` are kept."""

    target_groups: int
    filter_zero_variance: bool
    kept: list[G] = field(default_factory=list)
    seen: int = 0
    dropped_zero_variance: int = 0
    rounds: int = 0

    def __post_init__(self) -> None:
        if self.target_groups < 1:
            raise ValueError(f"target_groups={self.target_groups} must be >= 1")

    @property
    def informative(self) -> int:
        """Groups seen that had reward variance (kept or not: a full batch drops the surplus)."""
        return self.seen - self.dropped_zero_variance

    def add(self, groups: Sequence[G], rewards: Sequence[Sequence[float]]) -> None:
        if len(groups) != len(rewards):
            raise ValueError(f"{len(groups)} groups but {len(rewards)} reward lists")
        self.rounds += 1
        for group, group_rewards in zip(groups, rewards):
            self.seen += 1
            if self.filter_zero_variance and not has_reward_variance(group_rewards):
                self.dropped_zero_variance += 1
                continue
            if len(self.kept) < self.target_groups:
                self.kept.append(group)

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.target_groups

    @property
    def missing(self) -> int:
        return max(0, self.target_groups - len(self.kept))

    def metrics(self) -> dict[str, float]:
        return {
            "dynamic_sampling/rounds": float(self.rounds),
            "dynamic_sampling/groups_seen": float(self.seen),
            "dynamic_sampling/groups_kept": float(len(self.kept)),
            "dynamic_sampling/dropped_zero_variance": float(self.dropped_zero_variance),
            "dynamic_sampling/shortfall": float(self.missing),
        }


@dataclass
class KeepRateEstimate:
    """Running estimate of the fraction of generated groups with reward variance.

    Counts are pooled within a step; at the end of a step both are multiplied by ``memory`` so past
    steps fade as the policy (and with it the share of all-correct groups) changes. With no
    observation yet the rate is 1 (round 0 of the first step draws ``prompts_per_step``, as GRPO).
    """

    memory: float
    seen: float = 0.0
    informative: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.memory <= 1.0:
            raise ValueError(f"keep-rate memory={self.memory}: expected a number in [0, 1]")

    @property
    def rate(self) -> float:
        return self.informative / self.seen if self.seen > 0 else 1.0

    def observe(self, seen: int, informative: int) -> None:
        if not 0 <= informative <= seen:
            raise ValueError(f"observed {informative} informative groups out of {seen}: expected 0 <= informative <= seen")
        self.seen += seen
        self.informative += informative

    def end_step(self) -> None:
        self.seen *= self.memory
        self.informative *= self.memory

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "informative": self.informative}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen, self.informative = float(state["seen"]), float(state["informative"])


def prompts_for_keep_rate(missing: int, rate: float, z: float, cap: int) -> int:
    """Fewest prompts n whose informative-group count, Binomial(n, rate), reaches ``missing`` at ``z``
    standard deviations below its mean: n p - z sqrt(n p (1 - p)) >= missing. With x = sqrt(n) this is
    the quadratic p x^2 - z s x - missing = 0, s = sqrt(p (1 - p)); n = ceil(x^2), at most ``cap``.
    p = 1 gives n = missing; p = 0 (nothing informative yet) gives the cap."""
    if missing <= 0:
        return 0
    if cap < 1:
        raise ValueError(f"cap={cap}: expected >= 1")
    if rate <= 0.0:
        return cap
    p = min(rate, 1.0)
    s = math.sqrt(p * (1.0 - p))
    x = (z * s + math.sqrt((z * s) ** 2 + 4.0 * p * missing)) / (2.0 * p)
    # Round away float noise before ceil (p = 0.5, missing = 10, z = 1 is exactly 25.0).
    n = math.ceil(round(x * x, 9))
    return max(missing, min(cap, n))


def round_size(round_index: int, missing: int, target: int, *, sizing: str, estimate: KeepRateEstimate,
               oversample: float, z: float, cap: int) -> int:
    """Prompts to draw in generation round ``round_index`` with ``missing`` groups still to keep.

    ``oversample``: round 0 draws ``target``, later rounds ``ceil(missing x oversample)`` (the rule
    before keep-rate sizing; no cap). ``keep_rate``: :func:`prompts_for_keep_rate` at the current
    estimate, never fewer than ``missing``, at most ``cap``."""
    if sizing == "oversample":
        return target if round_index == 0 else math.ceil(missing * oversample)
    if sizing == "keep_rate":
        return prompts_for_keep_rate(missing, estimate.rate, z, cap)
    raise ValueError(f"refill sizing {sizing!r}: expected 'keep_rate' or 'oversample'")
