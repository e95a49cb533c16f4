"""``run_dir/batches.jsonl``: one line per step naming the prompts trained on (rows of the training
set) and the policy version that generated each group, so which data a run saw, and how stale it
was, can be audited after the fact (and a resumed run checked for skipped or repeated prompts).

Like ``metrics.jsonl``: a resumed run keeps the lines up to its checkpoint's step and moves later
ones (written after that checkpoint, before the kill) to ``batches.discarded.jsonl``; a fresh run
moves every old line there. Nothing is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cispo.checkpoint import write_text_atomic

BATCHES_FILENAME = "batches.jsonl"
DISCARDED_FILENAME = "batches.discarded.jsonl"


class BatchLog:
    def __init__(self, run_dir: str | Path, resume_step: int | None) -> None:
        self.path = Path(run_dir) / BATCHES_FILENAME
        if not self.path.exists():
            return
        keep, discard = [], []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                step = int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}:{n}: not a batch record ({e}); move the file aside to start over") from e
            (keep if resume_step is not None and step <= resume_step else discard).append(line)
        if discard:
            with open(self.path.parent / DISCARDED_FILENAME, "a") as f:
                f.write("".join(f"{line}\n" for line in discard))
            write_text_atomic(self.path, "".join(f"{line}\n" for line in keep))

    def write(self, step: int, groups: Sequence[Any], staleness: Sequence[int] | None) -> None:
        """``groups``: objects with ``prompt_index`` and ``policy_version`` (cispo.driver.loop.Group)."""
        record = {"step": step, "prompts": [int(g.prompt_index) for g in groups],
                  "policy_versions": [int(g.policy_version) for g in groups]}
        if staleness is not None:
            record["staleness"] = [int(s) for s in staleness]
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_batches(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / BATCHES_FILENAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
