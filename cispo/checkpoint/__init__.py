"""Atomic, verifiable checkpoints; RNG state capture; graceful stop on SIGTERM/SIGINT; the run-folder
lock. One module per concern:

- `layout`: every name inside a run folder (step folders, temp/trash folders, `latest`, the lock);
- `atomic`: the one atomic-write helper, fsync, and rename-then-delete;
- `manifest`: MANIFEST.json and `verify`;
- `manager`: `CheckpointManager` (commit, prune, start-up cleanup, resume choice);
- `rng`: global RNG states as JSON;
- `signals`: `GracefulStop`;
- `lock`: `RunLock`, single ownership of a run folder.

The public names below are what callers import (``from cispo.checkpoint import CheckpointManager``).
"""

from cispo.checkpoint.atomic import fsync_dir, fsync_file, remove_tree_atomic, write_bytes_atomic, write_text_atomic
from cispo.checkpoint.layout import (
    ATTEMPT_FILE,
    CHECKPOINTS_DIRNAME,
    LATEST_NAME,
    MANIFEST_NAME,
    STEP_DIR_RE,
    TMP_PREFIX,
    TRASH_PREFIX,
    parse_step,
    step_dir_name,
)
from cispo.checkpoint.manager import CheckpointInfo, CheckpointManager
from cispo.checkpoint.manifest import CheckpointError, build_manifest, file_sha256, verify
from cispo.checkpoint.rng import capture_rng_state, restore_rng_state
from cispo.checkpoint.signals import GracefulStop

__all__ = [
    "ATTEMPT_FILE",
    "CHECKPOINTS_DIRNAME",
    "LATEST_NAME",
    "MANIFEST_NAME",
    "STEP_DIR_RE",
    "TMP_PREFIX",
    "TRASH_PREFIX",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "GracefulStop",
    "build_manifest",
    "capture_rng_state",
    "file_sha256",
    "fsync_dir",
    "fsync_file",
    "parse_step",
    "remove_tree_atomic",
    "restore_rng_state",
    "step_dir_name",
    "verify",
    "write_bytes_atomic",
    "write_text_atomic",
]
