"""The registry of reward kinds: a kind's name -> the function that scores one response of it.

`score`, `score_batch` and the pool workers find a kind's scorer here, so a new kind (a reward of
one's own) is one `register` call, not a branch in every place that dispatches on the name. The
scorer is named by import path (``"package.module:function"``) and imported where the scoring runs:
a pool worker is another process, and it can import a module where it cannot receive a function.
Register at import time of a module that both this process and the workers import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from rewards.config import RewardConfig
from rewards.types import RewardResult

Scorer = Callable[[str, Any, RewardConfig], RewardResult]
"""scorer(response, ground_truth, cfg) -> RewardResult; never raises on model output."""


@dataclass(frozen=True)
class RewardKind:
    name: str
    scorer: str
    """Import path of the scorer, ``"package.module:function"``."""
    runs_code: bool = False
    """True when scoring runs the response as a program (its time limit is the code limits', and the
    pool gives its task the code deadline)."""

    def load(self) -> Scorer:
        return _import(self.scorer)


@cache
def _import(path: str) -> Scorer:
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"reward scorer {path!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, RewardKind] = {}


def register(kind: RewardKind) -> None:
    """Add (or replace) a kind."""
    _REGISTRY[kind.name] = kind


def get(name: str) -> RewardKind:
    """The kind called `name`; ValueError naming the known kinds otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"kind must be one of {', '.join(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


for _kind in (RewardKind("math", "rewards.scoring:score_math_response"),
              RewardKind("aime", "rewards.math_reward:score_aime"),
              RewardKind("code", "rewards.code_reward:score_code", runs_code=True)):
    register(_kind)
