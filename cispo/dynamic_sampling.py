"""DAPO's dynamic sampling: keep prompt groups whose rewards vary, until the batch is full.

A group whose G responses all got the same reward has zero advantage everywhere and contributes
no gradient, so it only dilutes the batch. The collector keeps the informative groups across
generation rounds; when the round cap is hit the loop trains on what it has (verl issue 953 was a
crash there) and the ``shortfall`` is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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
