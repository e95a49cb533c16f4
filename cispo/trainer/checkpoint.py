"""Save / load of one trainer for exact resume.

Layout inside the folder the caller gives (``checkpoints/step_N/`` from ``cispo.checkpoint``)::

    model/    HF format (config, safetensors, tokenizer): loadable by transformers and vLLM
    engine/   DeepSpeed state: fp32 master weights, optimizer moments, LR scheduler, step counters

``model/`` is for serving and evaluation; resume reads ``engine/`` only, which holds the fp32
masters (under bf16 the HF weights are the rounded copies). Every rank must call both functions.

The worker is described by the `SavableWorker` protocol (what these functions use), not imported:
`cispo.trainer.worker` imports this module, so this one must not import it back.

A worker writes only into a folder that already exists and carries the attempt id the driver's
`CheckpointManager` put there (`.attempt`): it never creates the checkpoint folder itself. A worker
that outlives its killed driver therefore cannot recreate or fill a temp folder the next driver has
already cleaned away (seen: a trainer rank finishing its optimizer-state write 2 s after the kill).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from cispo.checkpoint.layout import ATTEMPT_FILE
from cispo.trainer import comm

ENGINE_DIR = "engine"
MODEL_DIR = "model"
ENGINE_TAG = "state"
# Files of the source model folder that are not weights: copied so model/ is self-contained.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class StaleCheckpointFolderError(RuntimeError):
    """The folder to save into is gone or belongs to another driver attempt: this worker's driver is
    dead (or was replaced), so it must not write."""


class SavableWorker(Protocol):
    """What save/load need from a policy worker (`cispo.trainer.worker.PolicyWorker` has it)."""

    rank: int
    engine: Any
    hf_model: Any
    model_path: Path
    skipped_steps_total: int
    config: Any  # a TrainerConfig

    def export_weights(self) -> Any: ...


def _attempt_holder(root: Path) -> Path | None:
    """The folder carrying the driver's attempt id (`root` or its parent), or None for a standalone
    save (a test or a script saving into a folder of its own)."""
    for folder in (root, root.parent):
        if (folder / ATTEMPT_FILE).is_file():
            return folder
    return None


def _check_still_ours(root: Path, holder: Path | None, attempt: str | None) -> None:
    """Raise unless the folder we were asked to write into is still there and still our attempt's."""
    if holder is None:
        if not root.parent.is_dir():
            raise StaleCheckpointFolderError(
                f"{root.parent} does not exist: the driver that asked for this save is gone (or cleaned its "
                "folder), so nothing is written")
        return
    try:
        current = (holder / ATTEMPT_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        current = None
    if current != attempt:
        raise StaleCheckpointFolderError(
            f"{holder} is gone or now belongs to another driver attempt ({current!r}, expected {attempt!r}); "
            "nothing more is written")


def save_worker(worker: SavableWorker, directory: str | os.PathLike) -> Path:
    """Write `model/` (rank 0) and `engine/` (every rank) into `directory`. Inside a checkpoint being
    committed, the attempt id found in `directory` or its parent must stay the same throughout."""
    root = Path(directory)
    holder = _attempt_holder(root)
    attempt = None if holder is None else (holder / ATTEMPT_FILE).read_text(encoding="utf-8").strip()
    _check_still_ours(root, holder, attempt)
    weights = worker.export_weights()
    if worker.rank == 0:
        _check_still_ours(root, holder, attempt)
        root.mkdir(exist_ok=True)  # never parents: the caller's folder must already exist
        model_dir = root / MODEL_DIR
        model_dir.mkdir(exist_ok=True)
        worker.hf_model.save_pretrained(str(model_dir), state_dict=weights)
        for src in worker.model_path.iterdir():
            if src.is_file() and not src.name.endswith(WEIGHT_SUFFIXES) and not (model_dir / src.name).exists():
                shutil.copy2(src, model_dir / src.name)
    comm.barrier()
    _check_still_ours(root, holder, attempt)
    client_state = {"skipped_steps_total": worker.skipped_steps_total}
    worker.engine.save_checkpoint(str(root / ENGINE_DIR), tag=ENGINE_TAG, client_state=client_state,
                                  save_latest=False)
    comm.barrier()
    return root


def load_worker(worker: SavableWorker, directory: str | os.PathLike) -> None:
    """Restore the engine state (fp32 masters, optimizer, scheduler, counters) saved by `save_worker`."""
    engine_dir = Path(directory) / ENGINE_DIR
    if not (engine_dir / ENGINE_TAG).is_dir():
        raise ValueError(f"{str(engine_dir / ENGINE_TAG)!r} does not exist: not a trainer checkpoint "
                         f"(expected the folder written by PolicyWorker.save)")
    path, client_state = worker.engine.load_checkpoint(str(engine_dir), tag=ENGINE_TAG, load_optimizer_states=True,
                                                       load_lr_scheduler_states=True)
    if path is None:
        raise ValueError(f"DeepSpeed found no checkpoint in {str(engine_dir)!r}")
    worker.skipped_steps_total = int((client_state or {}).get("skipped_steps_total", 0))


# ---- what a resume must reproduce exactly (the tests compare these across a save/load) ----


def training_state(worker: SavableWorker) -> dict[str, dict[str, Tensor]]:
    """fp32 master weights and Adam moments per parameter name (collective under ZeRO-3);
    for checking that a resume is exact."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    out: dict[str, dict[str, Tensor]] = {}
    opt = worker.engine.optimizer
    fp32_of = {}
    if worker.config.zero_stage == 0 and hasattr(opt, "fp32_groups"):  # bf16 ZeRO-0 keeps fp32 copies
        for low, high in zip(opt.fp16_groups, opt.fp32_groups):
            fp32_of.update({id(p): q for p, q in zip(low, high)})
    base = getattr(opt, "optimizer", opt)
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state") and base.state:
        # DeepSpeed links Adam moments to parameters after the first param group's first step,
        # before torch lazily creates the other groups' state (and a load replaces it): relink.
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()
    for name, p in worker.hf_model.named_parameters():
        master = safe_get_full_fp32_param(p)
        if master is not None:
            entry = {"param": master}
            entry.update({k: safe_get_full_optimizer_state(p, k) for k in ("exp_avg", "exp_avg_sq")})
        else:
            q = fp32_of.get(id(p), p)
            state = base.state.get(q, {})
            entry = {"param": q.detach()}
            entry.update({k: state[k] for k in ("exp_avg", "exp_avg_sq") if k in state})
        out[name] = {k: v.detach().float().cpu().clone() for k, v in entry.items() if v is not None}
    return out

def scheduler_state(worker: SavableWorker) -> dict[str, float]:
    sched = worker.engine.lr_scheduler
    return {"last_epoch": float(sched.last_epoch), "lr": float(worker.engine.get_lr()[0]),
            "global_step": float(int(worker.engine.global_steps))}
