"""Send a worker process's stdout/stderr to a log file instead of the driver's console.

Ray forwards every line a worker prints to the driver; vLLM, DeepSpeed and torch print INFO lines,
progress bars and C++ warnings on every start and weight sync. When the driver sets
``CISPO_WORKER_LOG_DIR`` (``logger.log_level=warning``, the default), each worker calls
:func:`redirect_worker_output` first thing and writes into ``<dir>/<name>-<pid>.log``. Errors still
reach the driver as Ray exceptions with their tracebacks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOG_DIR_ENV = "CISPO_WORKER_LOG_DIR"


def redirect_worker_output(name: str) -> Path | None:
    """Point file descriptors 1 and 2 of this process at its log file; returns the file, or None when
    the driver did not ask for it (the output then reaches the console through Ray)."""
    folder = os.environ.get(LOG_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{name}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    return path
