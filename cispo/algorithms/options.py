"""Typed options of each policy loss and advantage estimator.

Each loss / estimator registers one frozen dataclass; a mapping of options (from a config or from
keyword arguments) is turned into it by :func:`parse_options`, which rejects an unknown name, a wrong
type or a value out of range with a message naming the key and what is allowed. The trainer config
calls the same function at load time, so a bad option stops a run before any process starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class NoOptions:
    """A loss or estimator that takes no options."""


@dataclass(frozen=True)
class CispoOptions:
    """MiniMax-M1 (arXiv 2506.13585) Eq. 6-7: the unified form multiplies each token by PPO's trust-region
    mask M (zero where A > 0 and r > 1 + mask_eps_high, or A < 0 and r < 1 - mask_eps_low)."""

    unified_mask: bool = False
    mask_eps_low: float | None = None
    """PPO's lower eps of the mask (an offset from 1, as every eps here); required with unified_mask."""
    mask_eps_high: float | None = None
    """PPO's upper eps of the mask; required with unified_mask."""

    def __post_init__(self) -> None:
        for key in ("mask_eps_low", "mask_eps_high"):
            value = getattr(self, key)
            if value is not None and (not _is_number(value) or value < 0):
                raise ValueError(f"{key}={value!r}: expected null or a number >= 0")
        if self.unified_mask and (self.mask_eps_low is None or self.mask_eps_high is None):
            raise ValueError("unified_mask=True needs mask_eps_low and mask_eps_high (PPO trust-region eps, "
                             "e.g. 0.2 and 0.28)")


@dataclass(frozen=True)
class PPOClipOptions:
    """PPO's dual clip (Ye et al. 2020, arXiv 1912.09729): for A < 0 the loss is also bounded by -c * A."""

    dual_clip: float | None = None
    """c > 1 (usually 3); null disables it."""

    def __post_init__(self) -> None:
        if self.dual_clip is not None and (not _is_number(self.dual_clip) or self.dual_clip <= 1.0):
            raise ValueError(f"dual_clip={self.dual_clip!r}: expected null or a number > 1 (PPO dual-clip c, usually 3)")


@dataclass(frozen=True)
class GrpoAdvantageOptions:
    """Which std divides the centred reward. Papers do not fix it; verl and TRL use the unbiased one."""

    std_unbiased: bool = True
    """Bessel's correction (n - 1) in the group std."""
    batch_std: bool = False
    """Divide by the std of the whole batch instead of the group's (ScaleRL, arXiv 2510.13786)."""
    norm_by_std: bool = True
    """False: no division at all (centred rewards only)."""


def parse_options(cls: type[T], options: Mapping[str, Any] | T | None, where: str) -> T:
    """``options`` as an instance of ``cls``; ``where`` names them in errors (e.g. ``trainer.loss_options``)."""
    if isinstance(options, cls):
        return options
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}={options!r}: expected a mapping of option name to value")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; allowed: {', '.join(sorted(fields)) or 'none'}")
    hints = get_type_hints(cls)
    for name, value in options.items():
        if hints[name] is bool and not isinstance(value, bool):
            raise ValueError(f"{where}.{name}={value!r}: expected true or false")
    try:
        return cls(**options)
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from None
