"""Model FLOPs of a policy update, for ``actor/perf/flops_per_s`` and ``actor/perf/mfu``.

The count is the PaLM paper's (Chowdhery et al. 2022, App. B) with each sequence's own length and
this trainer's LM head: per training pass (forward + backward = 3 x forward),

    6 x (Linear weights of the transformer body) x (real tokens)         dense matmuls, every position
  + 6 x (LM-head weights, vocab x hidden)        x (scored tokens)        the head runs only where a
                                                                          response token is predicted
  + 12 x layers x (heads x head_dim)             x sum_i length_i ** 2    attention scores and values,
                                                                          the full square as in PaLM

Padding, the embedding lookup, norms and element-wise work are not counted, nor recomputation
(gradient checkpointing, the chunked head's recompute, a pi_old or reference forward inside the
update): they are overhead, and lower the MFU, which is the point of the metric.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitions a parameter; ds_numel is its full size


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs from a causal LM."""

    body_matmul_params: int
    head_params: int
    layers: int
    attention_width: int  # query heads x head_dim

    @classmethod
    def of(cls, model: nn.Module) -> "ModelShape":
        """From a transformers causal LM (``base_model_prefix`` body + ``get_output_embeddings`` head)."""
        cfg = model.config
        body = getattr(model, model.base_model_prefix)
        head = model.get_output_embeddings()
        heads = int(cfg.num_attention_heads)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(body_matmul_params=sum(_numel(m.weight) for m in body.modules() if isinstance(m, nn.Linear)),
                   head_params=_numel(head.weight), layers=int(cfg.num_hidden_layers),
                   attention_width=heads * int(head_dim))


def training_flops(shape: ModelShape, lengths: Sequence[int], scored_tokens: int) -> float:
    """FLOPs of one forward + backward over sequences of these real ``lengths`` (see the module doc)."""
    if any(n < 0 for n in lengths) or scored_tokens < 0:
        raise ValueError(f"lengths and scored_tokens must be >= 0; got {list(lengths)}, {scored_tokens}")
    tokens = sum(lengths)
    return float(6 * shape.body_matmul_params * tokens + 6 * shape.head_params * scored_tokens
                 + 12 * shape.layers * shape.attention_width * sum(n * n for n in lengths))


def measure_fp32_gemm_flops(size: int = 2048, repeats: int = 5) -> float:
    """The best fp32 FLOP/s of ``size``-square matmuls on the current torch threads: the ceiling a
    benchmark passes as ``trainer.peak_flops`` (measure it in the same process layout as the trainer)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best
