"""Group-relative advantage estimators (one scalar per response, broadcast over its tokens).

- ``grpo``: (R - group mean) / (group std + eps). Papers do not fix the std estimator; verl and TRL
  use the unbiased (Bessel) one, our default. ``batch_std=True`` divides by the std of the whole
  batch instead (ScaleRL, arXiv 2510.13786).
- ``dr_grpo``: R - group mean, no std (Dr. GRPO, arXiv 2503.20783).
- ``rloo``: R - mean of the OTHER responses of the group (leave-one-out).
A group of one response gets advantage 0; a group whose rewards are all equal gets 0 (never NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from cispo.algorithms._checks import check_choice, check_finite, check_nonnegative
from cispo.algorithms.options import GrpoAdvantageOptions, NoOptions, parse_options

AdvantageFn = Callable[..., Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}
ADVANTAGE_OPTIONS: dict[str, type] = {}
"""The typed options class of each estimator (:mod:`cispo.algorithms.options`)."""


def _register(name: str, options: type = NoOptions):
    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGE_ESTIMATORS[name] = fn
        ADVANTAGE_OPTIONS[name] = options
        return fn

    return wrap


def _group_index(group_ids: Tensor | Sequence[Any], n: int) -> Tensor:
    if torch.is_tensor(group_ids):
        if group_ids.shape != (n,):
            raise ValueError(f"group_ids has shape {tuple(group_ids.shape)}; expected ({n},) like rewards")
        return torch.unique(group_ids, return_inverse=True)[1]
    ids = list(group_ids)
    if len(ids) != n:
        raise ValueError(f"group_ids has {len(ids)} entries; expected {n} like rewards")
    index: dict[Any, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in ids], dtype=torch.long)


def _group_stats(rewards: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-response group size, group mean and group sum of squared deviations."""
    n_groups = int(index.max()) + 1
    size = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, torch.ones_like(rewards))
    total = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, rewards)
    mean = (total / size)[index]
    sq_dev = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, index, (rewards - mean) ** 2)
    return size[index], mean, sq_dev[index]


@_register("grpo", GrpoAdvantageOptions)
def grpo_advantages(rewards: Tensor, index: Tensor, *, eps: float, options: GrpoAdvantageOptions) -> Tensor:
    size, mean, sq_dev = _group_stats(rewards, index)
    centred = torch.where(size > 1, rewards - mean, torch.zeros_like(rewards))
    if not options.norm_by_std:
        return centred
    if options.batch_std:
        std = rewards.std(unbiased=options.std_unbiased) if rewards.numel() > 1 else rewards.new_zeros(())
        return centred / (std + eps)
    dof = (size - 1) if options.std_unbiased else size
    std = torch.sqrt(sq_dev / dof.clamp(min=1))
    return centred / (std + eps)


@_register("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, index: Tensor, *, eps: float, options: NoOptions) -> Tensor:
    size, mean, _ = _group_stats(rewards, index)
    return torch.where(size > 1, rewards - mean, torch.zeros_like(rewards))


@_register("rloo")
def rloo_advantages(rewards: Tensor, index: Tensor, *, eps: float, options: NoOptions) -> Tensor:
    size, mean, _ = _group_stats(rewards, index)
    loo_mean = (mean * size - rewards) / (size - 1).clamp(min=1)
    return torch.where(size > 1, rewards - loo_mean, torch.zeros_like(rewards))


def compute_advantages(name: str, rewards: Tensor, group_ids: Tensor | Sequence[Any], *, eps: float = 1e-6,
                       **options: Any) -> Tensor:
    """Advantages [batch] from rewards [batch] and the prompt group of each response.

    Groups may be interleaved in any order. Options: ``grpo`` takes ``std_unbiased`` (default
    True), ``batch_std`` (default False) and ``norm_by_std`` (default True).
    """
    check_choice("name", name, ADVANTAGE_ESTIMATORS)
    check_nonnegative("eps", eps)
    if not torch.is_tensor(rewards):
        rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards has shape {tuple(rewards.shape)}; expected [batch]")
    check_finite("rewards", rewards.double())
    if rewards.numel() == 0:
        return rewards.double()
    typed = parse_options(ADVANTAGE_OPTIONS[name], options, f"options of advantage estimator {name!r}")
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    index = _group_index(group_ids, rewards.numel())
    return ADVANTAGE_ESTIMATORS[name](rewards.to(dtype), index, eps=eps, options=typed)
