"""What a run records: the metrics file (`metrics_file`), the per-phase timer (`timer`), the logger
that writes metrics.jsonl, wandb and the console line (`logger`), and the console itself (`console`)."""

from cispo.tracking.logger import DISCARDED_FILENAME, WANDB_ID_FILENAME, WANDB_MODES, MetricsLogger, MetricsWriteError
from cispo.tracking.metrics_file import (
    ARCHIVED_METRICS_FILENAME,
    ELAPSED_KEY,
    METRICS_FILENAME,
    STEP_KEY,
    STEP_TIME_KEY,
    MetricsFileError,
    flatten_metrics,
    metrics_file,
    read_metrics,
    to_plain,
)
from cispo.tracking.timer import OTHER_PHASE, PhaseTimer

__all__ = [
    "ARCHIVED_METRICS_FILENAME", "DISCARDED_FILENAME", "ELAPSED_KEY", "METRICS_FILENAME", "OTHER_PHASE", "STEP_KEY",
    "STEP_TIME_KEY", "WANDB_ID_FILENAME", "WANDB_MODES", "MetricsFileError", "MetricsLogger", "MetricsWriteError",
    "PhaseTimer", "flatten_metrics", "metrics_file", "read_metrics", "to_plain",
]
