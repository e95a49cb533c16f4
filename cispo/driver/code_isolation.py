"""The isolation a run's code rewards get, decided before any worker starts and recorded with the run.

A run whose data (training or evaluation) has a `code` row runs model-written programs: with
``reward.code_isolation=strict`` (the default) it refuses to start where the sandbox cannot isolate
them (`rewards.sandbox.SandboxUnavailableError`, one line saying what is missing), and otherwise every
metrics line carries the level it got (`reward/code_isolation`).
"""

from __future__ import annotations

import itertools

from rewards.config import RewardConfig
from rewards.sandbox import isolation_level

from cispo.data.loading import LoadedData

CODE_KIND = "code"
METRIC_KEY = "reward/code_isolation"
NO_CODE = "no code rewards"


def uses_code_rewards(data: LoadedData) -> bool:
    rows = itertools.chain(data.train, *data.eval.values())
    return any(row.reward_kind == CODE_KIND for row in rows)


def code_isolation(reward: RewardConfig, data: LoadedData) -> str:
    """`namespaces+cgroup`, `namespaces+rlimits`, `none`, or `no code rewards` when no row runs code.
    Raises SandboxUnavailableError when code runs and ``reward.code_isolation=strict`` cannot be met."""
    return isolation_level(reward) if uses_code_rewards(data) else NO_CODE
