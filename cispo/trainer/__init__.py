"""The policy trainer: DeepSpeed workers (ZeRO 0-3, fp32/bf16) as plain classes and Ray actors.

``PolicyWorker`` is one rank; ``PolicyActor`` wraps it in Ray; ``TrainerGroup`` drives N ranks as
one. See ``docs/trainer.md``.
"""

from cispo.trainer.batch import TrainBatch
from cispo.config.trainer import TrainerConfig

__all__ = ["PolicyActor", "PolicyWorker", "TrainBatch", "TrainerConfig", "TrainerGroup"]


def __getattr__(name: str):
    # DeepSpeed, transformers and Ray are heavy imports: load them on first use only.
    if name == "PolicyWorker":
        from cispo.trainer.worker import PolicyWorker

        return PolicyWorker
    if name == "PolicyActor":
        from cispo.trainer.actor import PolicyActor

        return PolicyActor
    if name == "TrainerGroup":
        from cispo.trainer.group import TrainerGroup

        return TrainerGroup
    raise AttributeError(f"module 'cispo.trainer' has no attribute {name!r}")
