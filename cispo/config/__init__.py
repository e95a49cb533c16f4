"""Every schema of a training run, as typed dataclasses (the source of `configs/base.yaml`), and the
strict conversion of a composed Hydra config into them.

- `schema`: mapping -> dataclass conversion with one-line errors naming the key;
- `root`: `TrainConfig` (the whole tree), derived keys, `load_config` and its cross-section rules;
- `sections`: model, algorithm, eval, logger, ray, checkpoint (and the warm start);
- `trainer`, `data`, `fault_tolerance`: the trainer's, the data's and in-run recovery's sections.

The rollout and reward sections are defined in `rollout.config` and `rewards.config` (those packages
stand alone). This package imports no other part of cispo but the algorithm registries it checks
names against (`cispo.algorithms`).
"""

from cispo.config.fault_tolerance import FaultToleranceConfig
from cispo.config.root import DERIVED_KEYS, RolloutConfig, TrainConfig, load_config
from cispo.config.schema import ConfigError, from_mapping, to_dict
from cispo.config.sections import (
    AlgorithmConfig,
    CheckpointConfig,
    EvalConfig,
    LoggerConfig,
    ModelConfig,
    RayConfig,
    WarmStartConfig,
)

__all__ = [
    "DERIVED_KEYS", "AlgorithmConfig", "CheckpointConfig", "ConfigError", "EvalConfig", "FaultToleranceConfig",
    "LoggerConfig", "ModelConfig", "RayConfig", "RolloutConfig", "TrainConfig", "WarmStartConfig", "from_mapping",
    "load_config", "to_dict",
]
