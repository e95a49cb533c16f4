"""Save / load of one trainer for exact resume.

Layout inside the folder the caller gives (``checkpoints/step_N/`` from ``cispo.checkpoint``)::

    model/    HF format (config, safetensors, tokenizer): loadable by transformers and vLLM
    engine/   DeepSpeed state: fp32 master weights, optimizer moments, LR scheduler, step counters

``model/`` is for serving and evaluation; resume reads ``engine/`` only, which holds the fp32
masters (under bf16 the HF weights are the rounded copies). Every rank must call both functions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cispo.trainer import comm

if TYPE_CHECKING:
    from cispo.trainer.worker import PolicyWorker

ENGINE_DIR = "engine"
MODEL_DIR = "model"
ENGINE_TAG = "state"
# Files of the source model folder that are not weights: copied so model/ is self-contained.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def save_worker(worker: "PolicyWorker", directory: str | os.PathLike) -> Path:
    root = Path(directory)
    weights = worker.export_weights()
    if worker.rank == 0:
        model_dir = root / MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        worker.hf_model.save_pretrained(str(model_dir), state_dict=weights)
        for src in worker.model_path.iterdir():
            if src.is_file() and not src.name.endswith(WEIGHT_SUFFIXES) and not (model_dir / src.name).exists():
                shutil.copy2(src, model_dir / src.name)
    comm.barrier()
    client_state = {"skipped_steps_total": worker.skipped_steps_total}
    worker.engine.save_checkpoint(str(root / ENGINE_DIR), tag=ENGINE_TAG, client_state=client_state,
                                  save_latest=False)
    comm.barrier()
    return root


def load_worker(worker: "PolicyWorker", directory: str | os.PathLike) -> None:
    engine_dir = Path(directory) / ENGINE_DIR
    if not (engine_dir / ENGINE_TAG).is_dir():
        raise ValueError(f"{str(engine_dir / ENGINE_TAG)!r} does not exist: not a trainer checkpoint "
                         f"(expected the folder written by PolicyWorker.save)")
    path, client_state = worker.engine.load_checkpoint(str(engine_dir), tag=ENGINE_TAG, load_optimizer_states=True,
                                                       load_lr_scheduler_states=True)
    if path is None:
        raise ValueError(f"DeepSpeed found no checkpoint in {str(engine_dir)!r}")
    worker.skipped_steps_total = int((client_state or {}).get("skipped_steps_total", 0))
