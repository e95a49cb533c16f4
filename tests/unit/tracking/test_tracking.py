"""metrics.jsonl (durable, resume-exact), read_metrics errors, PhaseTimer, console line, wandb offline."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from cispo.tracking import (
    DISCARDED_FILENAME,
    METRICS_FILENAME,
    MetricsFileError,
    MetricsLogger,
    PhaseTimer,
    read_metrics,
)
from cispo.tracking.console import ConsoleColumns

REPO = Path(__file__).resolve().parents[3]


def _metrics(step: int) -> dict:
    """Deterministic per-step metrics, as a loop would produce them (numpy, torch, nested)."""
    return {
        "reward/mean": np.float32(step / 8),
        "actor": {"entropy": torch.tensor(1.0 / step, dtype=torch.float64), "skipped": np.int64(0)},
        "dyn/full": step % 2 == 0,
        "eval/arith/avg@4": 0.25 * step if step % 2 == 0 else None,
    }


def _logger(run_dir: Path, **kwargs) -> MetricsLogger:
    return MetricsLogger(run_dir, wandb_mode="disabled", console=False, **kwargs)


def test_lines_are_plain_json_and_readable_immediately(tmp_path: Path) -> None:
    logger = _logger(tmp_path)
    record = logger.log(1, _metrics(1))
    # Visible to another reader before close (flushed + fsynced per line).
    assert read_metrics(tmp_path) == [record]
    logger.log(2, _metrics(2))
    logger.close()
    lines = (tmp_path / METRICS_FILENAME).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "step": 1,
            "actor/entropy": 1.0,
            "actor/skipped": 0,
            "dyn/full": 0,
            "eval/arith/avg@4": None,
            "reward/mean": float(np.float32(0.125)),
        },
        {
            "step": 2,
            "actor/entropy": 0.5,
            "actor/skipped": 0,
            "dyn/full": 1,
            "eval/arith/avg@4": 0.5,
            "reward/mean": 0.25,
        },
    ]
    assert all(type(v) in (int, float, type(None)) for r in read_metrics(tmp_path) for v in r.values())


def test_bad_steps_and_values_are_named(tmp_path: Path) -> None:
    with _logger(tmp_path) as logger:
        logger.log(3, {"a": 1.0})
        with pytest.raises(ValueError, match="step 3 logged after step 3"):
            logger.log(3, {"a": 1.0})
        with pytest.raises(ValueError, match="'actor/kl'.*shape \\(2,\\)"):
            logger.log(4, {"actor": {"kl": torch.zeros(2)}})
        with pytest.raises(ValueError, match="'x'.*list"):
            logger.log(4, {"x": [1, 2]})
        with pytest.raises(ValueError, match="'step'"):
            logger.log(4, {"step": 4})
        logger.log(4, {"nan": float("nan")})
    assert [r["step"] for r in read_metrics(tmp_path)] == [3, 4]  # failed calls wrote nothing
    assert np.isnan(read_metrics(tmp_path)[-1]["nan"])
    with pytest.raises(ValueError, match="wandb_mode"):
        MetricsLogger(tmp_path, wandb_mode="cloud")


def test_resume_truncates_to_the_checkpoint_step_and_equals_a_straight_run(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with _logger(straight) as logger:
        for step in range(1, 5):
            logger.log(step, _metrics(step))

    with _logger(resumed) as logger:  # crashed after step 3; checkpoint of step 2
        for step in range(1, 4):
            logger.log(step, _metrics(step))
    with open(resumed / METRICS_FILENAME, "ab") as f:
        f.write(b'{"step": 4, "reward/me')  # the write the crash cut
    with _logger(resumed, resume_step=2) as logger:
        assert logger.last_record is not None and logger.last_record["step"] == 2
        assert [r["step"] for r in read_metrics(resumed)] == [1, 2]
        for step in (3, 4):
            logger.log(step, _metrics(step))

    assert (resumed / METRICS_FILENAME).read_bytes() == (straight / METRICS_FILENAME).read_bytes()
    discarded = (resumed / DISCARDED_FILENAME).read_bytes().splitlines()
    assert json.loads(discarded[0])["step"] == 3 and discarded[1] == b'{"step": 4, "reward/me'


def test_fresh_run_in_a_used_folder_moves_old_lines_aside(tmp_path: Path) -> None:
    with _logger(tmp_path) as logger:
        logger.log(1, {"a": 1})
        logger.log(2, {"a": 2})
    with _logger(tmp_path) as logger:
        assert logger.last_record is None
        logger.log(1, {"a": 10})
    assert read_metrics(tmp_path) == [{"step": 1, "a": 10}]
    assert [json.loads(l)["a"] for l in (tmp_path / DISCARDED_FILENAME).read_text().splitlines()] == [1, 2]


def test_read_metrics_errors_name_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / METRICS_FILENAME
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": \n{"step": 3}\n')
    with pytest.raises(MetricsFileError, match=f"{path}: line 2: not valid JSON"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"a": 2}\n')
    with pytest.raises(MetricsFileError, match="line 2: expected a JSON object with an integer 'step'"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2, "a"')
    with caplog.at_level(logging.WARNING, logger="cispo.tracking"):
        assert read_metrics(path) == [{"step": 1}]
    assert any("truncated last line" in r.getMessage() and "line 2" in r.getMessage() for r in caplog.records)
    path.write_text('{"step": 1}\n{"step": 2}')  # complete last line, only its newline missing
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(FileNotFoundError, match="nothing.jsonl"):
        read_metrics(tmp_path / "nothing.jsonl")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_phase_timer_adds_phases_other_step_and_elapsed() -> None:
    clock = FakeClock()
    timer = PhaseTimer(elapsed=50.0, clock=clock)
    timer.start_step()
    with timer.phase("generate"):
        clock.now += 3.0
    clock.now += 0.5  # outside any phase
    with timer.phase("update"):
        clock.now += 2.0
    with timer.phase("generate"):  # a second generation round adds up
        clock.now += 1.0
    assert timer.end_step() == {
        "time/generate": 4.0,
        "time/update": 2.0,
        "time/other": 0.5,
        "time/step": 6.5,
        "time/total_elapsed": 56.5,
    }
    with pytest.raises(RuntimeError, match="do not nest"):
        with timer.phase("eval"):
            with timer.phase("generate"):
                pass
    with pytest.raises(ValueError, match="phase name"):
        with timer.phase("step"):
            pass
    with pytest.raises(ValueError, match="boom"):  # time of a failing phase is still recorded
        with timer.phase("reward"):
            clock.now += 1.0
            raise ValueError("boom")
    assert timer.seconds["reward"] == 1.0


def test_console_line_shows_step_reward_accuracy_and_phases(tmp_path: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, color_system=None)
    with MetricsLogger(tmp_path, wandb_mode="disabled", console=console, total_steps=10) as logger:
        logger.log(
            3,
            {"reward/mean": 0.5, "eval/arith/avg@4": 0.25, "time/generate": 1.5, "time/step": 2.0},
        )
    assert buffer.getvalue().strip() == "step 3/10  reward 0.5  arith avg@4 0.25  gen 1.5s  2.0s"
    # The console and the comparison read the same key names.
    from cispo.report import summary

    assert ConsoleColumns().reward == summary.REWARD_KEY
    assert ConsoleColumns().accuracy_pattern == summary.EVAL_ACCURACY_RE.pattern


def test_step_line_fits_100_columns_with_two_or_three_significant_digits() -> None:
    from cispo.tracking.console import format_step_line, seconds, significant

    record = {"reward/mean": 0.41666666, "eval/aime2024/avg@32": 0.0312499, "eval/aime2025/avg@32": 0.1234567,
              "time/generate": 15.43, "time/score": 0.004646, "time/old_log_probs": 2.012, "time/update": 9.81,
              "time/sync": 1.07, "time/eval": 41.2, "time/checkpoint": 8.04, "time/other": 0.002, "time/step": 77.6}
    line = format_step_line(12, record, 120)
    assert len(line) <= 100, line
    assert line.startswith("step 12/120  reward 0.417  aime2024 avg@32 0.0312  aime2025 avg@32 0.123  gen 15s")
    assert line.endswith("  78s") and "other" not in line
    # Too narrow: phase times go first, the step, reward and step time stay.
    narrow = format_step_line(12, record, 120, width=60)
    assert narrow == "step 12/120  reward 0.417  aime2024 avg@32 0.0312  78s"
    assert [seconds(x) for x in (0.004646, 0.0812, 4.14, 44.2, 312.4)] == ["0.0046s", "0.081s", "4.1s", "44s", "312s"]
    assert [significant(x) for x in (0.41666, 1234.5, 0.0, 3e-7)] == ["0.417", "1234", "0", "3e-07"]


def test_wandb_disabled_is_never_imported(tmp_path: Path) -> None:
    code = (
        "import sys; from cispo.tracking import MetricsLogger; "
        f"MetricsLogger({str(tmp_path)!r}, wandb_mode='disabled', console=False).log(1, {{'a': 1}}); "
        "print('wandb' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.stdout.strip() == "False"


def test_wandb_offline_writes_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest disables wandb suite-wide
    with MetricsLogger(
        tmp_path, wandb_mode="offline", project="cispo-test", run_name="t", config={"seed": 0}, console=False
    ) as logger:
        logger.log(1, {"reward/mean": 0.5})
        logger.log(2, {"reward/mean": 0.75})
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    [run_folder] = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    assert (run_folder / f"run-{run_id}.wandb").stat().st_size > 0
    # A resumed run continues the same wandb run id (wandb names its local folder by the second, so
    # the two inits may share one folder, have two, or, within the same second, get a "-1" suffix).
    with MetricsLogger(
        tmp_path, wandb_mode="offline", project="cispo-test", config={"seed": 0}, console=False,
        resume_step=1,
    ) as logger:
        logger.log(2, {"reward/mean": 0.875})
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    assert {p.name for p in (tmp_path / "wandb").glob("offline-run-*")} == {
        p.name for p in (tmp_path / "wandb").glob(f"offline-run-*-{run_id}*")}
    assert [r["reward/mean"] for r in read_metrics(tmp_path)] == [0.5, 0.875]
