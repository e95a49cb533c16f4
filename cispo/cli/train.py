"""``python -m cispo.train [overrides]``: a training run from the Hydra configs in ``configs/``.

Examples::

    python -m cispo.train                                  # the default CPU job (CISPO, SmolLM2-135M)
    python -m cispo.train experiment=quick                 # tiny model, about a minute
    python -m cispo.train algorithm=dapo seed=1
    python -m cispo.train -m algorithm=cispo,dapo,grpo seed=0,1,2   # a comparison sweep
    python -m cispo.train run_dir=runs/my_run              # resumes runs/my_run if it has checkpoints
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
log = logging.getLogger("cispo")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _main(raw: DictConfig) -> None:
    from cispo.cli.user_errors import one_line_errors
    from cispo.config import load_config
    from cispo.driver.supervisor import train_with_recovery
    from cispo.tracking.console import configure_console_logging

    with one_line_errors(log, "invalid configuration: "):
        data = OmegaConf.to_container(raw, resolve=True)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # Each job of a sweep lives in its own numbered folder of the sweep (what cispo.compare reads).
        data["run_dir"] = hydra_cfg.runtime.output_dir
    with one_line_errors(log, "invalid configuration: "):
        cfg = load_config(data)
    configure_console_logging(cfg.logger.log_level)
    # A refused resume, a data file or row, a model, code that cannot be isolated: one line, exit 2,
    # before Ray starts (the data and the model are read first). Worker failures: rebuild and resume.
    with one_line_errors(log):
        run_dir = train_with_recovery(cfg)
    print(f"done: {run_dir} (metrics.jsonl, checkpoints/, train.log)", flush=True)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Name DeepSpeed's accelerator on machines without CUDA: it otherwise warns on every import that it
    # "was unable to detect" a GPU, which reads like a fault on a CPU run (the workers inherit it).
    if not _cuda_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    _main()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
