"""The typed schema of a training run: every Hydra config is converted into :class:`TrainConfig`
at start-up, so a wrong key or value fails before Ray, vLLM or DeepSpeed start."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cispo.config.data import DataConfig
from cispo.config.fault_tolerance import FaultToleranceConfig
from cispo.config.identity import is_identity_key, is_restored_on_resume
from cispo.config.sections import (
    AlgorithmConfig,
    CheckpointConfig,
    EvalConfig,
    LoggerConfig,
    ModelConfig,
    RayConfig,
)
from cispo.config.schema import ConfigError, Schema, from_mapping, to_dict
from cispo.config.trainer import TrainerConfig
from rewards import RewardConfig
from rollout.config import EngineConfig, GroupConfig, SamplingConfig


@dataclass
class RolloutConfig(Schema):
    mode: Literal["sync", "async"] = "sync"
    """``sync``: generate -> update -> sync, one after the other. ``async``: a producer keeps generating
    the next steps' batches with the weights the engines have while the trainer updates, up to
    ``algorithm.max_staleness`` policy versions behind (PipelineRL, slime's train_async, AReaL); weights
    are queued to the engines without waiting for them to drain. Pays when rollout and trainer have
    their own devices; on one 2-core CPU both phases already use every core, so ``sync`` is the default."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    group: GroupConfig = field(default_factory=GroupConfig)

    # The sync/async loop defines the run; how responses are sampled is declared by rollout's own schemas
    # (`SamplingConfig`, `EngineConfig`); engine, group and weight-channel settings only place and move the work.
    IDENTITY_KEYS = frozenset({"mode"})


DERIVED_KEYS = frozenset({
    "trainer.batch_size", "trainer.seed", "trainer.total_steps",
    "rollout.sampling.n", "rollout.sampling.seed",
    "rollout.engine.model", "rollout.engine.dtype", "rollout.engine.seed",
})
"""Keys computed from others at load time (batch = prompts_per_step x group_size, the LR schedule's
length in optimizer steps, the engine's model and seeds); a config that sets one is refused."""


@dataclass
class TrainConfig(Schema):
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

    # The seed and the batch geometry; the reward definition is declared by `rewards.RewardConfig` itself.
    IDENTITY_KEYS = frozenset({"seed", "prompts_per_step", "group_size"})

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size

    def validate(self) -> None:
        for key in ("total_steps", "prompts_per_step", "group_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: expected an integer >= 1")


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at ``a.b.c`` in a nested mapping, or `_MISSING`."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _count_at(data: Mapping[str, Any], dotted: str, default: int) -> int:
    """A count the derived keys are computed from; a value that is not an integer >= 1 counts as the
    default here (its own check names it when the section is built)."""
    value = _at(data, dotted)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return value if ok else default


def derived_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The values of `DERIVED_KEYS`, computed from the mapping before any section is built, so that every
    section is valid as constructed (the LR schedule counts optimizer steps: one per mini-batch per PPO
    epoch of every RL step)."""
    top, trainer, model = TrainConfig.__dataclass_fields__, TrainerConfig.__dataclass_fields__, \
        ModelConfig.__dataclass_fields__
    seed = _at(data, "seed")
    seed = top["seed"].default if seed is _MISSING else seed
    batch = _count_at(data, "prompts_per_step", top["prompts_per_step"].default) * \
        _count_at(data, "group_size", top["group_size"].default)
    mini = _count_at(data, "trainer.mini_batch_size", trainer["mini_batch_size"].default)
    updates_per_step = _count_at(data, "trainer.ppo_epochs", trainer["ppo_epochs"].default) * max(1, batch // mini)
    path, dtype = _at(data, "model.path"), _at(data, "model.dtype")
    return {
        "trainer.batch_size": batch, "trainer.seed": seed,
        "trainer.total_steps": _count_at(data, "total_steps", top["total_steps"].default) * updates_per_step,
        "rollout.sampling.n": _count_at(data, "group_size", top["group_size"].default),
        "rollout.sampling.seed": seed, "rollout.engine.seed": seed,
        "rollout.engine.model": model["path"].default if path is _MISSING else path,
        "rollout.engine.dtype": model["dtype"].default if dtype is _MISSING else dtype,
    }


def _with(data: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the nested mapping with ``values`` (dotted keys) set."""
    out = dict(data)
    for dotted, value in values.items():
        node = out
        *sections, key = dotted.split(".")
        for part in sections:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        node[key] = value
    return out


def _check_allowed_changes(keys: list[str]) -> None:
    """Every key of ``checkpoint.allow_changes`` must be an identity key whose new value a resume can use."""
    for key in keys:
        if not is_identity_key(key, TrainConfig):
            raise ConfigError(f"checkpoint.allow_changes: {key!r} is not an identity key (other keys may change on "
                              "resume without it; the identity keys are listed in docs/checkpoints.md)")
        if is_restored_on_resume(key, TrainConfig):
            raise ConfigError(f"checkpoint.allow_changes: {key!r} cannot change on resume: the checkpoint's optimizer "
                              "and LR-scheduler state restore it; start a new run_dir to train with another value")


def load_config(data: Mapping[str, Any]) -> TrainConfig:
    """Converts a composed Hydra config (as a plain mapping): refuses derived keys, computes them, builds
    every section (each checks its own values) and checks the rules that span sections."""
    data = {k: v for k, v in data.items() if k != "hydra"}
    for dotted in sorted(DERIVED_KEYS):
        value = _at(data, dotted)
        if value is not _MISSING:
            raise ConfigError(f"{dotted}={value!r} is derived (from prompts_per_step, group_size, seed, "
                              "total_steps, model.path and model.dtype); remove it from the config")
    cfg = from_mapping(TrainConfig, _with(data, derived_values(data)))
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
    _check_allowed_changes(cfg.checkpoint.allow_changes)
    if cfg.eval.sets is None:  # each data preset brings its own eval sets
        cfg.eval = dataclasses.replace(cfg.eval, sets=list(cfg.data.eval))
    unknown_sets = [s for s in cfg.eval.sets if s not in cfg.data.eval]
    if unknown_sets:
        raise ConfigError(f"eval.sets={cfg.eval.sets}: {unknown_sets} not defined in data.eval "
                          f"(defined: {sorted(cfg.data.eval)})")
    return cfg


__all__ = ["ConfigError", "RolloutConfig", "TrainConfig", "load_config", "to_dict"]
