"""The metrics logger: one JSONL line per step (the source of truth), wandb, a rich console line.

`run_dir/metrics.jsonl` holds one JSON object per training step: ``{"step": N, "<key>": value, ...}``
with plain ints / floats (NaN and Infinity written as Python's json does) / strings / null. Every
line is fsynced before `log()` returns, so a crash loses at most the line being written, and
`read_metrics` reports and ignores such a truncated last line; a write that fails (disk full, I/O
error) is cut back and raises `MetricsWriteError`, so the file never holds half a line. On resume from the checkpoint of
step N, lines with step > N are moved to `metrics.discarded.jsonl` (never deleted), so that the file
of a resumed run equals that of a run that never stopped. The metric key names the comparison
reads are listed at the top of `cispo/cli/compare.py`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cispo.checkpoint.atomic import write_bytes_atomic
from cispo.tracking.console import ConsoleColumns, RunProgress, format_step_line
from cispo.tracking.metrics_file import METRICS_FILENAME, STEP_KEY, parse_metrics, flatten_metrics

log = logging.getLogger(__name__)

DISCARDED_FILENAME = "metrics.discarded.jsonl"
WANDB_ID_FILENAME = "wandb_run_id"
WANDB_MODES = ("offline", "online", "disabled")
WANDB_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # wandb run ids: lowercase alphanumerics
WANDB_ID_LENGTH = 8


class MetricsWriteError(OSError):
    """A metrics line could not be written (disk full, I/O error). The file was cut back to its last
    complete line, so nothing half-written stays; the step's line is written again when the step is
    redone after a resume (or restored from the checkpoint that holds it)."""


class MetricsLogger:
    """Writes each step's metrics to `run_dir/metrics.jsonl`, wandb and the console.

    `resume_step`: None for a fresh run (any existing lines are moved to `metrics.discarded.jsonl`),
    or the step of the checkpoint being resumed (lines with a larger step are moved there). Steps
    passed to `log()` must increase strictly. `console` may be a `rich.console.Console` (tests pass
    one writing to a buffer), True (stdout) or False.

    wandb is imported only when `wandb_mode` is not "disabled". Its run id is kept in
    `run_dir/wandb_run_id` so a resumed run continues the same wandb run; in offline mode the local
    run folder is `run_dir/wandb/offline-run-*` (upload later with `wandb sync`).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        wandb_mode: str = "offline",
        project: str = "cispo",
        run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
        total_steps: int | None = None,
        console: Any = True,
        columns: ConsoleColumns = ConsoleColumns(),
    ):
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb_mode must be one of {WANDB_MODES}, got {wandb_mode!r}")
        if resume_step is not None and (
            isinstance(resume_step, bool) or not isinstance(resume_step, int) or resume_step < 0
        ):
            raise ValueError(f"resume_step must be None or an int >= 0, got {resume_step!r}")
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"config must be a dict, got {type(config).__name__}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILENAME
        self.total_steps = total_steps
        self.columns = columns
        self.constant_metrics: dict[str, Any] = {}
        """Added to every line unless the step's metrics set the key (e.g. ``fault/restarts``)."""
        self.last_record: dict[str, Any] | None = self._prepare_file(resume_step)
        self._last_step = None if self.last_record is None else self.last_record[STEP_KEY]
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._console = self._make_console(console)
        self.progress: RunProgress | None = None
        """The live display; the loop starts it (:meth:`start_progress`) once the run is built."""
        self._wandb_run = None
        if wandb_mode != "disabled":
            try:
                self._wandb_run = self._init_wandb(
                    wandb_mode, project, run_name or self.run_dir.name, dict(config or {}), resume_step
                )
            except BaseException:
                self._close_fd()
                raise

    # -- set-up ----------------------------------------------------------------------------------

    def _prepare_file(self, resume_step: int | None) -> dict[str, Any] | None:
        """Drop the lines the resumed run will write again; return the last line kept."""
        if not self.path.exists():
            return None
        parsed = parse_metrics(self.path)
        keep = [resume_step is not None and r[STEP_KEY] <= resume_step for r in parsed.records]
        dropped = [raw for raw, k in zip(parsed.raw, keep) if not k]
        if parsed.truncated_tail is not None:
            dropped.append(parsed.truncated_tail)
        kept_raw = [raw for raw, k in zip(parsed.raw, keep) if k]
        kept_records = [r for r, k in zip(parsed.records, keep) if k]
        if dropped or (kept_raw and not self.path.read_bytes().endswith(b"\n")):
            if dropped:
                log.warning(
                    "%s: moving %d line(s) %s to %s",
                    self.path,
                    len(dropped),
                    "(fresh run)" if resume_step is None else f"after step {resume_step}",
                    DISCARDED_FILENAME,
                )
                with open(self.run_dir / DISCARDED_FILENAME, "ab") as f:
                    f.write(b"".join(raw + b"\n" for raw in dropped))
                    f.flush()
                    os.fsync(f.fileno())
            write_bytes_atomic(self.path, b"".join(raw + b"\n" for raw in kept_raw))
        return kept_records[-1] if kept_records else None

    @staticmethod
    def _make_console(console: Any) -> Any:
        if console is False or console is None:
            return None
        if console is True:
            from rich.console import Console

            return Console()
        return console

    def _init_wandb(
        self, mode: str, project: str, run_name: str, config: dict[str, Any], resume_step: int | None
    ) -> Any:
        import wandb  # lazily: ~1 s to import, and not needed with wandb disabled

        id_file = self.run_dir / WANDB_ID_FILENAME
        if resume_step is not None and id_file.is_file():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = "".join(secrets.choice(WANDB_ID_ALPHABET) for _ in range(WANDB_ID_LENGTH))
            id_file.write_text(run_id + "\n", encoding="utf-8")
        return wandb.init(
            mode=mode,
            project=project,
            name=run_name,
            id=run_id,
            resume="allow",
            config=config,
            dir=str(self.run_dir),
            settings=wandb.Settings(silent=True, console="off"),
        )

    # -- logging ---------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Write one step's metrics (nested dicts flattened with '/'); returns the record written."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"step {step} logged after step {self._last_step}: steps must increase (one line per step)"
            )
        flat = flatten_metrics(metrics)
        flat = {**flatten_metrics(self.constant_metrics), **flat}
        if STEP_KEY in flat:
            raise ValueError(f"metrics must not contain the key {STEP_KEY!r}: pass the step separately")
        record = {STEP_KEY: step, **dict(sorted(flat.items()))}
        line = json.dumps(record, allow_nan=True, separators=(",", ":")) + "\n"
        self._append_line(step, line.encode("utf-8"))
        self._last_step = step
        self.last_record = record
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in flat.items() if v is not None}, step=step)
        if self._console is not None:
            self._console.print(format_step_line(step, record, self.total_steps, self.columns), markup=False,
                                highlight=False, soft_wrap=True)
        if self.progress is not None:
            self.progress.step_done(step, record, self.columns)
        return record

    def start_progress(self, start_step: int) -> RunProgress | None:
        if self._console is not None and self.total_steps:
            self.progress = RunProgress(self._console, self.total_steps, start_step)
        return self.progress

    def _append_line(self, step: int, data: bytes) -> None:
        """Append one line durably, or not at all: on an OSError (ENOSPC, EIO, EFBIG) the file is cut
        back to the size it had, so neither a partial line nor (after a retry) a duplicate is left."""
        if self._fd is None:
            raise ValueError(f"{self.path}: the logger is closed")
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)
                os.fsync(self._fd)
            except OSError as cut:
                log.error("%s: could not cut the file back to %d bytes after a failed write: %s",
                          self.path, size, cut)
            raise MetricsWriteError(
                exc.errno, f"{self.path}: could not write the line of step {step} ({exc.strerror or exc}); "
                f"the file ends at its last complete line"
            ) from exc

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        self._close_fd()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
