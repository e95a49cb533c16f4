"""N policy ranks (Ray actors) addressed as one trainer.

The driver hands the whole rollout batch to :meth:`TrainerGroup.update`; the group cuts every
mini-batch into ``world_size`` equal contiguous slices, so rank r holds slice r of each mini-batch,
in mini-batch order. Each rank then sees the same number of mini-batches and the global loss
normaliser (all-reduced inside the workers) makes the result independent of this split.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from cispo.trainer.batch import TrainBatch
from cispo.config.trainer import TrainerConfig


def update_shards(batch: TrainBatch, cfg: TrainerConfig) -> list[list[int]]:
    """Row indices of each rank for one update; raises ValueError naming the key that does not fit."""
    rows, world, mini = len(batch), cfg.world_size, cfg.mini_batch_size
    if rows % mini:
        raise ValueError(f"the batch has {rows} rows; trainer.mini_batch_size={mini} must divide it")
    per_rank = mini // world
    shards: list[list[int]] = [[] for _ in range(world)]
    for start in range(0, rows, mini):
        for r in range(world):
            shards[r].extend(range(start + r * per_rank, start + (r + 1) * per_rank))
    if cfg.resolved_agg() == "prompt-mean" and world > 1:
        owner: dict[tuple[int, int], int] = {}
        for r, shard in enumerate(shards):
            for i in shard:
                key = (i // mini, int(batch.group_ids[i]))
                if owner.setdefault(key, r) != r:
                    raise ValueError(
                        f"agg=prompt-mean: prompt group {key[1]} would be split across ranks; make "
                        f"trainer.mini_batch_size / trainer.world_size = {per_rank} a multiple of the group size "
                        "and keep each group's rows contiguous")
    return shards


def even_shards(rows: int, world: int) -> list[list[int]]:
    if rows < world:
        raise ValueError(f"the batch has {rows} rows; trainer.world_size={world} ranks need at least one each")
    return [chunk.tolist() for chunk in torch.arange(rows).chunk(world)]


class TrainerGroup:
    """``world_size`` :class:`~cispo.trainer.actor.PolicyActor` processes forming one DeepSpeed group.

    Needs ``ray.init()`` first (the driver owns the cluster). The config is validated before any
    actor starts.
    """

    def __init__(self, config: TrainerConfig, model_path: str | os.PathLike, *,
                 ref_model_path: str | os.PathLike | None = None, placement_group=None,  # noqa: ANN001
                 call_timeout_s: float | None = None):
        """``placement_group``: rank r runs in its bundle r (one bundle per rank, made by the caller).
        ``call_timeout_s``: the longest any call into the ranks may take (None: no limit); a call that
        takes longer raises ``ray.exceptions.GetTimeoutError`` (a hung rank is a failed rank)."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from cispo.trainer.actor import PolicyActor

        config.validate()
        self.config = config
        self.call_timeout_s = call_timeout_s
        if not ray.is_initialized():
            raise RuntimeError("TrainerGroup needs a running Ray cluster: call ray.init() first")
        remote = ray.remote(num_cpus=config.num_cpus_per_rank, num_gpus=config.num_gpus_per_rank)(PolicyActor)

        def placed(rank: int):  # noqa: ANN202 - a Ray actor class with options
            if placement_group is not None:
                return remote.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group, placement_group_bundle_index=rank))
            return remote.options(resources=config.resources_per_rank) if config.resources_per_rank else remote

        ref = None if ref_model_path is None else str(ref_model_path)
        self.actors = [placed(rank).remote(config, str(model_path), rank, ref) for rank in range(config.world_size)]
        addr, port = ray.get(self.actors[0].address.remote(), timeout=config.setup_timeout_s)
        ray.get([a.setup.remote(addr, port) for a in self.actors], timeout=config.setup_timeout_s)

    def _all(self, method: str, *args) -> list:
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors], timeout=self.call_timeout_s)

    def compute_log_probs(self, batch: TrainBatch) -> Tensor:
        """Per-token log-probs [B, T] of the whole batch (rows split evenly over ranks)."""
        import ray

        shards = even_shards(len(batch), self.config.world_size)
        parts = ray.get([a.compute_log_probs.remote(batch.select(s)) for a, s in zip(self.actors, shards)],
                        timeout=self.call_timeout_s)
        return torch.cat(parts)

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """One policy update over the whole batch; returns the (rank-0, already global) metrics."""
        import ray

        batch.validate()
        shards = update_shards(batch, self.config)
        metrics = ray.get([a.update.remote(batch.select(s)) for a, s in zip(self.actors, shards)],
                          timeout=self.call_timeout_s)
        return metrics[0]

    def export_weights(self) -> dict[str, Tensor]:
        return self._all("export_weights")[0]

    def export_weights_ref(self) -> tuple[object, int]:
        """A Ray ObjectRef to rank 0's weights as ``PackedWeights`` and their size in bytes: what
        ``RolloutGroup.update_weights`` takes without fetching the weights into this process."""
        import ray

        pairs = [a.export_weights_packed.options(num_returns=2).remote() for a in self.actors]
        # waits for every rank (collective under ZeRO-3)
        sizes = ray.get([size for _, size in pairs], timeout=self.call_timeout_s)
        return pairs[0][0], sizes[0]

    # ---- the collective weight channel (driven by `cispo.driver.weights.CollectiveBroadcast`) ----
    def weight_channel_address(self) -> tuple[str, int]:
        """Host and a free port of rank 0, where the channel's store will listen."""
        import ray

        host, port = ray.get(self.actors[0].address.remote(), timeout=self.config.setup_timeout_s)
        return host, int(port)

    def open_weight_channel(self, spec: object) -> object:
        """Rank 0 hosts and joins the channel described by `spec`; returns the pending Ray call (it
        completes when every member has joined)."""
        return self.actors[0].open_weight_channel.remote(spec)

    def send_weights(self) -> tuple[object, ...]:
        """Start one streamed sync: every rank gathers, rank 0 sends; the pending Ray calls."""
        return tuple(a.send_weights.remote() for a in self.actors)

    def save(self, directory: str | os.PathLike) -> None:
        self._all("save", str(directory))

    def load(self, directory: str | os.PathLike) -> None:
        self._all("load", str(directory))

    def training_state(self) -> dict[str, dict[str, Tensor]]:
        return self._all("training_state")[0]

    def scheduler_state(self) -> dict[str, float]:
        return self._all("scheduler_state")[0]

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
