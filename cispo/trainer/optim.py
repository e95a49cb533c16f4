"""Optimizer, learning-rate schedule and DeepSpeed config of the policy engine.

A torch AdamW is the client optimizer: DeepSpeed's CPUAdam/FusedAdam JIT-compile for 40-60 s on
CPU. DeepSpeed's wrappers (ZeRO 1-3, bf16) skip a step whose gradients are non-finite;
plain fp32 ZeRO-0 has no wrapper, so :class:`GuardedAdamW` does it there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cispo.config.trainer import TrainerConfig

# DeepSpeed's console report interval; our metrics replace it.
NEVER_PRINT = 2**31 - 1


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that, when ``guard`` is on, measures the global grad norm, skips the step (leaving
    weights and moments untouched) when it is not finite, and otherwise clips to ``max_grad_norm``.

    DeepSpeed reads ``overflow`` (skip: no scheduler step, ``skipped_steps`` + 1) and
    ``_global_grad_norm`` from the optimizer it steps, so the engine reports both as for ZeRO.
    """

    def __init__(self, params: Any, *, guard: bool = False, max_grad_norm: float = 0.0, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.guard = guard
        self.max_grad_norm = max_grad_norm
        if guard:
            self.overflow = False
            self._global_grad_norm: float | None = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if not self.guard:
            return super().step(closure)
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0) if params else torch.zeros(())
        self._global_grad_norm = float(norm)
        self.overflow = not math.isfinite(self._global_grad_norm)
        if self.overflow:
            return None
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
        return super().step(closure)


class WarmupSchedule:
    """LR multiplier after ``step`` optimizer steps: linear warm-up to 1 over ``warmup`` steps
    (the first step already uses 1/warmup), then constant or cosine to ``min_ratio`` at ``total``.

    A callable object, not a lambda, so LambdaLR's state_dict stores it and resume is exact. On resume
    the checkpoint's copy wins (LambdaLR.load_state_dict restores these fields): a run keeps the horizon
    it was planned with, so when ``total_steps`` is extended the extra steps of a cosine schedule run at
    ``min_ratio`` (docs/checkpoints.md, "Changing a run's config on resume").
    """

    def __init__(self, warmup: int, total: int, kind: str, min_ratio: float):
        self.warmup, self.total, self.kind, self.min_ratio = warmup, total, kind, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; biases and norm scales (1-D) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainerConfig) -> tuple[GuardedAdamW, torch.optim.lr_scheduler.LambdaLR]:
    unwrapped = cfg.zero_stage == 0 and cfg.precision == "fp32"
    optimizer = GuardedAdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps, guard=unwrapped, max_grad_norm=cfg.grad_clip if unwrapped else 0.0,
        foreach=cfg.adam_impl == "foreach" or None, fused=cfg.adam_impl == "fused" or None)
    schedule = WarmupSchedule(cfg.warmup_steps, cfg.total_steps, cfg.lr_schedule, cfg.min_lr_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def deepspeed_config(cfg: TrainerConfig, *, train: bool = True) -> dict[str, Any]:
    """Micro-batches are ours (token budget), so DeepSpeed sees batch 1 and unmanaged gradient
    accumulation: ``backward()`` accumulates, each ``step()`` is one mini-batch boundary."""
    unwrapped = cfg.zero_stage == 0 and cfg.precision == "fp32"
    stage = cfg.zero_stage if train else (3 if cfg.zero_stage == 3 else 0)
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        # fp32 ZeRO-0 clips in GuardedAdamW (after its finiteness check); elsewhere DeepSpeed clips.
        "gradient_clipping": 0.0 if unwrapped else cfg.grad_clip,
        "zero_optimization": {"stage": stage, "overlap_comm": False},
        "bf16": {"enabled": cfg.precision == "bf16", "check_grad_overflow": True},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
    }
