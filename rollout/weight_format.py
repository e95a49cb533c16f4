"""The form weights travel in between the trainer and the engines, and the checks made before any
tensor moves.

The engine validates names and shapes first (`ExpectedWeights.check`): vLLM's loaders raise
obscure KeyErrors on unknown names and silently keep old values for missing ones, and a layer
loaded only in part (q_proj without k_proj) would be left half-initialised. So an update must
name every weight of the checkpoint, with the checkpoint's shapes.

This module (with `rollout.weight_channel`) is the wire contract the trainer packs its weights for:
it imports torch and numpy only.
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
