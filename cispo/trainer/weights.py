"""The trainer's side of a weight sync: the policy's tensors in HF names, gathered under ZeRO-3, as a
full state dict (the object-store channel) or streamed module by module to the collective channel.

The form they travel in is the rollout package's wire contract (`rollout.weight_format`,
`rollout.weight_channel`): the only part of `rollout` the trainer imports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch import Tensor

from rollout.weight_channel import ChannelSpec, TensorSpec, WeightChannel


def _gathered(params: list[torch.nn.Parameter], zero3: bool):  # noqa: ANN202 - a context manager
    """Under ZeRO-3 the full parameters exist only inside this context (collective: every rank enters)."""
    if not zero3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def export_state_dict(model: torch.nn.Module, *, zero3: bool, rank: int) -> dict[str, Tensor]:
    """The full state dict in HF names, on CPU, on rank 0 (gathered under ZeRO-3, which makes it
    collective there); the other ranks take part and get ``{}`` (no second full copy each).

    With tied embeddings ``lm_head.weight`` is included: vLLM keeps a wrong head without it."""
    with _gathered(list(model.parameters()), zero3):
        if rank != 0:
            return {}
        state = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in model.state_dict().items()}
    head = model.get_output_embeddings()
    head_key = next((n + ".weight" for n, mod in model.named_modules() if mod is head), None)
    if head_key is not None and head_key not in state:  # a tied head under another name only
        source = next(n for n, p in model.named_parameters() if p is head.weight)
        state[head_key] = state[source].clone()
    return state


def unique_parameters(model: torch.nn.Module) -> list[tuple[str, list[tuple[str, torch.nn.Parameter]]]]:
    """(module name, its own parameters with full names) in module order, each parameter once
    (a tied head is skipped: the engine fills it from the embedding)."""
    seen: set[int] = set()
    out = []
    for mod_name, module in model.named_modules():
        own = []
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                own.append((f"{mod_name}.{p_name}" if mod_name else p_name, p))
        if own:
            out.append((mod_name, own))
    return out


def weight_manifest(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, full shape, dtype) of every parameter in streaming order, without gathering
    (ZeRO-3 keeps the full shape in ``ds_shape``)."""
    return [(name, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."))
            for _, params in unique_parameters(model) for name, p in params]


def iter_weights(model: torch.nn.Module, *, zero3: bool) -> Iterator[Tensor]:
    """The parameters in manifest order, gathered one module at a time under ZeRO-3 (collective:
    every rank must run it to the end). Each tensor is valid only until the next is requested."""
    for _, params in unique_parameters(model):
        with _gathered([p for _, p in params], zero3), torch.no_grad():
            for _, p in params:
                yield p.detach()


def _drain(weights: Iterator[Tensor]) -> None:
    """Finish the gathers, so that the other ranks are not left waiting in one."""
    for _ in weights:
        pass


class WeightSender:
    """Rank 0's end of the collective weight channel (`rollout.weight_channel`)."""

    def __init__(self) -> None:
        self.channel: WeightChannel | None = None

    def open(self, spec: ChannelSpec, device: torch.device) -> None:
        """Host and join the channel (blocks until every member joined); a previous one is closed."""
        if self.channel is not None:
            self.channel.close()
        self.channel = None
        self.channel = WeightChannel(spec, 0, device=device if spec.backend == "nccl" else "cpu")

    def send(self, model: torch.nn.Module, *, zero3: bool, rank: int) -> dict[str, float]:
        """One streamed sync: every rank gathers module by module; rank 0 broadcasts the buckets. If
        sending fails, rank 0 still finishes the gathers."""
        start = time.perf_counter()
        weights = iter_weights(model, zero3=zero3)
        if rank != 0:
            _drain(weights)
            return {"total_s": time.perf_counter() - start}
        if self.channel is None:
            _drain(weights)
            raise RuntimeError("trainer rank 0 has no weight channel: open_weight_channel() first")
        manifest = [TensorSpec(n, s, d) for n, s, d in weight_manifest(model)]
        try:
            stats = self.channel.send(manifest, weights)
        except Exception:
            _drain(weights)
            raise
        return stats | {"total_s": time.perf_counter() - start}
