"""cispo.compare reads config_history.jsonl (issue 32): a relabelled run is refused, an allowed identity
override is shown in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cispo.cli.compare import CompareError, compare, discover_runs


def _run(folder: Path, alg: str, seed: int, history: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"name": alg}, "seed": seed}))
    lines = [{"step": s, "reward/mean": 0.1 * s, "eval/heldout/avg@4": 0.1 * s + 0.01 * seed} for s in range(5)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if history is not None:
        (folder / "config_history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return folder


def _launch(from_step: int | None, *changes: tuple[str, object, object, bool]) -> dict:
    return {"time_unix": 0.0, "commit": None, "resumed": from_step is not None, "from_step": from_step,
            "changes": [{"key": k, "old": o, "new": n, "identity": i} for k, o, n, i in changes]}


def test_a_run_whose_algorithm_changed_is_refused_naming_the_change(tmp_path: Path) -> None:
    _run(tmp_path / "a", "dapo", 0, [_launch(None), _launch(5, ("algorithm.name", "cispo", "dapo", True))])
    with pytest.raises(CompareError, match=r"changed its label.*algorithm.name: cispo -> dapo from step 5"):
        discover_runs([tmp_path])


def test_a_changed_group_by_key_is_refused(tmp_path: Path) -> None:
    _run(tmp_path / "a", "cispo", 0, [_launch(4, ("trainer.eps_high", 4.0, 2.0, True))])
    assert discover_runs([tmp_path])[0].overrides  # grouped by algorithm: kept, with its override
    with pytest.raises(CompareError, match="trainer.eps_high"):
        discover_runs([tmp_path], group_by="algorithm.name,trainer.eps_high")


def test_an_allowed_override_is_shown_in_the_report_and_safe_changes_are_not(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _run(runs / "cispo_s0", "cispo", 0, [_launch(None), _launch(2, ("total_steps", 2, 4, False),
                                                            ("trainer.eps_high", 4.0, 2.0, True))])
    _run(runs / "cispo_s1", "cispo", 1, [_launch(None)])
    _run(runs / "dapo_s0", "dapo", 0)  # written before the history existed
    summary = compare([runs], tmp_path / "out", plots=False)
    overrides = summary["overrides"]
    assert list(overrides) == [str(runs / "cispo_s0")]
    assert overrides[str(runs / "cispo_s0")] == [
        {"key": "trainer.eps_high", "old": 4.0, "new": 2.0, "identity": True, "from_step": 2}]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Identity overrides" in report and "trainer.eps_high" in report and "4.0 -> 2.0" in report
    assert "total_steps" not in report


def test_config_yaml_is_read_before_hydras_copy(tmp_path: Path) -> None:
    """Hydra rewrites .hydra/config.yaml even for a refused resume; the run's own config.yaml wins."""
    run = _run(tmp_path / "a", "cispo", 0)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"name": "dapo"}, "seed": 0}))
    assert discover_runs([tmp_path])[0].group == "cispo"


def test_a_corrupt_history_line_names_the_file_and_line(tmp_path: Path) -> None:
    run = _run(tmp_path / "a", "cispo", 0, [_launch(None)])
    with open(run / "config_history.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(CompareError, match=r"config_history.jsonl:2"):
        discover_runs([tmp_path])
