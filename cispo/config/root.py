"""The typed schema of a training run: every Hydra config is converted into :class:`TrainConfig`
at start-up, so a wrong key or value fails before Ray, vLLM or DeepSpeed start."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cispo.config.data import DataConfig
from cispo.config.fault_tolerance import FaultToleranceConfig
from cispo.config.sections import (
    AlgorithmConfig,
    CheckpointConfig,
    EvalConfig,
    LoggerConfig,
    ModelConfig,
    RayConfig,
)
from cispo.config.schema import ConfigError, from_mapping, to_dict
from cispo.config.trainer import TrainerConfig
from rewards import RewardConfig
from rollout.config import EngineConfig, GroupConfig, SamplingConfig


@dataclass
class RolloutConfig:
    mode: Literal["sync", "async"] = "sync"
    """``sync``: generate -> update -> sync, one after the other. ``async``: a producer keeps generating
    the next steps' batches with the weights the engines have while the trainer updates, up to
    ``algorithm.max_staleness`` policy versions behind (PipelineRL, slime's train_async, AReaL); weights
    are queued to the engines without waiting for them to drain. Pays when rollout and trainer have
    their own devices; on one 2-core CPU both phases already use every core, so ``sync`` is the default."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    group: GroupConfig = field(default_factory=GroupConfig)


DERIVED_KEYS = frozenset({
    "trainer.batch_size", "trainer.seed", "trainer.total_steps",
    "rollout.sampling.n", "rollout.sampling.seed",
    "rollout.engine.model", "rollout.engine.dtype", "rollout.engine.seed",
})
"""Keys computed from others at load time (batch = prompts_per_step x group_size, the LR schedule's
length in optimizer steps, the engine's model and seeds); a config that sets one is refused."""


@dataclass
class TrainConfig:
    name: str = "${algorithm.name}_s${seed}"
    """Label of the run (Hydra interpolation: the algorithm and the seed)."""
    run_dir: str = "runs/${now:%Y-%m-%d_%H-%M-%S}_${name}"
    """Everything the run writes lives here; a folder with checkpoints resumes (checkpoint.resume=auto)."""
    seed: int = 0
    """Seeds the model's init (built-in models), sampling, the data order and the trainer."""
    total_steps: int = 10
    """RL steps (rollout batch -> update -> weight sync)."""
    prompts_per_step: int = 8
    """Prompt groups per rollout batch; each gets ``group_size`` responses."""
    group_size: int = 8
    """G: responses sampled per prompt."""
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size


def load_config(data: Mapping[str, Any]) -> TrainConfig:
    """Converts a composed Hydra config (as a plain mapping) and checks cross-section rules."""
    data = {k: v for k, v in data.items() if k != "hydra"}
    cfg = from_mapping(TrainConfig, data)
    for key in ("total_steps", "prompts_per_step", "group_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: expected an integer >= 1")
    for dotted in sorted(DERIVED_KEYS):
        section, _, key = dotted.rpartition(".")
        node: Any = data
        for part in section.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and key in node:
            raise ConfigError(f"{dotted}={node[key]!r} is derived (from prompts_per_step, group_size, seed, "
                              "total_steps, model.path and model.dtype); remove it from the config")
    # The LR schedule counts optimizer steps: one per mini-batch per PPO epoch of every RL step.
    updates_per_step = cfg.trainer.ppo_epochs * max(1, cfg.batch_size // max(1, cfg.trainer.mini_batch_size))
    cfg.trainer = dataclasses.replace(cfg.trainer, batch_size=cfg.batch_size, seed=cfg.seed,
                                      total_steps=cfg.total_steps * updates_per_step)
    cfg.rollout.sampling = dataclasses.replace(cfg.rollout.sampling, n=cfg.group_size)
    cfg.rollout.engine = dataclasses.replace(cfg.rollout.engine, model=cfg.model.path, dtype=cfg.model.dtype,
                                             seed=cfg.seed)
    for section, obj in (("trainer", cfg.trainer), ("rollout.engine", cfg.rollout.engine),
                         ("rollout.sampling", cfg.rollout.sampling), ("rollout.group", cfg.rollout.group)):
        try:
            obj.validate()
        except ValueError as err:
            raise ConfigError(f"{section}: {err}") from err
    if cfg.algorithm.name != cfg.trainer.loss:
        raise ConfigError(f"trainer.loss={cfg.trainer.loss!r} but algorithm.name={cfg.algorithm.name!r}: a run is "
                          f"labelled by the loss it trains with; select the preset (algorithm={cfg.trainer.loss}) or "
                          f"set algorithm.name={cfg.trainer.loss}")
    if cfg.algorithm.old_log_probs == "rollout" and cfg.rollout.engine.logprobs_mode != "raw_logprobs":
        raise ConfigError("algorithm.old_log_probs=rollout needs rollout.engine.logprobs_mode=raw_logprobs (the "
                          f"policy's own log-probs), got {cfg.rollout.engine.logprobs_mode!r}")
    if cfg.rollout.mode == "async":
        if cfg.rollout.group.weight_sync != "object_store":
            raise ConfigError(f"rollout.mode=async needs rollout.group.weight_sync=object_store (a queued update), got "
                              f"{cfg.rollout.group.weight_sync!r}: a streamed update would wait for the engines to "
                              "finish generating")
        if cfg.algorithm.max_staleness > 0 and cfg.algorithm.old_log_probs != "rollout":
            raise ConfigError(f"rollout.mode=async with algorithm.max_staleness={cfg.algorithm.max_staleness} needs "
                              "algorithm.old_log_probs=rollout: the behaviour policy of a stale sample is the engine's "
                              "(an older version), and only the engine's own log-probs are that policy's; a trainer "
                              "recompute would give the current policy's instead")
    unknown_sets = [s for s in cfg.eval.sets if s not in cfg.data.eval]
    if unknown_sets:
        raise ConfigError(f"eval.sets={cfg.eval.sets}: {unknown_sets} not defined in data.eval "
                          f"(defined: {sorted(cfg.data.eval)})")
    return cfg


__all__ = ["ConfigError", "RolloutConfig", "TrainConfig", "load_config", "to_dict"]
