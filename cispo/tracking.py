"""Metrics of a run: one JSONL line per step (the source of truth), wandb, a rich console line, and a
per-phase timer.

`run_dir/metrics.jsonl` holds one JSON object per training step: ``{"step": N, "<key>": value, ...}``
with plain ints / floats (NaN and Infinity written as Python's json does) / strings / null. Every
line is fsynced before `log()` returns, so a crash loses at most the line being written, and
`read_metrics` reports and ignores such a truncated last line; a write that fails (disk full, I/O
error) is cut back and raises `MetricsWriteError`, so the file never holds half a line. On resume from the checkpoint of
step N, lines with step > N are moved to `metrics.discarded.jsonl` (never deleted), so that the file
of a resumed run equals that of a run that never stopped. The metric key names the comparison
reads are listed at the top of `cispo/compare.py`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from cispo.checkpoint.atomic import write_bytes_atomic
from cispo.console import TIME_PREFIX, ConsoleColumns, RunProgress, format_step_line

log = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
ARCHIVED_METRICS_FILENAME = METRICS_FILENAME + ".gz"  # a finished run's metrics, gzip-compressed to be kept
DISCARDED_FILENAME = "metrics.discarded.jsonl"
WANDB_ID_FILENAME = "wandb_run_id"
WANDB_MODES = ("offline", "online", "disabled")
WANDB_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # wandb run ids: lowercase alphanumerics
WANDB_ID_LENGTH = 8
STEP_KEY = "step"
STEP_TIME_KEY = "time/step"
ELAPSED_KEY = "time/total_elapsed"
OTHER_PHASE = "other"


class MetricsFileError(ValueError):
    """A metrics file cannot be read: the message names the file and the line."""


class MetricsWriteError(OSError):
    """A metrics line could not be written (disk full, I/O error). The file was cut back to its last
    complete line, so nothing half-written stays; the step's line is written again when the step is
    redone after a resume (or restored from the checkpoint that holds it)."""


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    records: list[dict[str, Any]]
    raw: list[bytes]  # the raw line of each record, without its newline
    truncated_tail: bytes | None  # an unparseable last line (a crash mid-write), if any


def _parse_line(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetricsFileError(f"{path}: line {lineno}: not valid JSON ({exc})") from exc
    step = record.get(STEP_KEY) if isinstance(record, dict) else None
    if isinstance(step, bool) or not isinstance(step, int):
        raise MetricsFileError(
            f"{path}: line {lineno}: expected a JSON object with an integer {STEP_KEY!r}, "
            f"got {raw[:80]!r}"
        )
    return record


def _parse_metrics(path: Path) -> _Parsed:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise MetricsFileError(f"{path}: not a readable gzip file ({exc})") from exc
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline (always, unless a write was cut)
    parsed = _Parsed([], [], None)
    for lineno, raw in enumerate(lines, start=1):
        parsed.records.append(_parse_line(raw, path, lineno))
        parsed.raw.append(raw)
    if last:
        try:
            parsed.records.append(_parse_line(last, path, len(lines) + 1))
            parsed.raw.append(last)
        except MetricsFileError as exc:
            log.warning("ignoring truncated last line of %s (line %d): %s", path, len(lines) + 1, exc)
            parsed.truncated_tail = last
    return parsed


def metrics_file(run_dir: Path) -> Path | None:
    """The run's `metrics.jsonl`, else its archived `metrics.jsonl.gz`, else None (not a run folder)."""
    for name in (METRICS_FILENAME, ARCHIVED_METRICS_FILENAME):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics file (or of `run_dir/metrics.jsonl`, else `run_dir/metrics.jsonl.gz`, when
    given a folder), in file order. A `.gz` file is read decompressed.

    A corrupt line raises MetricsFileError naming the file and line; a truncated last line (the
    write a crash interrupted) is logged and ignored.
    """
    path = Path(path)
    if path.is_dir():
        path = metrics_file(path) or path / METRICS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    return _parse_metrics(path).records


# ---------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------


def to_plain(key: str, value: Any) -> int | float | str | None:
    """A JSON-ready scalar from a python / numpy / torch scalar (bools become 0/1)."""
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        try:
            value = value.item()  # numpy scalars and arrays, torch tensors: one element only
        except (ValueError, RuntimeError) as exc:
            shape = tuple(getattr(value, "shape", ()))
            raise ValueError(f"metric {key!r}: expected a scalar, got shape {shape}") from exc
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    raise ValueError(
        f"metric {key!r}: expected a number, string or None, got {type(value).__name__}: {value!r}"
    )


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become '/'-joined keys ({"eval": {"aime": 0.3}} -> {"eval/aime": 0.3})."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric keys must be non-empty strings, got {key!r}")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{full}/"))
        else:
            flat[full] = to_plain(full, value)
    return flat


# ---------------------------------------------------------------------------------------------------
# Phase timer
# ---------------------------------------------------------------------------------------------------


@dataclass
class PhaseTimer:
    """Seconds per phase of a step, plus the step's wall time and the run's total.

    ``timer.start_step(); with timer.phase("generate"): ...; metrics |= timer.end_step()`` gives
    ``time/generate``, ``time/other`` (step time not inside any phase), ``time/step`` and
    ``time/total_elapsed`` (`elapsed` restored from the checkpoint + every step since). A phase
    entered twice in one step adds up. Phases do not nest (the per-phase times then sum to the step).
    """

    elapsed: float = 0.0
    clock: Callable[[], float] = time.perf_counter
    on_phase: Callable[[str], None] | None = None
    """Called with the phase's name as it starts (the live progress display shows it)."""
    seconds: dict[str, float] = field(default_factory=dict)
    _step_start: float | None = None
    _active: str | None = None

    def start_step(self) -> None:
        self.seconds = {}
        self._step_start = self.clock()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not name or "/" in name or name in (OTHER_PHASE, "step", "total_elapsed"):
            raise ValueError(
                f"phase name must be non-empty, without '/', and not one of "
                f"{OTHER_PHASE!r}, 'step', 'total_elapsed'; got {name!r}"
            )
        if self._active is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._active!r}: phases do not nest")
        if self._step_start is None:
            self.start_step()
        self._active = name
        if self.on_phase is not None:
            self.on_phase(name)
        start = self.clock()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + (self.clock() - start)
            self._active = None

    def end_step(self) -> dict[str, float]:
        if self._step_start is None:
            raise RuntimeError("end_step() called without start_step() (or any phase)")
        if self._active is not None:
            raise RuntimeError(f"end_step() called inside phase {self._active!r}")
        step_seconds = self.clock() - self._step_start
        self._step_start = None
        self.elapsed += step_seconds
        out = {f"{TIME_PREFIX}{name}": secs for name, secs in self.seconds.items()}
        out[f"{TIME_PREFIX}{OTHER_PHASE}"] = max(0.0, step_seconds - sum(self.seconds.values()))
        out[STEP_TIME_KEY] = step_seconds
        out[ELAPSED_KEY] = self.elapsed
        return out


# ---------------------------------------------------------------------------------------------------
# Console
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# The logger
# ---------------------------------------------------------------------------------------------------


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
        parsed = _parse_metrics(self.path)
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
