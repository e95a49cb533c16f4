"""The built parts of one training run: run folder, Ray, rollout and trainer workers, the weight
broadcast between them, data, sampler, logger, checkpoints; and how they and the loop's state
(`cispo.driver.state.LoopState`) are saved and restored together."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cispo.driver.batch_log import BatchLog
from cispo.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state, write_text_atomic
from cispo.config import TrainConfig, to_dict
from cispo.tracking.console import LOG_LEVELS
from cispo.data import PromptRow, PromptSampler, encode_prompts, load_data
from cispo.data.loading import LoadedData
from cispo.evaluation.metrics import EvalMetrics
from cispo.evaluation.runner import evaluate_dataset
from cispo.driver.checkpoint_guard import checkpoint_write_guard
from cispo.driver.code_isolation import METRIC_KEY as CODE_ISOLATION_METRIC
from cispo.driver.code_isolation import code_isolation
from cispo.driver.handles import RolloutHandle, TrainerHandle
from cispo.driver.placement import bundle, release, reserve
from cispo.driver.state import LoopState
from cispo.tracking import MetricsLogger
from cispo.tracking.run_files import CONFIG_FILENAME as CONFIG_FILE
from cispo.driver.warmstart import warm_start
from cispo.driver.weights import WeightBroadcast, make_broadcast
from rollout.config import SamplingConfig
from rollout.process_output import LOG_DIR_ENV

log = logging.getLogger(__name__)

TRAINER_DIR = "trainer"
STATE_FILE = "trainer_state.json"


def worker_env(cfg: TrainConfig) -> dict[str, str]:
    """Environment of every Ray worker of the run: our packages importable, and (at the default log
    level) the workers' output sent to ``<run_dir>/logs/`` instead of the console."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
    if cfg.logger.log_level == "warning":
        env[LOG_DIR_ENV] = str(Path(cfg.run_dir).resolve() / "logs")
    return env


