"""A run with code rewards refuses to start where the sandbox cannot isolate them, and records the
level it got; a run without code never probes."""

from __future__ import annotations

import pytest

from cispo.data.loading import LoadedData
from cispo.data.types import PromptDataset, PromptRow
from cispo.driver.code_isolation import NO_CODE, code_isolation, uses_code_rewards
from rewards import sandbox
from rewards.config import RewardConfig


def data(train_kind: str, eval_kind: str = "math") -> LoadedData:
    def row(kind: str, i: int) -> PromptRow:
        truth = {"asserts": ["assert f() == 1"]} if kind == "code" else "1"
        return PromptRow(prompt="p", ground_truth=truth, reward_kind=kind, data_source="t", id=str(i))

    train = PromptDataset("train", "t", None, [row(train_kind, 0)], 1)
    held = PromptDataset("held", "t", None, [row(eval_kind, 1)], 1)
    return LoadedData(train=list(train), train_parts=[train], eval={"held": held})


@pytest.fixture
def no_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "UNSHARE", "/bin/false")
    monkeypatch.setattr(sandbox, "_probe_cache", {})


def test_code_in_training_or_evaluation_counts():
    assert not uses_code_rewards(data("math"))
    assert uses_code_rewards(data("code")) and uses_code_rewards(data("math", eval_kind="code"))


def test_math_only_runs_never_probe_the_sandbox(no_namespaces):
    assert code_isolation(RewardConfig(), data("math")) == NO_CODE


def test_strict_refuses_to_start_without_namespaces(no_namespaces):
    with pytest.raises(sandbox.SandboxUnavailableError, match="code sandbox unavailable.*code_isolation=none"):
        code_isolation(RewardConfig(), data("math", eval_kind="code"))


def test_none_runs_and_records_the_plain_level(no_namespaces):
    assert code_isolation(RewardConfig(code_isolation="none"), data("code")) == "none"


def test_this_machine_isolates_code():
    assert code_isolation(RewardConfig(), data("code")) in ("namespaces+cgroup", "namespaces+rlimits")
