"""The run folder's layout: every name the checkpoint code, the run lock and the start-up cleanup
agree on, in one place.

::

    run_dir/
        .owner.lock                 flock held by the live driver (see cispo.checkpoint.lock)
        .owner.json                 who holds it: host, driver pid, attempt id, worker pids
        checkpoints/
            step_00000004/          complete: renamed into place only after MANIFEST.json is written
                MANIFEST.json       every file: relative path, size, sha256
                ...                 whatever the caller wrote
            .tmp_step_00000006_<attempt>/   being written (or left over by a crash)
            .trash_step_00000002_<attempt>/ being deleted (renamed aside first, then removed)
            latest                  text file: "step_00000004"
"""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS_DIRNAME = "checkpoints"
MANIFEST_NAME = "MANIFEST.json"
LATEST_NAME = "latest"
TMP_PREFIX = ".tmp_"
TRASH_PREFIX = ".trash_"
STEP_DIR_FORMAT = "step_{:08d}"
STEP_DIR_RE = re.compile(r"^step_(\d{8,})$")
TMP_STEP_RE = re.compile(r"^\.tmp_step_(\d{8,})_[0-9A-Za-z-]+$")
ATTEMPT_FILE = ".attempt"
"""Inside a temp checkpoint folder: the id of the driver attempt writing it. Workers refuse to write
into a folder whose id is not theirs (a worker outliving a killed driver must not touch a new run)."""
LOCK_NAME = ".owner.lock"
OWNER_NAME = ".owner.json"


def step_dir_name(step: int) -> str:
    """Folder name of the checkpoint taken after `step` (zero-padded so names sort by step)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return STEP_DIR_FORMAT.format(step)


def parse_step(path: Path) -> int | None:
    """The step of a `step_NNNNNNNN` folder, or None if the name does not match."""
    match = STEP_DIR_RE.match(path.name)
    return int(match.group(1)) if match else None


def tmp_dir_name(step: int, attempt: str) -> str:
    """Name of the temp folder checkpoint `step` is written into by driver attempt `attempt`."""
    return f"{TMP_PREFIX}{step_dir_name(step)}_{attempt}"


def trash_name(name: str, attempt: str) -> str:
    """Name a folder is renamed to before it is deleted (so a half-deleted folder is never a `step_*`)."""
    return f"{TRASH_PREFIX}{name}_{attempt}"
