"""Run folders for the comparison: find them, read their config and metrics, group them by a key.

A run folder holds `metrics.jsonl` (written by `cispo.tracking.MetricsLogger`; or `metrics.jsonl.gz`,
a finished run's metrics archived next to a study's report) and its resolved
config as `.hydra/config.yaml` or `config.yaml` with the keys `algorithm.name` and `seed`. A multirun
folder (Hydra's `multirun/<date>/<time>/`) holds numbered run folders; any folder is searched
recursively (not inside run folders).

A run folder may also hold `config_history.jsonl` (one line per launch, written by
`cispo.driver.resume_guard`). A run whose label (`algorithm.name` or a `--group-by` key) changed
between launches is refused: its steps belong to two groups. Other identity keys changed deliberately
(`checkpoint.allow_changes`) are kept as the run's `overrides` and listed in the report.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cispo.tracking.run_files import CONFIG_FILENAME, HISTORY_FILENAME
from cispo.tracking import (ARCHIVED_METRICS_FILENAME, ELAPSED_KEY, METRICS_FILENAME, STEP_TIME_KEY, metrics_file,
                             read_metrics)

log = logging.getLogger(__name__)

# config.yaml first: cispo.train writes it only once a launch is accepted, while Hydra rewrites
# .hydra/config.yaml at every launch (a refused resume included).
CONFIG_CANDIDATES = (Path(CONFIG_FILENAME), Path(".hydra") / "config.yaml")
ALGORITHM_KEY = "algorithm.name"
SEED_KEY = "seed"
SKIP_DIRS = ("checkpoints", "wandb")  # never hold runs; can be large
GROUP_KEY_SEPARATOR = ","  # --group-by algorithm.name,trainer.eps_high: one group per value pair
GROUP_LABEL_SEPARATOR = " / "
TOKENS_KEY = "rollout/tokens"  # response tokens generated in the step (dropped groups included)

AXES: tuple[str, ...] = ("step", "tokens", "time")
AXIS_LABELS = {"step": "step", "tokens": "generated tokens", "time": "wall-clock seconds"}


class CompareError(ValueError):
    """The inputs cannot be compared (no runs, a run without metrics or config, a missing key)."""


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"algorithm": {"name": "cispo"}} -> {"algorithm.name": "cispo"}; lists stay values."""
    if not isinstance(config, dict):
        return {prefix.rstrip("."): config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flattened
    group: str
    seed: Any
    records: list[dict[str, Any]]
    overrides: list[dict[str, Any]] = field(default_factory=list)  # identity keys changed on a resume
    _elapsed: dict[int, float] | None = field(default=None, repr=False)

    def keys(self) -> set[str]:
        return {k for r in self.records for k, v in r.items() if is_finite_number(v)} - {"step"}

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the lines with a finite value for `key`."""
        points = [(r["step"], float(r[key])) for r in self.records if is_finite_number(r.get(key))]
        steps = np.array([p[0] for p in points], dtype=np.int64)
        values = np.array([p[1] for p in points], dtype=np.float64)
        return steps, values

    def elapsed(self) -> dict[int, float] | None:
        """Wall seconds at each step: `time/total_elapsed`, else the running sum of `time/step`."""
        if self._elapsed is None:
            if any(is_finite_number(r.get(ELAPSED_KEY)) for r in self.records):
                self._elapsed = {
                    r["step"]: float(r[ELAPSED_KEY])
                    for r in self.records
                    if is_finite_number(r.get(ELAPSED_KEY))
                }
            elif any(is_finite_number(r.get(STEP_TIME_KEY)) for r in self.records):
                total, out = 0.0, {}
                for r in self.records:
                    if is_finite_number(r.get(STEP_TIME_KEY)):
                        total += float(r[STEP_TIME_KEY])
                        out[r["step"]] = total
                self._elapsed = out
            else:
                return None
        return self._elapsed

    def axis(self, kind: str) -> dict[int, float] | None:
        """Compute spent by the end of each step, for the compute-performance curve (None if unknown).

        `step`: the step itself. `tokens`: running sum of `rollout/tokens` (every generated response,
        including groups dynamic sampling dropped: that is what generation cost). `time`: wall seconds
        (`elapsed`). Step 0 (the eval before training) sits at 0 on every axis."""
        if kind == "step":
            return {int(r["step"]): float(r["step"]) for r in self.records}
        if kind == "tokens":
            if not any(is_finite_number(r.get(TOKENS_KEY)) for r in self.records):
                return None
            total, out = 0.0, {}
            for r in self.records:
                if is_finite_number(r.get(TOKENS_KEY)):
                    total += float(r[TOKENS_KEY])
                out[int(r["step"])] = total
            return out
        if kind == "time":
            elapsed = self.elapsed()
            if elapsed is None:
                return None
            return {0: 0.0, **{s: t for s, t in elapsed.items() if s != 0}}
        raise CompareError(f"unknown curve axis {kind!r}: expected one of {', '.join(AXES)}")

    def points(self, key: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(compute, value) of `key` at the steps where both are known, in step order."""
        axis = self.axis(kind) or {}
        steps, values = self.series(key)
        keep = np.array([int(s) in axis for s in steps], dtype=bool)
        x = np.array([axis[int(s)] for s in steps[keep]], dtype=np.float64)
        return x, values[keep]


def find_config(folder: Path) -> Path | None:
    for candidate in CONFIG_CANDIDATES:
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def group_keys(group_by: str) -> list[str]:
    """`algorithm.name,trainer.eps_high` -> both keys (a group per combination of their values)."""
    keys = [k.strip() for k in group_by.split(GROUP_KEY_SEPARATOR)]
    if not all(keys):
        raise CompareError(f"--group-by {group_by!r}: expected config keys separated by {GROUP_KEY_SEPARATOR!r}")
    return keys


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The launches of a run (`config_history.jsonl`); none for runs written before it existed."""
    import json

    path = folder / HISTORY_FILENAME
    if not path.is_file():
        return []
    launches = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            launches.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise CompareError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
    return launches


def _changes(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every recorded change, with the step its launch resumed from."""
    return [{**change, "from_step": launch.get("from_step")} for launch in history
            for change in launch.get("changes", [])]


def check_label_kept(folder: Path, history: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """Refuse a run whose label changed between launches: filing it under its last value would mislabel the
    steps trained before."""
    relabelled = [c for c in _changes(history) if c["key"] in (ALGORITHM_KEY, *keys)]
    if relabelled:
        what = "; ".join(f"{c['key']}: {c['old']} -> {c['new']} from step {c['from_step']}" for c in relabelled)
        raise CompareError(f"run {folder} changed its label during the run ({what}; {HISTORY_FILENAME}): its steps "
                           "belong to two groups; leave it out of the comparison or compare it by another key")


def identity_overrides(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The identity keys changed deliberately (checkpoint.allow_changes), for the report."""
    return [c for c in _changes(history) if c.get("identity")]


def load_run(folder: Path, group_by: str = ALGORITHM_KEY) -> Run:
    import yaml

    metrics_path = metrics_file(folder)
    if metrics_path is None:
        raise CompareError(f"run folder {folder} has no {METRICS_FILENAME} (or {ARCHIVED_METRICS_FILENAME})")
    config_path = find_config(folder)
    if config_path is None:
        raise CompareError(
            f"run folder {folder} has {metrics_path.name} but no config "
            f"({' or '.join(str(c) for c in CONFIG_CANDIDATES)})"
        )
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CompareError(f"{config_path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise CompareError(f"{config_path}: expected a mapping at the top level")
    config = flatten_config(raw)
    keys = group_keys(group_by)
    for key in dict.fromkeys((ALGORITHM_KEY, SEED_KEY, *keys)):
        if key not in config:
            raise CompareError(f"{config_path}: missing key {key!r} (needed to group runs by seed)")
    records = read_metrics(metrics_path)
    if not records:
        raise CompareError(f"run {folder}: {metrics_path} has no metrics lines")
    history = read_history(folder)
    check_label_kept(folder, history, keys)
    group = GROUP_LABEL_SEPARATOR.join(str(config[k]) for k in keys)
    return Run(folder, config, group, config[SEED_KEY], records, identity_overrides(history))


def _natural_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def discover_runs(paths: Sequence[str | Path], group_by: str = ALGORITHM_KEY) -> list[Run]:
    """Every run under `paths` (run folders, or folders searched recursively for run folders)."""
    if not paths:
        raise CompareError("give at least one run folder or multirun folder")
    found: dict[Path, Run] = {}

    def visit(folder: Path, explicit: bool) -> None:
        if metrics_file(folder) is not None:
            resolved = folder.resolve()
            if resolved not in found:
                found[resolved] = load_run(folder, group_by)
            return
        if find_config(folder) is not None and (explicit or folder.name.isdigit()):
            raise CompareError(f"run folder {folder} has a config but no {METRICS_FILENAME}")
        for child in sorted(folder.iterdir(), key=_natural_key):
            if child.is_dir() and not child.name.startswith(".") and child.name not in SKIP_DIRS:
                visit(child, explicit=False)

    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise CompareError(f"{path}: not a folder (expected a run folder or a multirun folder)")
        visit(path, explicit=True)
    if not found:
        raise CompareError(
            f"no runs found under {', '.join(str(p) for p in paths)}: a run folder holds "
            f"{METRICS_FILENAME} and .hydra/config.yaml or config.yaml"
        )
    return list(found.values())


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    for name, members in groups.items():
        seeds = [r.seed for r in members]
        if len(set(map(str, seeds))) != len(seeds):
            log.warning("group %r has repeated seeds %s: are these different configs?", name, seeds)
        members.sort(key=lambda r: (str(r.seed), str(r.path)))
    return dict(sorted(groups.items()))
