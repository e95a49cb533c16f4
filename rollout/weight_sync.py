"""In-place weight updates of a running vLLM engine.

`WeightSyncExtension` is injected into vLLM's worker (`LLM(worker_extension_cls=...)`) and called
with `llm.collective_rpc`. It uses vLLM's `reload_weights`, which reloads layer by layer and
re-runs the CPU/GPU weight processing (repacking), so kernels see the new values. What it loads
was validated first (`rollout.weight_format.ExpectedWeights`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rollout.weight_channel import WeightChannel
from rollout.weight_format import ExpectedWeights, WeightSyncError, from_safetensors_bytes


class WeightSyncExtension:
    """Mixed into vLLM's worker class; its methods run inside the worker (see module doc).

    The `cispo_channel_*` methods serve the collective channel (`rollout.weight_channel`): every
    worker of an engine (one per tensor-parallel rank) joins the trainer's group with its own rank
    and receives the full tensors; vLLM's loaders keep the shard each rank needs."""

    def cispo_channel_open(self, spec, rank_offset: int) -> int:  # noqa: ANN001 - a ChannelSpec
        """Join the weight channel as rank `rank_offset + this worker's rank`; return that rank."""
        old = getattr(self, "_cispo_channel", None)
        if old is not None:
            old.close()
        rank = rank_offset + int(getattr(self, "rank", 0))
        # gloo moves CPU tensors (vLLM's loaders copy them to the device); NCCL moves device tensors.
        device = getattr(self, "device", "cpu") if spec.backend == "nccl" else "cpu"
        self._cispo_channel = WeightChannel(spec, rank, device=device)
        return rank

    def cispo_channel_receive(self, expected: ExpectedWeights) -> dict[str, float]:
        """Receive one streamed sync: validate its manifest against `expected`, then reload the
        weights bucket by bucket through the same in-place path as `cispo_load_weights`."""
        channel = getattr(self, "_cispo_channel", None)
        if channel is None:
            raise WeightSyncError("this engine has not joined a weight channel (cispo_channel_open)")
        aliases: dict[str, list[str]] = {}

        def check(manifest) -> None:  # noqa: ANN001 - list[TensorSpec]
            aliases.update(expected.check_manifest((s.name, s.shape, s.dtype) for s in manifest))

        def with_aliases(stream):  # noqa: ANN001, ANN202 - iterator of (name, tensor)
            for name, t in stream:
                yield name, t
                for alias in aliases.get(name, ()):
                    yield alias, t

        started = False

        def load(stream) -> None:  # noqa: ANN001
            nonlocal started
            started = True
            try:
                self.reload_weights(weights_iterator=with_aliases(stream), is_checkpoint_format=True)
            except BaseException:
                self._cispo_finish_interrupted_reload()
                raise

        try:
            return channel.receive(check, load)
        except ValueError as e:
            if started:  # only a refusal before loading stays a ValueError ("nothing was loaded")
                raise WeightSyncError(f"streamed load failed part-way: {type(e).__name__}: {e}") from e
            raise

    def _cispo_finish_interrupted_reload(self) -> None:
        """vLLM's layerwise reload moves each layer to the meta device until all its weights have
        arrived; a stream cut part-way would leave layers there (the engine then fails on every
        forward). Finalising puts back the old tensors of layers that got nothing and processes the
        rest: the engine runs again, on a MIX of old and new weights, which the caller must replace
        with a full update before generating (RolloutEngine refuses to generate until then)."""
        try:
            from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

            runner = self.model_runner
            finalize_layerwise_reload(runner.get_model(), runner.vllm_config.model_config)
        except Exception:  # noqa: BLE001 - the engine stays marked stale either way
            pass

    def cispo_channel_close(self) -> None:
        channel = getattr(self, "_cispo_channel", None)
        if channel is not None:
            channel.close()
            self._cispo_channel = None

    def cispo_load_weights(self, payload: Mapping[str, torch.Tensor] | bytes) -> int:
        """Load a full, already validated update in place; return the number of tensors."""
        named = from_safetensors_bytes(payload) if isinstance(payload, (bytes, bytearray)) else payload
        # Group by layer so vLLM's layerwise reload processes each layer once, with few buffers.
        items = sorted(named.items(), key=lambda kv: kv[0])
        self.reload_weights(weights_iterator=iter(items), is_checkpoint_format=True)
        return len(items)
