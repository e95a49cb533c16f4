"""Resume that protects what a run is (issue 32): the guard's decisions on fake run folders, without Ray,
vLLM or DeepSpeed; the LR schedule after extending total_steps; the CLI's refusal."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cispo.checkpoint import CheckpointManager, write_text_atomic
from cispo.config import ConfigError, TrainConfig, load_config, to_dict
from cispo.config.identity import declared_keys, is_identity_key
from cispo.driver.resume_guard import (
    HISTORY_FILE,
    ResumeRefused,
    diff_configs,
    git_commit,
    plan_launch,
    read_history,
    record_launch,
)
from cispo.trainer.optim import WarmupSchedule, build_optimizer

ROOT = Path(__file__).resolve().parents[3]
FINISHED_STEPS, UNFINISHED_STEPS = 4, 2


def make_cfg(run_dir: Path, **overrides: Any) -> TrainConfig:
    data: dict[str, Any] = {"run_dir": str(run_dir), "total_steps": 4, "prompts_per_step": 2, "group_size": 2,
                            "eval": {"sets": ["arithmetic"]}, "trainer": {"mini_batch_size": 2}}
    for dotted, value in overrides.items():
        node = data
        *sections, key = dotted.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[key] = value
    return load_config(data)


def make_run_folder(run_dir: Path, last_step: int) -> TrainConfig:
    """A run folder as cispo.train leaves it after `last_step` steps: config.yaml (the same writer as
    open_run_folder), checkpoints by CheckpointManager, metrics.jsonl."""
    cfg = make_cfg(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    manager = CheckpointManager(run_dir, keep_last=2)
    for step in range(2, last_step + 1, 2):
        with manager.writing(step) as folder:
            (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
            (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    lines = [json.dumps({"step": s, "reward/mean": 0.1 * s}) for s in range(last_step + 1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return cfg


def folder_hashes(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


RUNS = {"finished": FINISHED_STEPS, "unfinished": UNFINISHED_STEPS}

IDENTITY_CHANGES = [
    {"algorithm.name": "dapo", "trainer.loss": "dapo"},
    {"trainer.eps_high": 2.0},
    {"model.path": "tiny-tied"},
    {"seed": 1},
    {"group_size": 4},
    {"prompts_per_step": 4},
    {"trainer.ppo_epochs": 2},
    {"data.train": [{"source": "arithmetic", "split": "train", "limit": 10}]},
    {"reward.correct_reward": 2.0},
    {"rollout.mode": "async", "algorithm.old_log_probs": "rollout"},
]

SAFE_CHANGES = [
    {"total_steps": 8},
    {"eval.every": 1},
    {"logger.console": False},
    {"checkpoint.save_every": 1},
    {"fault_tolerance.call_timeout_s": 900.0},
]


@pytest.mark.parametrize("kind", RUNS)
@pytest.mark.parametrize("change", IDENTITY_CHANGES, ids=lambda c: ",".join(c))
def test_an_identity_change_is_refused_and_the_folder_is_untouched(tmp_path: Path, kind: str,
                                                                   change: dict[str, Any]) -> None:
    run_dir = tmp_path / "run"
    make_run_folder(run_dir, RUNS[kind])
    before = folder_hashes(run_dir)
    with pytest.raises(ResumeRefused) as refused:
        plan_launch(make_cfg(run_dir, **change))
    message = str(refused.value)
    assert "\n" not in message and "new run_dir" in message and "checkpoint.allow_changes=[" in message
    for key in change:
        assert key in message
    assert folder_hashes(run_dir) == before


@pytest.mark.parametrize("kind", RUNS)
@pytest.mark.parametrize("change", SAFE_CHANGES, ids=lambda c: ",".join(c))
def test_a_safe_change_is_accepted_printed_and_recorded(tmp_path: Path, kind: str, change: dict[str, Any],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    make_run_folder(run_dir, RUNS[kind])
    with caplog.at_level(logging.WARNING):
        plan = plan_launch(make_cfg(run_dir, **change))
    (key, value), = change.items()
    blocks = [r.getMessage() for r in caplog.records if "changed key(s) (old -> new)" in r.getMessage()]
    assert len(blocks) == 1 and f"{key}: " in blocks[0] and json.dumps(value) in blocks[0]
    assert plan.resuming and plan.resume_step == RUNS[kind]
    record = record_launch(plan, commit="abc", now=1.0)
    assert read_history(run_dir) == [json.loads(json.dumps(record))]
    assert record["from_step"] == RUNS[kind] and record["commit"] == "abc" and record["resumed"]
    assert {"key": key, "old": record["changes"][0]["old"], "new": value, "identity": False} in record["changes"]
    assert record["allowed_identity_changes"] == []


@pytest.mark.parametrize("kind", RUNS)
def test_an_allowed_identity_change_is_recorded(tmp_path: Path, kind: str) -> None:
    run_dir = tmp_path / "run"
    make_run_folder(run_dir, RUNS[kind])
    cfg = make_cfg(run_dir, **{"trainer.eps_high": 2.0, "total_steps": 6,
                               "checkpoint.allow_changes": ["trainer.eps_high"]})
    record = record_launch(plan_launch(cfg), commit="abc", now=2.0)
    changes = {c["key"]: c for c in record["changes"]}
    assert changes["trainer.eps_high"] == {"key": "trainer.eps_high", "old": 4.0, "new": 2.0, "identity": True}
    assert changes["total_steps"]["identity"] is False
    assert record["allowed_identity_changes"] == ["trainer.eps_high"]
    assert read_history(run_dir)[-1]["from_step"] == RUNS[kind]


def test_allow_changes_does_not_cover_other_identity_keys(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run_folder(run_dir, FINISHED_STEPS)
    with pytest.raises(ResumeRefused, match="seed"):
        plan_launch(make_cfg(run_dir, seed=3, **{"checkpoint.allow_changes": ["trainer.eps_high"]}))


@pytest.mark.parametrize("key, message", [
    ("trainer.zero_stage", "not an identity key"),
    ("trainer.lr", "optimizer and LR-scheduler state restore it"),
])
def test_allow_changes_names_only_identity_keys_a_resume_can_use(tmp_path: Path, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_cfg(tmp_path, **{"checkpoint.allow_changes": [key]})


def test_a_fresh_run_and_resume_none_are_not_checked_and_a_fresh_launch_is_recorded(tmp_path: Path) -> None:
    fresh = plan_launch(make_cfg(tmp_path / "new", algorithm={"name": "dapo"}, **{"trainer.loss": "dapo"}))
    assert not fresh.resuming and not (tmp_path / "new").exists()
    record = record_launch(fresh, commit="abc", now=3.0)
    assert record["resumed"] is False and record["from_step"] is None and record["changes"] == []
    make_run_folder(tmp_path / "run", FINISHED_STEPS)
    over = plan_launch(make_cfg(tmp_path / "run", seed=5, **{"checkpoint.resume": "none"}))
    assert not over.resuming


def test_an_unchanged_relaunch_has_no_changes(tmp_path: Path) -> None:
    make_run_folder(tmp_path / "run", UNFINISHED_STEPS)
    plan = plan_launch(make_cfg(tmp_path / "run"))
    assert plan.resuming and plan.changes == []


def test_derived_keys_follow_their_source() -> None:
    old = to_dict(make_cfg(Path("r")))
    new = to_dict(make_cfg(Path("r"), group_size=4, checkpoint={"allow_changes": ["group_size"]}))
    changes = {c.key: c for c in diff_configs(old, new)}
    assert changes["group_size"].identity and not changes["trainer.batch_size"].identity
    assert changes["trainer.batch_size"].derived and changes["rollout.sampling.n"].derived


def test_every_declared_identity_key_is_a_key_of_the_config() -> None:
    flat_keys = set()

    def walk(node: Any, prefix: str) -> None:
        flat_keys.add(prefix.rstrip("."))
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")

    walk(to_dict(TrainConfig()), "")
    for key in declared_keys(TrainConfig):
        assert key in flat_keys, key
    assert is_identity_key("data.eval.aime.limit", TrainConfig) and not is_identity_key("eval.every", TrainConfig)


def test_git_commit_outside_a_checkout_is_none(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None


# ---- the LR schedule after extending total_steps: the original horizon is kept ----------------------


def _lrs(scheduler: torch.optim.lr_scheduler.LambdaLR, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_extending_total_steps_keeps_the_original_lr_horizon() -> None:
    base = make_cfg(Path("r"), **{"trainer.lr_schedule": "cosine", "trainer.min_lr_ratio": 0.1,
                                  "trainer.warmup_steps": 1}).trainer
    longer = make_cfg(Path("r"), total_steps=8, **{"trainer.lr_schedule": "cosine", "trainer.min_lr_ratio": 0.1,
                                                    "trainer.warmup_steps": 1}).trainer
    horizon = base.total_steps
    assert longer.total_steps == 2 * horizon
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, base)
    first = _lrs(scheduler, optimizer, horizon // 2)
    saved_opt, saved_sched = optimizer.state_dict(), scheduler.state_dict()

    optimizer2, scheduler2 = build_optimizer(torch.nn.Linear(2, 2), longer)  # the resumed, extended run
    optimizer2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    rest = _lrs(scheduler2, optimizer2, longer.total_steps - horizon // 2)

    planned = WarmupSchedule(base.warmup_steps, horizon, "cosine", 0.1)
    expected = [base.lr * planned(s) for s in range(longer.total_steps)]
    assert first + rest == pytest.approx(expected)
    assert rest[-(longer.total_steps - horizon):] == pytest.approx([0.1 * base.lr] * (longer.total_steps - horizon))


def test_the_resume_warns_when_a_cosine_tail_trains_at_min_lr(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    run_dir = tmp_path / "run"
    make_run_folder(run_dir, FINISHED_STEPS)
    with caplog.at_level(logging.WARNING):
        plan_launch(make_cfg(run_dir, total_steps=8))  # constant schedule: nothing to say
    assert not any("original horizon" in r.getMessage() for r in caplog.records)
    cfg = make_cfg(run_dir, total_steps=8)
    cfg.trainer.lr_schedule = "cosine"  # the saved run is constant; only the note is under test here
    from cispo.driver.resume_guard import schedule_note

    note = schedule_note(cfg, diff_configs(to_dict(make_cfg(run_dir)), to_dict(make_cfg(run_dir, total_steps=8))))
    assert note is not None and "original horizon" in note and "= 0" in note


# ---- the command line: refused before Ray starts ------------------------------------------------------------


def test_cli_refuses_an_identity_change_with_one_line_and_exit_2(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    make_run_folder(run_dir, FINISHED_STEPS)
    before = folder_hashes(run_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "cispo.train", "experiment=quick", f"run_dir={run_dir}",
                             "algorithm=dapo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    refusals = [line for line in output.splitlines() if "refusing to resume" in line]
    assert len(refusals) == 1 and "algorithm.name" in refusals[0]
    after = folder_hashes(run_dir)
    hydra_written = {k for k in after if k.startswith(".hydra/") or k == "train.log"}  # Hydra's, before our code
    assert {k: v for k, v in after.items() if k not in hydra_written} == before
    assert not (run_dir / HISTORY_FILE).exists() and not (run_dir / ".owner.lock").exists()
