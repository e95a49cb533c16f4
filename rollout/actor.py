"""`RolloutActor`: the Ray shell around one `RolloutEngine` (one engine per actor process).

The class is plain; `RolloutGroup` turns it into a Ray actor with the resources of its config
(`ray.remote(num_cpus=...)(RolloutActor)`), so it stays testable and importable without Ray.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from rollout.config import EngineConfig, SamplingConfig
from rollout.engine import Prompt, RolloutEngine
from rollout.process_output import redirect_worker_output
from rollout.types import RolloutResult
from rollout.weight_format import PackedWeights, unpack_weights


class RolloutActor:
    """Holds an engine; weights arrive through the Ray object store (PackedWeights or safetensors bytes)."""

    def __init__(self, config: EngineConfig) -> None:
        redirect_worker_output("rollout")
        self.engine = RolloutEngine(config)

    def ready(self) -> dict[str, object]:
        """Cheap liveness probe; also tells which process and weights this actor has."""
        return {
            "pid": os.getpid(),
            "model_dir": str(self.engine.model_dir),
            "weight_version": self.engine.weight_version,
        }

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig,
        group_ids: Sequence[int] | None,
        prompt_offset: int,
    ) -> list[RolloutResult]:
        return self.engine.generate(prompts, sampling, group_ids=group_ids, prompt_offset=prompt_offset)

    def update_weights(self, payload: PackedWeights | bytes, timeout_s: float | None = None) -> dict[str, float]:
        weights = unpack_weights(payload) if isinstance(payload, PackedWeights) else payload
        return self.engine.update_weights(weights, timeout_s=timeout_s)

    def open_weight_channel(self, spec: object, rank_offset: int) -> list[int]:
        """Join the collective weight channel (see `RolloutEngine.open_weight_channel`)."""
        return self.engine.open_weight_channel(spec, rank_offset)

    def receive_weights(self, timeout_s: float | None = None) -> dict[str, float]:
        return self.engine.receive_weights(timeout_s=timeout_s)