def init_ray(cfg: TrainConfig) -> bool:
    """Starts a local Ray (or joins ``ray.address``); returns True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, log_to_driver=True, logging_level=LOG_LEVELS[cfg.logger.log_level],
                 runtime_env={"env_vars": worker_env(cfg)})
    else:
        # A local cluster stays on the loopback interface: nothing leaves this machine.
        # address="local": always a new local cluster, never one another user left running.
        ray.init(address="local", num_cpus=cfg.ray.num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=True, _node_ip_address="127.0.0.1", logging_level=LOG_LEVELS[cfg.logger.log_level],
                 runtime_env={"env_vars": worker_env(cfg)})
    return True


def reserve_workers(cfg: TrainConfig) -> dict[str, Any]:
    """One placement group per worker group (None each when ``ray.placement_strategy`` is null)."""
    strategy = cfg.ray.placement_strategy
    if strategy is None:
        return {"trainer": None, "rollout": None}
    t, g = cfg.trainer, cfg.rollout.group
    return {
        "trainer": reserve("cispo-trainer", bundle(t.num_cpus_per_rank, t.num_gpus_per_rank, t.resources_per_rank),
                           t.world_size, strategy, cfg.ray.placement_timeout_s),
        "rollout": reserve("cispo-rollout", bundle(g.num_cpus_per_actor, g.num_gpus_per_actor, g.resources),
                           g.num_actors, strategy, cfg.ray.placement_timeout_s),
    }


@dataclass
class RunFolder:
    """The run folder, its checkpoints and the state of the checkpoint a run resumes from (if any)."""

    path: Path
    checkpoints: CheckpointManager
    resume_from: Path | None
    state: dict[str, Any] | None


def open_run_folder(cfg: TrainConfig) -> RunFolder:
    path = Path(cfg.run_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / CONFIG_FILE, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    checkpoints = CheckpointManager(path, keep_last=cfg.checkpoint.keep_last)
    resume_from = checkpoints.find_resume(cfg.checkpoint.resume)
    state = json.loads((resume_from / STATE_FILE).read_text()) if resume_from else None
    return RunFolder(path, checkpoints, resume_from, state)


def prepare_policy(cfg: TrainConfig, data: LoadedData) -> tuple[Path, Any]:
    """The starting policy's HF folder (built, or warm-started on the training task) and its tokenizer."""
    from transformers import AutoTokenizer

    from rollout.models import default_cache_dir, prepare_model

    model_path = prepare_model(cfg.model.path, cfg.model.cache_dir, dtype=cfg.model.dtype, seed=cfg.model.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if cfg.model.warmstart.steps:
        cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else default_cache_dir()
        model_path = warm_start(model_path, data.train, cfg.data.prompt, cfg.model.warmstart, cache)
    return model_path, tokenizer


def start_workers(cfg: TrainConfig, model_path: Path) -> tuple[TrainerHandle, RolloutHandle, dict[str, Any]]:
    """The trainer and rollout groups on their placement groups (Ray must be up)."""
    from cispo.trainer.group import TrainerGroup
    from rollout.group import RolloutGroup

    placement_groups = reserve_workers(cfg)
    ft = cfg.fault_tolerance
    trainer = TrainerGroup(cfg.trainer, model_path, placement_group=placement_groups["trainer"],
                           call_timeout_s=ft.call_timeout_s)
    engine_cfg = dataclasses.replace(cfg.rollout.engine, model=str(model_path))
    group_cfg = cfg.rollout.group if cfg.rollout.group.generate_timeout_s is not None else \
        dataclasses.replace(cfg.rollout.group, generate_timeout_s=ft.call_timeout_s)  # a hang is a failure
    rollout = RolloutGroup(engine_cfg, group_cfg, placement_group=placement_groups["rollout"])
    return trainer, rollout, placement_groups


def open_logger(cfg: TrainConfig, run_dir: Path, resume_step: int | None) -> MetricsLogger:
    return MetricsLogger(run_dir, wandb_mode=cfg.logger.wandb_mode, project=cfg.logger.project, run_name=cfg.name,
                         config=to_dict(cfg), console=cfg.logger.console, resume_step=resume_step,
                         total_steps=cfg.total_steps)


class Components:
    """Everything the loop drives, built in order: run folder, data, policy, Ray and the workers, the
    weight broadcast, the resumed state, the metrics logger. What the loop changes as it runs is in
    ``self.state``."""

    trainer: TrainerHandle
    rollout: RolloutHandle
    weights: WeightBroadcast
    state: LoopState

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        folder = open_run_folder(cfg)
        self.run_dir, self.checkpoints, self.resume_from = folder.path, folder.checkpoints, folder.resume_from
        self.data = load_data(cfg.data)
        log.info("data: %s", self.data.summary())
        # Before any worker starts: code rewards refuse to run where the sandbox cannot isolate them.
        self.code_isolation = code_isolation(cfg.reward, self.data)
        log.info("code rewards: isolation %s", self.code_isolation)
        self.model_path, self.tokenizer = prepare_policy(cfg, self.data)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.pad_token_id = int(pad)
        self.sampler: PromptSampler[PromptRow] = PromptSampler(self.data.train, seed=cfg.data.seed,
                                                              shuffle=cfg.data.shuffle)
        self.owns_ray = init_ray(cfg)
        self.trainer, self.rollout, self.placement_groups = start_workers(cfg, self.model_path)
        self.weights = make_broadcast(cfg.rollout.group.weight_sync, self.trainer, self.rollout)
        self.weights.connect()  # a wiring problem fails at start-up, not at the first sync
        self.state = LoopState.fresh(cfg.algorithm.keep_rate_memory)
        if folder.state is not None:
            self._restore(folder.state)
        start = self.state.start_step if folder.state is not None else None
        self.logger = open_logger(cfg, self.run_dir, start)
        self.logger.constant_metrics[CODE_ISOLATION_METRIC] = self.code_isolation
        self.batch_log = BatchLog(self.run_dir, start)
        if folder.state is not None and folder.state.get("metrics") and \
                (self.logger.last_record or {}).get("step", -1) < self.state.start_step:
            # Crash between the checkpoint and its metrics line: the checkpoint carries the line.
            self.logger.log(self.state.start_step, folder.state["metrics"])

    # ---- the pieces the loop calls ----------------------------------------------------------------
    def encode(self, rows: list[PromptRow]) -> list[list[int]]:
        return encode_prompts(self.tokenizer, rows, self.cfg.data.prompt)

    def train_sampling(self, seed: int) -> SamplingConfig:
        return dataclasses.replace(self.cfg.rollout.sampling, seed=seed)

    def evaluate(self, name: str) -> EvalMetrics:
        e = self.cfg.eval
        sampling = dataclasses.replace(self.cfg.rollout.sampling, n=e.k, temperature=e.temperature, top_p=e.top_p,
                                       max_tokens=e.max_tokens, seed=self.cfg.seed)
        return evaluate_dataset(self.rollout, self.tokenizer, self.data.eval[name], prompt_cfg=self.cfg.data.prompt,
                                sampling=sampling, reward_cfg=self.cfg.reward)

    # ---- checkpoint / resume ----------------------------------------------------------------------
    def data_state(self) -> dict[str, Any]:
        """Where the data stream stands: sampler position (with retired prompts) and keep-rate estimate."""
        return {"sampler": self.sampler.state_dict(), "consumed_prompts": self.sampler.consumed,
                "keep_rate": self.state.keep_rate.state_dict()}

    def save(self, step: int, metrics: dict[str, Any] | None = None,
             data_state: dict[str, Any] | None = None) -> Path | None:
        """The checkpoint of `step`; None when it could not be written and on_checkpoint_error=skip.
        ``data_state``: the data stream as of step `step`'s batch (the asynchronous producer has drawn
        further); default: as it is now."""
        guard = checkpoint_write_guard(self.cfg.fault_tolerance, step, self.logger.constant_metrics)
        with guard, self.checkpoints.writing(step) as tmp:
            self.trainer.save(tmp / TRAINER_DIR)
            state = {"step": step, "elapsed": self.state.elapsed, **(data_state or self.data_state()),
                     "rng": capture_rng_state(), "metrics": metrics or {}}
            (tmp / STATE_FILE).write_text(json.dumps(state))
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        return None if guard.skipped else self.checkpoints.path_for(step)

    def _restore(self, state: dict[str, Any]) -> None:
        assert self.resume_from is not None
        log.info("resuming from %s (step %d)", self.resume_from, state["step"])
        self.trainer.load(self.resume_from / TRAINER_DIR)
        self.weights.load()
        self.sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"])
        self.state = LoopState.resumed(state, self.cfg.algorithm.keep_rate_memory)

    # ---- lifetime ---------------------------------------------------------------------------------
    def __enter__(self) -> "Components":
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.close()
        for part in (self.rollout, self.trainer):
            try:
                part.shutdown()
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.exception("shutdown of %s failed", type(part).__name__)
        for pg in self.placement_groups.values():
            release(pg)
        if self.owns_ray:
            import ray

            ray.shutdown()


def build_components(cfg: TrainConfig) -> Components:
    return Components(cfg)
