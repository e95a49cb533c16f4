"""What a person watching a run sees: one compact line per step and a live progress display.

Everything else (our INFO lines, vLLM's, Ray's, DeepSpeed's) goes to the run folder's log files unless
``logger.log_level`` asks for it on the console (:func:`configure_console_logging`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LINE_WIDTH = 100
"""The step line never exceeds this many columns: less important fields are dropped first."""
TIME_PREFIX = "time/"
EVAL_ACCURACY_RE = re.compile(r"^eval/(?P<set>[^/]+)/avg@(?P<k>\d+)$")
PHASE_LABELS = {"wait_rollout": "wait", "generate": "gen", "score": "score", "old_log_probs": "logp", "update": "upd",
                "sync": "sync", "eval": "eval", "checkpoint": "ckpt"}
"""Short labels of the phases shown, in the order a step runs them (time/other and totals are not)."""
LOG_LEVELS = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


@dataclass(frozen=True)
class ConsoleColumns:
    """Which metric keys the step line shows (names match the comparison report's)."""

    reward: str = "reward/mean"
    accuracy_pattern: str = EVAL_ACCURACY_RE.pattern
    step_time: str = "time/step"


def significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, never in exponent form for ordinary sizes."""
    if value == 0 or not (1e-4 <= abs(value) < 1e6):
        return f"{value:.{digits}g}"
    text = f"{value:.{digits}g}"
    if "e" in text:  # e.g. 1.23e+03 for 1234 at 3 digits
        text = f"{value:.0f}"
    return text


def seconds(value: float) -> str:
    """2-3 significant digits: 0.081s, 4.1s, 44s, 312s."""
    if value >= 10:
        return f"{value:.0f}s"
    if value >= 1:
        return f"{value:.1f}s"
    return f"{value:.2g}s"


def format_step_line(step: int, record: Mapping[str, Any], total_steps: int | None,
                     columns: ConsoleColumns = ConsoleColumns(), width: int = LINE_WIDTH) -> str:
    """``step 3/12  reward 0.521  heldout avg@4 0.375  gen 4.1s upd 9.8s sync 1.1s  44s``, at most
    ``width`` columns: phase times go first, then eval sets, when the line would be longer."""
    head = f"step {step}" + (f"/{total_steps}" if total_steps else "")
    reward = record.get(columns.reward)
    fields: list[tuple[int, str]] = []  # (priority: lower is dropped later, text)
    if isinstance(reward, (int, float)):
        fields.append((0, f"reward {significant(float(reward))}"))
    accuracy_re = re.compile(columns.accuracy_pattern)
    for key, value in record.items():
        match = accuracy_re.match(key)
        if match and isinstance(value, (int, float)):
            fields.append((1, f"{match.group('set')} avg@{match.group('k')} {significant(float(value))}"))
    phases = [(2, f"{label} {seconds(float(record[TIME_PREFIX + name]))}")
              for name, label in PHASE_LABELS.items() if isinstance(record.get(TIME_PREFIX + name), (int, float))]
    step_time = record.get(columns.step_time)
    tail = f"{seconds(float(step_time))}" if isinstance(step_time, (int, float)) else ""

    def render(kept_fields: list[tuple[int, str]], kept_phases: list[tuple[int, str]]) -> str:
        parts = [head] + [text for _, text in kept_fields]
        if kept_phases:
            parts.append(" ".join(text for _, text in kept_phases))
        if tail:
            parts.append(tail)
        return "  ".join(parts)

    line = render(fields, phases)
    while len(line) > width and phases:
        phases.pop()
        line = render(fields, phases)
    while len(line) > width and len(fields) > 1:
        fields.pop()
        line = render(fields, phases)
    return line[:width]


def configure_console_logging(level: str) -> None:
    """Our own and third-party log records below ``level`` stay out of the console; the run's log
    file (Hydra's ``<run_dir>/train.log``) keeps INFO and above."""
    threshold = LOG_LEVELS[level]
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(threshold)
    if threshold > logging.INFO:
        # Progress bars of the libraries' own loading steps (dataset tables, checkpoint shards) are noise
        # next to the run's progress display; at log_level=info they stay.
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    import ray  # noqa: F401 - importing ray installs its console handler, which we filter below

    ray_logger = logging.getLogger("ray")
    ray_logger.setLevel(max(threshold, logging.WARNING) if threshold > logging.INFO else threshold)
    for handler in ray_logger.handlers:
        if _RAY_AUTH_NOTICE not in handler.filters:
            handler.addFilter(_RAY_AUTH_NOTICE)


class _RayAuthNotice(logging.Filter):
    """Ray 2.60 announces at every start, as a WARNING, that token authentication is on for the new
    cluster: a notice of a safe default (our local cluster also listens on 127.0.0.1 only), not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


_RAY_AUTH_NOTICE = _RayAuthNotice()


class RunProgress:
    """A live line under the step lines: step, the phase running now, elapsed / ETA, last reward and
    last eval. Shown only on a terminal; off the terminal (CI, a redirected log) the step lines suffice."""

    def __init__(self, console: Any, total_steps: int, start_step: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.enabled = bool(getattr(console, "is_terminal", False))
        self._last_eval = ""
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[summary]}"),
            console=console, transient=True, disable=not self.enabled,
        )
        self._task = self._progress.add_task("starting", total=total_steps, completed=start_step, summary="")
        self._started = time.monotonic()
        if self.enabled:
            self._progress.start()

    def phase(self, step: int, name: str) -> None:
        self._progress.update(self._task, description=f"step {step} {PHASE_LABELS.get(name, name)}")

    def step_done(self, step: int, record: Mapping[str, Any], columns: ConsoleColumns = ConsoleColumns()) -> None:
        evals = [f"{m.group('set')} avg@{m.group('k')} {significant(float(v))}" for k, v in record.items()
                 if (m := EVAL_ACCURACY_RE.match(k)) and isinstance(v, (int, float))]
        if evals:
            self._last_eval = "last eval: " + evals[0]
        reward = record.get(columns.reward)
        parts = [f"reward {significant(float(reward))}"] if isinstance(reward, (int, float)) else []
        summary = "  ".join(parts + ([self._last_eval] if self._last_eval else []))
        self._progress.update(self._task, completed=step, description=f"step {step} done", summary=summary)

    def close(self) -> None:
        if self.enabled:
            self._progress.stop()
