"""The real worker groups and the loop tests' stand-ins both have what the loop calls (cispo/driver/handles.py)."""

from __future__ import annotations

import inspect

import pytest

from cispo.driver.handles import ChannelRollout, ChannelTrainer, RolloutHandle, TrainerHandle
from cispo.trainer.group import TrainerGroup
from rollout.group import RolloutGroup
from tests.unit.driver.test_loop_units import RecordingRollout, RecordingTrainer


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(protocol).items()
            if callable(member) and not name.startswith("_")}


def mismatches(cls: type, protocol: type) -> list[str]:
    """Methods of ``protocol`` that ``cls`` lacks, or whose positional parameters differ; extra
    parameters of ``cls`` are fine when they have defaults."""
    problems = []
    for name, wanted in protocol_methods(protocol).items():
        member = getattr(cls, name, None)
        if not callable(member):
            problems.append(f"{cls.__name__}.{name} is missing")
            continue
        have = list(inspect.signature(member).parameters.values())
        want = list(wanted.parameters.values())
        if [p.name for p in have[:len(want)]] != [p.name for p in want]:
            problems.append(f"{cls.__name__}.{name}{inspect.signature(member)} != {name}{wanted}")
        for extra in have[len(want):]:
            if extra.default is inspect.Parameter.empty and extra.kind not in (extra.VAR_POSITIONAL, extra.VAR_KEYWORD):
                problems.append(f"{cls.__name__}.{name}: required extra parameter {extra.name!r}")
    return problems


@pytest.mark.parametrize("cls,protocol", [(RolloutGroup, RolloutHandle), (RecordingRollout, RolloutHandle),
                                          (TrainerGroup, TrainerHandle), (RecordingTrainer, TrainerHandle),
                                          (TrainerGroup, ChannelTrainer), (RolloutGroup, ChannelRollout)])
def test_implementations_and_stand_ins_match_the_protocol(cls, protocol):
    assert not mismatches(cls, protocol)


def test_the_check_catches_a_drifted_stand_in():
    class Drifted:
        def compute_log_probs(self, rows): ...
        def update(self, batch, extra): ...

    problems = mismatches(Drifted, TrainerHandle)
    assert any("compute_log_probs" in p for p in problems)
    assert any("required extra parameter 'extra'" in p for p in problems)
    assert any("export_weights_ref is missing" in p for p in problems)
