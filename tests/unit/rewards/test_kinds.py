"""The registry of reward kinds: the built-in kinds are found by name, a kind of one's own is one
`register` call and reaches the pool's worker processes, and an unknown kind is refused in one line."""

from __future__ import annotations

import pytest

from rewards import kinds, score
from rewards.batch import RewardPool
from rewards.kinds import RewardKind

CUSTOM = RewardKind("exact_length", "tests.unit.rewards.custom_kind:score_exact_length")


@pytest.fixture
def custom_kind():
    kinds.register(CUSTOM)
    yield CUSTOM
    kinds._REGISTRY.pop(CUSTOM.name, None)


def test_the_built_in_kinds_are_registered():
    assert kinds.names()[:3] == ("math", "aime", "code")
    assert kinds.get("code").runs_code and not kinds.get("math").runs_code


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="kind must be one of math, aime, code, got 'nope'"):
        score("nope", "x", "y")
    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        RewardKind("bad", "no_colon_here").load()


def test_a_registered_kind_scores_here_and_in_the_pool_workers(custom_kind):
    assert score("exact_length", "abcd", 4).correct
    assert not score("exact_length", "abc", 4).correct
    with RewardPool(workers=1) as pool:
        results = pool.score_batch([("exact_length", "abcd", 4), ("exact_length", "ab", 4),
                                    ("math", "\\boxed{2}", "2")])
    assert [r.correct for r in results] == [True, False, True]
    assert [r.extracted for r in results[:2]] == ["4", "2"]
