"""Resume that protects what a run is: the new config against the run folder's saved one.

Before anything starts (before the run lock, Ray or any worker, and before ``config.yaml`` is rewritten)
`plan_launch` compares the resolved config with ``<run_dir>/config.yaml`` of a run folder that has
checkpoints. Identity keys (declared in the schemas, `cispo.config.identity`) refuse to change unless
``checkpoint.allow_changes`` names them: `ResumeRefused`, one line, nothing in the folder touched. Other
changes (total_steps, eval cadence, logging, checkpoint cadence, timeouts) are printed as one block and
allowed. `record_launch` then appends one line per launch to ``<run_dir>/config_history.jsonl`` (time,
git commit, the changes, the step resumed from), which ``cispo.compare`` reads.

Plain functions over mappings and paths: testable without Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cispo.checkpoint import CHECKPOINTS_DIRNAME, LATEST_NAME
from cispo.checkpoint.layout import parse_step
from cispo.config import DERIVED_KEYS, ConfigError, TrainConfig, to_dict
from cispo.config.identity import is_identity_key, is_restored_on_resume
from cispo.tracking.run_files import CONFIG_FILENAME as CONFIG_FILE
from cispo.tracking.run_files import HISTORY_FILENAME as HISTORY_FILE

log = logging.getLogger(__name__)

ABSENT = "(absent)"
RESUME_NONE = "none"
GIT_TIMEOUT_S = 5.0
REFUSAL_VALUE_CHARS = 60  # values in the one-line refusal are cut here; the diff block shows them whole
HORIZON_KEY = "trainer.total_steps"  # the LR schedule's length in optimizer steps (derived from total_steps)
CONSTANT_SCHEDULE = "constant"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ResumeRefused(ConfigError):
    """A resume that would change what the run is; the message is one line naming the keys."""


@dataclass(frozen=True)
class Change:
    """One key whose value differs between the saved and the new config."""

    key: str
    old: Any
    new: Any
    identity: bool
    derived: bool = False

    def describe(self, limit: int | None = None) -> str:
        return f"{self.key}: {_show(self.old, limit)} -> {_show(self.new, limit)}"

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "old": self.old, "new": self.new, "identity": self.identity}


@dataclass(frozen=True)
class LaunchPlan:
    """What a launch will do to the run folder: resume (from `resume_step`) with `changes`, or start fresh."""

    run_dir: Path
    resuming: bool
    resume_step: int | None = None
    changes: list[Change] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)


def _show(value: Any, limit: int | None = None) -> str:
    text = ABSENT if value is ABSENT else json.dumps(value, default=str)
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


# ---- the diff ---------------------------------------------------------------------------------------


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[Change]:
    """Every leaf key that differs, dotted; mappings are compared key by key, lists as whole values."""
    changes: list[Change] = []
    for key in sorted(set(old) | set(new), key=str):
        dotted = f"{prefix}{key}"
        a, b = old.get(key, ABSENT), new.get(key, ABSENT)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += diff_configs(a, b, dotted + ".")
        elif a != b:
            derived = dotted in DERIVED_KEYS  # follows its source key, which is classified itself
            changes.append(Change(dotted, a, b, identity=not derived and is_identity_key(dotted, TrainConfig),
                                  derived=derived))
    return changes


def _allowed_by(key: str, allowed: list[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allowed)


def refused_changes(changes: list[Change], allowed: list[str]) -> list[Change]:
    """The identity changes ``checkpoint.allow_changes`` does not permit."""
    return [c for c in changes if c.identity and not _allowed_by(c.key, allowed)]


def refusal_message(run_dir: Path, refused: list[Change]) -> str:
    """One line: the keys with old -> new, and the two ways on (only a new run_dir for restored keys)."""
    changed = "; ".join(c.describe(REFUSAL_VALUE_CHARS) for c in refused)
    restored = [c.key for c in refused if is_restored_on_resume(c.key, TrainConfig)]
    allowable = ",".join(c.key for c in refused if c.key not in restored)
    hatch = f", or change them deliberately with checkpoint.allow_changes=[{allowable}] (recorded in " \
        f"{HISTORY_FILE})" if allowable else ""
    fixed = f"; {', '.join(restored)} can only change in a new run_dir (the checkpoint restores them)" \
        if restored and allowable else ""
    return (f"refusing to resume {run_dir}: identity key(s) changed: {changed}. A run folder holds one run; "
            f"use a new run_dir{hatch}{fixed}")


def format_diff(run_dir: Path, changes: list[Change], resume_step: int | None) -> str:
    """One block: every changed key, old -> new, marked when it is an (allowed) identity key or derived."""
    lines = [f"resuming {run_dir} from step {resume_step} with {len(changes)} changed key(s) (old -> new):"]
    for change in changes:
        mark = " [identity, allowed by checkpoint.allow_changes]" if change.identity else \
            " [derived]" if change.derived else ""
        lines.append(f"  {change.describe()}{mark}")
    return "\n".join(lines)


def schedule_note(cfg: TrainConfig, changes: list[Change]) -> str | None:
    """What a changed total does to the LR schedule: the checkpoint's scheduler keeps the horizon the run was
    planned with (`cispo.trainer.optim.WarmupSchedule`), so under a cosine schedule the optimizer steps past
    it train at ``min_lr_ratio x lr``; a constant schedule is unaffected."""
    horizon = next((c for c in changes if c.key == HORIZON_KEY), None)
    if horizon is None or cfg.trainer.lr_schedule == CONSTANT_SCHEDULE:
        return None
    tail_lr = cfg.trainer.min_lr_ratio * cfg.trainer.lr
    return (f"{HORIZON_KEY} {_show(horizon.old)} -> {_show(horizon.new)}: the LR schedule keeps its original horizon "
            f"of {_show(horizon.old)} optimizer steps (restored from the checkpoint); optimizer steps past it train "
            f"at trainer.min_lr_ratio x trainer.lr = {tail_lr:g}")


# ---- the run folder, read only ------------------------------------------------------------------------


def has_checkpoints(run_dir: Path) -> bool:
    """A `latest` pointer or a complete-looking step folder: this launch would resume."""
    folder = run_dir / CHECKPOINTS_DIRNAME
    if not folder.is_dir():
        return False
    return (folder / LATEST_NAME).is_file() or any(parse_step(p) is not None for p in folder.iterdir() if p.is_dir())


def resume_step(run_dir: Path, resume: str) -> int | None:
    """The step a resume starts from as far as can be told without verifying: the named checkpoint, else the
    one `latest` names, else the newest step folder."""
    named = parse_step(Path(resume)) if resume not in ("auto", RESUME_NONE) else None
    if named is not None:
        return named
    folder = run_dir / CHECKPOINTS_DIRNAME
    pointer = folder / LATEST_NAME
    found = parse_step(Path(pointer.read_text(encoding="utf-8").strip())) if pointer.is_file() else None
    if found is not None:
        return found
    return max((s for p in folder.iterdir() if (s := parse_step(p)) is not None), default=None)


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected the run's saved config (a mapping); move the file aside to start over")
    return data


def config_as_saved(cfg: TrainConfig) -> dict[str, Any]:
    """The config as `config.yaml` holds it (a YAML round trip), so equal values compare equal."""
    return yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def plan_launch(cfg: TrainConfig) -> LaunchPlan:
    """Reads the run folder (never writes it): raises `ResumeRefused` for an identity change not allowed,
    prints the diff block of an accepted resume, and says what `record_launch` will record."""
    run_dir = Path(cfg.run_dir).resolve()
    allowed = list(cfg.checkpoint.allow_changes)
    if cfg.checkpoint.resume == RESUME_NONE or not has_checkpoints(run_dir):
        return LaunchPlan(run_dir, resuming=False, allowed=allowed)
    step = resume_step(run_dir, cfg.checkpoint.resume)
    saved = saved_config(run_dir)
    changes = [] if saved is None else diff_configs(saved, config_as_saved(cfg))
    refused = refused_changes(changes, allowed)
    if refused:
        raise ResumeRefused(refusal_message(run_dir, refused))
    if changes:
        log.warning("%s", format_diff(run_dir, changes, step))
    note = schedule_note(cfg, changes)
    if note:
        log.warning("%s", note)
    return LaunchPlan(run_dir, resuming=True, resume_step=step, changes=changes, allowed=allowed)


# ---- the history ----------------------------------------------------------------------------------------


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The checkout's commit (with ``-dirty`` for uncommitted changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def history_record(plan: LaunchPlan, commit: str | None, now: float) -> dict[str, Any]:
    """One launch: when, which code, fresh or resumed from which step, and every changed key."""
    return {"time_unix": now, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)), "commit": commit,
            "resumed": plan.resuming, "from_step": plan.resume_step,
            "changes": [c.record() for c in plan.changes],
            "allowed_identity_changes": [c.key for c in plan.changes if c.identity]}


def append_history(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Appends one JSON line and fsyncs it (the record must survive a crash right after the launch)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def record_launch(plan: LaunchPlan, commit: str | None = None, now: float | None = None) -> dict[str, Any]:
    """Writes this launch's line into ``config_history.jsonl`` (call it holding the run lock)."""
    record = history_record(plan, git_commit() if commit is None else commit, time.time() if now is None else now)
    append_history(plan.run_dir, record)
    return record


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
