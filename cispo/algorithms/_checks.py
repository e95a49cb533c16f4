"""Input validation shared by the algorithm functions.

Every check raises ``ValueError`` naming the argument and what was expected, so a shape or dtype
bug in the trainer surfaces at the call site instead of as a silently wrong gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def check_choice(arg: str, value: str, allowed: Iterable[str]) -> None:
    allowed = sorted(allowed)
    if value not in allowed:
        raise ValueError(f"{arg}={value!r} is not supported; allowed values: {', '.join(allowed)}")


def check_finite(arg: str, tensor: Tensor) -> None:
    if not torch.is_tensor(tensor):
        raise ValueError(f"{arg} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = (~torch.isfinite(tensor)).sum().item()
        raise ValueError(f"{arg} contains {bad} NaN/inf value(s); expected finite numbers")


def check_shape(arg: str, tensor: Tensor, shape: torch.Size, what: str) -> None:
    if tensor.shape != shape:
        raise ValueError(f"{arg} has shape {tuple(tensor.shape)}; expected {tuple(shape)} ({what})")


def check_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    """Returns the mask as the float dtype of the loss after checking it holds only 0 and 1."""
    check_shape("mask", mask, shape, "same as log_probs")
    if mask.dtype != torch.bool:
        check_finite("mask", mask)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 and 1 (or be a bool tensor)")
    return mask


def check_nonnegative(arg: str, value: float) -> None:
    if not isinstance(value, (int, float)) or value != value or value < 0:
        raise ValueError(f"{arg}={value!r} must be a non-negative number")


def check_positive(arg: str, value: float) -> None:
    if not isinstance(value, (int, float)) or value != value or value <= 0:
        raise ValueError(f"{arg}={value!r} must be a positive number")


def broadcast_advantages(advantages: Tensor, shape: torch.Size) -> Tensor:
    """Accepts per-sequence [batch] or per-token [batch, tokens] advantages."""
    check_finite("advantages", advantages)
    if advantages.dim() == 1:
        check_shape("advantages", advantages, shape[:1], "[batch] or [batch, tokens]")
        return advantages.unsqueeze(-1).expand(shape)
    check_shape("advantages", advantages, shape, "[batch] or [batch, tokens]")
    return advantages
