"""In-place weight updates of a running vLLM engine, and the checks done before any tensor moves.

`WeightSyncExtension` is injected into vLLM's worker (`LLM(worker_extension_cls=...)`) and called
with `llm.collective_rpc`. It uses vLLM's `reload_weights`, which reloads layer by layer and
re-runs the CPU/GPU weight processing (repacking), so kernels see the new values.

The engine validates names and shapes first (`ExpectedWeights.check`): vLLM's loaders raise
obscure KeyErrors on unknown names and silently keep old values for missing ones, and a layer
loaded only in part (q_proj without k_proj) would be left half-initialised. So an update must
name every weight of the checkpoint, with the checkpoint's shapes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

WeightsLike = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]


class WeightSyncError(RuntimeError):
    """A weight update failed inside the engine."""


class WeightSyncTimeoutError(TimeoutError):
    """A weight update did not finish within its timeout."""


@dataclass(frozen=True)
class ExpectedWeights:
    """Names and shapes of the tensors a full update must contain (the checkpoint's own)."""

    shapes: dict[str, tuple[int, ...]]
    tied_pairs: tuple[tuple[str, str], ...]  # (lm_head name, embedding name)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> "ExpectedWeights":
        """Read tensor names and shapes from the safetensors headers (no tensor is loaded)."""
        from safetensors import safe_open

        d = Path(model_dir)
        files = sorted(d.glob("*.safetensors"))
        if not files:
            raise ValueError(f"{d} has no *.safetensors files: cannot validate weight updates")
        shapes: dict[str, tuple[int, ...]] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():
                    shapes[name] = tuple(fh.get_slice(name).get_shape())
        config = json.loads((d / "config.json").read_text())
        text_config = config.get("text_config", config)
        tied: list[tuple[str, str]] = []
        if config.get("tie_word_embeddings", text_config.get("tie_word_embeddings", False)):
            embeds = [n for n in shapes if n.endswith("embed_tokens.weight")]
            if len(embeds) != 1:
                raise ValueError(f"tied model in {d}: expected one *embed_tokens.weight, found {embeds}")
            head = "lm_head.weight"
            # vLLM keeps a separately processed head on some backends: it must be updated too.
            shapes.setdefault(head, shapes[embeds[0]])
            tied.append((head, embeds[0]))
        return cls(shapes=shapes, tied_pairs=tuple(tied))

    def check(self, weights: WeightsLike) -> dict[str, torch.Tensor]:
        """Return the update as a name -> tensor dict, tied heads filled in; raise ValueError on
        an unknown, duplicated, missing, mis-shaped or non-float tensor."""
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        out: dict[str, torch.Tensor] = {}
        for i, item in enumerate(items):
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError(f"weights item {i} must be a (name, tensor) pair, got {type(item).__name__}")
            name, t = item
            if not isinstance(name, str):
                raise ValueError(f"weights item {i}: name must be a str, got {type(name).__name__}")
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"weight {name!r} must be a torch.Tensor, got {type(t).__name__}")
            if name in out:
                raise ValueError(f"weight {name!r} appears twice in the update")
            out[name] = t
        unknown = sorted(set(out) - set(self.shapes))
        if unknown:
            close = [n for n in self.shapes if n.split(".")[-1] == unknown[0].split(".")[-1]][:3]
            raise ValueError(
                f"unknown weight name(s) {unknown[:5]}{'...' if len(unknown) > 5 else ''} "
                f"({len(unknown)} in all): the model has no such tensor (names use the Hugging Face "
                f"checkpoint convention, e.g. {close or sorted(self.shapes)[:3]})"
            )
        for head, embed in self.tied_pairs:
            if head in out and embed in out:
                # Meta tensors (a streamed sync's manifest) carry no values to compare.
                if not (out[head].is_meta or out[embed].is_meta) and not torch.equal(out[head], out[embed]):
                    raise ValueError(f"tied model: {head!r} and {embed!r} differ in the update")
            elif head in out:
                out[embed] = out[head]
            elif embed in out:
                out[head] = out[embed]
        missing = sorted(set(self.shapes) - set(out))
        if missing:
            raise ValueError(
                f"weight update is missing {len(missing)} of {len(self.shapes)} tensors, e.g. "
                f"{missing[:5]}: partial updates are refused (a half-loaded fused layer is garbage)"
            )
        for name, t in out.items():
            if tuple(t.shape) != self.shapes[name]:
                raise ValueError(
                    f"weight {name!r} has shape {tuple(t.shape)}, the model expects {self.shapes[name]}"
                )
            if not t.is_floating_point():
                raise ValueError(f"weight {name!r} has dtype {t.dtype}; expected a floating dtype")
        return out

    def check_manifest(self, specs: Iterable[tuple[str, tuple[int, ...], str]]) -> dict[str, list[str]]:
        """Validate a streamed sync's (name, shape, dtype) list exactly as `check` validates tensors,
        before any tensor moves; return the tied names to fill in: {sent name: [also load as]}."""
        metas: list[tuple[str, torch.Tensor]] = []
        for name, shape, dtype in specs:
            dt = getattr(torch, str(dtype), None)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"weight {name!r} has unknown dtype {dtype!r}")
            metas.append((name, torch.empty(tuple(shape), dtype=dt, device="meta")))
        sent = {n for n, _ in metas}
        self.check(metas)
        aliases: dict[str, list[str]] = {}
        for head, embed in self.tied_pairs:
            if embed in sent and head not in sent:
                aliases.setdefault(embed, []).append(head)
            elif head in sent and embed not in sent:
                aliases.setdefault(head, []).append(embed)
        return aliases


@dataclass(frozen=True)
class PackedWeights:
    """Tensors as numpy arrays, the form Ray's object store moves without copies: the reader gets
    read-only views of shared memory instead of a bytes object to parse (bf16 travels as int16)."""

    arrays: dict[str, np.ndarray]
    dtypes: dict[str, str]


def pack_weights(weights: Mapping[str, torch.Tensor]) -> PackedWeights:
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, t in weights.items():
        t = t.detach().to("cpu").contiguous()
        dtypes[name] = str(t.dtype).removeprefix("torch.")
        arrays[name] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    return PackedWeights(arrays, dtypes)


def unpack_weights(packed: PackedWeights) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        # Views of Ray's shared memory are read-only; vLLM only copies from them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, arr in packed.arrays.items():
            t = torch.from_numpy(arr)
            out[name] = t.view(torch.bfloat16) if packed.dtypes[name] == "bfloat16" else t
    return out


def to_safetensors_bytes(weights: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise for another process; tensors sharing memory (tied heads) are copied first."""
    from safetensors.torch import save

    seen: set[tuple[int, int]] = set()
    flat: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        flat[name] = t
    return save(flat)


def from_safetensors_bytes(payload: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(payload)


class WeightSyncExtension:
    """Mixed into vLLM's worker class; its methods run inside the worker (see module doc).

    The `cispo_channel_*` methods serve the collective channel (`rollout.weight_channel`): every
    worker of an engine (one per tensor-parallel rank) joins the trainer's group with its own rank
    and receives the full tensors; vLLM's loaders keep the shard each rank needs."""

    def cispo_channel_open(self, spec, rank_offset: int) -> int:  # noqa: ANN001 - a ChannelSpec
        """Join the weight channel as rank `rank_offset + this worker's rank`; return that rank."""
        from rollout.weight_channel import WeightChannel

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
