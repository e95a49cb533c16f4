"""The Ray actor around :class:`PolicyWorker`: one process per data-parallel rank.

Created bare, then ``setup(master_addr, master_port)``: the group asks rank 0 for its address first
(on a multi-node cluster rank 0 may not be on the driver's node).
"""

from __future__ import annotations

import os

from torch import Tensor

from cispo.trainer import comm
from cispo.trainer.batch import TrainBatch
from cispo.config.trainer import TrainerConfig
from rollout.process_output import redirect_worker_output


class PolicyActor:
    """Plain class; :class:`~cispo.trainer.group.TrainerGroup` wraps it with ``ray.remote``."""

    def __init__(self, config: TrainerConfig, model_path: str, rank: int, ref_model_path: str | None = None):
        redirect_worker_output(f"trainer{rank}")
        config.validate()
        self.config = config
        self.model_path = model_path
        self.ref_model_path = ref_model_path
        self.rank = rank
        self.worker = None

    def address(self) -> tuple[str, int]:
        return comm.node_ip(), comm.free_port()

    def setup(self, master_addr: str, master_port: int) -> int:
        from cispo.trainer.worker import PolicyWorker

        os.environ["MASTER_ADDR"] = master_addr
        os.environ["MASTER_PORT"] = str(master_port)
        # Ray gives each actor its own accelerator (CUDA_VISIBLE_DEVICES), so the local index is 0.
        os.environ["LOCAL_RANK"] = "0"
        self.worker = PolicyWorker(self.config, self.model_path, rank=self.rank, ref_model_path=self.ref_model_path)
        return self.worker.threads

    def _ready(self):
        if self.worker is None:
            raise RuntimeError("PolicyActor.setup() was not called")
        return self.worker

    def compute_log_probs(self, batch: TrainBatch) -> Tensor:
        return self._ready().compute_log_probs(batch)

    def compute_log_probs_and_entropy(self, batch: TrainBatch) -> tuple[Tensor, Tensor]:
        return self._ready().compute_log_probs_and_entropy(batch)

    def update(self, batch: TrainBatch) -> dict[str, float]:
        return self._ready().update(batch)

    def export_weights(self) -> dict[str, Tensor] | None:
        """Collective under ZeRO-3; only rank 0 returns the weights (one copy through Ray)."""
        weights = self._ready().export_weights()
        return weights if self.rank == 0 else None

    def export_weights_packed(self) -> tuple[object, int]:
        """Like :meth:`export_weights`, as numpy arrays for the rollout actors to read zero-copy from
        Ray's object store (rank 0; None elsewhere), with their size in bytes. Called with
        ``num_returns=2`` the weights never pass through the driver: it forwards the reference."""
        from rollout.weight_format import pack_weights

        weights = self._ready().export_weights()
        if self.rank != 0:
            return None, 0
        packed = pack_weights(weights)
        return packed, sum(a.nbytes for a in packed.arrays.values())

    def open_weight_channel(self, spec: object) -> None:
        """Rank 0: host and join the collective weight channel (see ``cispo.driver.weights.CollectiveBroadcast``)."""
        self._ready().open_weight_channel(spec)

    def send_weights(self) -> dict[str, float]:
        """Stream one weight sync on the channel (every rank gathers; rank 0 sends)."""
        return self._ready().send_weights()

    def training_state(self) -> dict[str, dict[str, Tensor]]:
        return self._ready().training_state()

    def scheduler_state(self) -> dict[str, float]:
        return self._ready().scheduler_state()

    def save(self, directory: str) -> None:
        self._ready().save(directory)

    def load(self, directory: str) -> None:
        self._ready().load(directory)
