"""The tensors one policy update consumes, and how they are cut into rank shards and micro-batches.

Every per-token tensor is [B, T] and aligned with ``input_ids``: ``log_probs[b, t]`` is
log pi(input_ids[b, t] | input_ids[b, :t]); position 0 has no log-prob (0). Rows are right-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

PER_TOKEN = ("attention_mask", "response_mask", "old_log_probs", "rollout_log_probs", "ref_log_probs")


@dataclass
class TrainBatch:
    """``response_mask`` is 1 on the response tokens that count in the loss (it must lie inside
    ``attention_mask`` and never on position 0). ``group_ids`` names the prompt of each row."""

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    advantages: Tensor
    group_ids: Tensor
    old_log_probs: Tensor | None = None
    rollout_log_probs: Tensor | None = None
    ref_log_probs: Tensor | None = None
    staleness: Tensor | None = None
    """[B] integer: trainer version minus the policy version that generated the row (asynchronous
    rollout); the update reports its importance weights per staleness value."""

    @classmethod
    def from_sequences(cls, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                       advantages: Sequence[float] | Tensor, group_ids: Sequence[int] | Tensor, *,
                       rollout_log_probs: Sequence[Sequence[float]] | None = None, pad_id: int = 0
                       ) -> "TrainBatch":
        """Right-padded batch of prompt + response rows (e.g. from rollout results); the loss mask
        covers every response token; ``rollout_log_probs[i][t]`` belongs to ``response_ids[i][t]``."""
        rows = len(prompt_ids)
        if len(response_ids) != rows:
            raise ValueError(f"response_ids has {len(response_ids)} rows for {rows} prompts")
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise ValueError(f"prompt_ids[{i}] is empty: a response needs a prompt token before it")
        width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
        ids = torch.full((rows, max(width, 2)), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        response = torch.zeros_like(ids)
        rollout = None if rollout_log_probs is None else torch.zeros(ids.shape, dtype=torch.float32)
        for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
            n, m = len(p), len(r)
            ids[i, :n + m] = torch.as_tensor(list(p) + list(r), dtype=torch.long)
            attention[i, :n + m] = 1
            response[i, n:n + m] = 1
            if rollout is not None:
                if len(rollout_log_probs[i]) != m:
                    raise ValueError(f"rollout_log_probs[{i}] has {len(rollout_log_probs[i])} entries for {m} "
                                     "response tokens")
                rollout[i, n:n + m] = torch.as_tensor(list(rollout_log_probs[i]), dtype=torch.float32)
        return cls(input_ids=ids, attention_mask=attention, response_mask=response,
                   advantages=torch.as_tensor(advantages, dtype=torch.float32),
                   group_ids=torch.as_tensor(group_ids, dtype=torch.long), rollout_log_probs=rollout)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def validate(self) -> "TrainBatch":
        """Raises ValueError naming the field: shapes, dtypes, masks, right padding, finiteness."""
        ids = self.input_ids
        if not torch.is_tensor(ids) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"batch.input_ids must be an integer [B, T] tensor, got {_describe(ids)}")
        shape = ids.shape
        if shape[0] == 0 or shape[1] < 2:
            raise ValueError(f"batch.input_ids has shape {tuple(shape)}; expected B >= 1 rows of T >= 2 tokens")
        for name in PER_TOKEN:
            value = getattr(self, name)
            if value is None:
                continue
            if not torch.is_tensor(value) or value.shape != shape:
                raise ValueError(f"batch.{name} must have shape {tuple(shape)} like input_ids, got {_describe(value)}")
            if name.endswith("log_probs"):
                masked = value[self.response_mask.bool()]
                if not value.is_floating_point() or not bool(torch.isfinite(masked).all()):
                    raise ValueError(f"batch.{name} must be finite floats on response tokens")
        for name in ("attention_mask", "response_mask"):
            value = getattr(self, name)
            if not bool(((value == 0) | (value == 1)).all()):
                raise ValueError(f"batch.{name} must hold only 0 and 1")
        attn = self.attention_mask.bool()
        if bool((attn[:, 1:] & ~attn[:, :-1]).any()):
            raise ValueError("batch.attention_mask must be right-padded (1s then 0s in every row)")
        resp = self.response_mask.bool()
        if bool((resp & ~attn).any()):
            raise ValueError("batch.response_mask has 1s outside attention_mask")
        if bool(resp[:, 0].any()):
            raise ValueError("batch.response_mask must be 0 at position 0 (the first token has no log-prob)")
        for name in ("advantages", "group_ids"):
            value = getattr(self, name)
            if not torch.is_tensor(value) or value.shape not in (shape[:1], shape) or (
                    name == "group_ids" and value.shape != shape[:1]):
                expected = "[B]" if name == "group_ids" else "[B] or [B, T]"
                raise ValueError(f"batch.{name} must have shape {expected} with B={shape[0]}, got {_describe(value)}")
        if not self.advantages.is_floating_point() or not bool(torch.isfinite(self.advantages).all()):
            raise ValueError("batch.advantages must be finite floats")
        if self.staleness is not None and (not torch.is_tensor(self.staleness) or self.staleness.shape != shape[:1]
                                           or self.staleness.is_floating_point() or bool((self.staleness < 0).any())):
            raise ValueError(f"batch.staleness must be a [B] integer tensor >= 0 with B={shape[0]}, got "
                             f"{_describe(self.staleness)}")
        return self

    def select(self, rows: Tensor | slice | list[int]) -> "TrainBatch":
        """Rows of every tensor (same columns)."""
        if isinstance(rows, list):
            rows = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                                for f in fields(self)})

    def trim(self) -> "TrainBatch":
        """Drops the trailing columns that are padding in every row (cheaper forward)."""
        width = max(int(self.attention_mask.sum(dim=1).max().item()), 2)
        if width == self.input_ids.shape[1]:
            return self
        return replace(self, **{f.name: _cols(getattr(self, f.name), width) for f in fields(self)})

    def lengths(self) -> Tensor:
        return self.attention_mask.sum(dim=1)


def _cols(value: Tensor | None, width: int) -> Tensor | None:
    if value is None or value.dim() < 2:
        return value
    return value[:, :width]


def _describe(value: object) -> str:
    if torch.is_tensor(value):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def group_units(group_ids: Tensor, keep_groups: bool) -> list[list[int]]:
    """Indivisible runs of rows: single rows, or (``keep_groups``) contiguous rows of one prompt.

    prompt-mean aggregation counts a group's tokens locally, so a group must never straddle two
    micro-batches or ranks; it must then be contiguous in the batch.
    """
    n = int(group_ids.shape[0])
    if not keep_groups:
        return [[i] for i in range(n)]
    units: list[list[int]] = []
    seen: set[int] = set()
    for i in range(n):
        gid = int(group_ids[i])
        if units and int(group_ids[units[-1][0]]) == gid:
            units[-1].append(i)
            continue
        if gid in seen:
            raise ValueError(f"batch.group_ids: rows of group {gid} are not contiguous; prompt-mean needs each "
                             "prompt's responses next to each other")
        seen.add(gid)
        units.append([i])
    return units


def plan_micro_batches(lengths: Tensor, units: list[list[int]], max_tokens: int, *,
                       packed: bool = False) -> list[list[int]]:
    """Greedy packing of units, longest first, within a token budget per micro-batch: rows x longest
    row (padded), or, ``packed`` (trainer.sequence_packing), the sum of the row lengths (no padding).

    A unit that alone exceeds the budget gets a micro-batch of its own (never dropped). Sorting by
    length cuts padding; the loss does not depend on the split because normalisers are global.
    """
    lens = [int(x) for x in lengths.tolist()]

    def cost(rows: list[int]) -> int:
        return sum(lens[r] for r in rows) if packed else max(lens[r] for r in rows) * len(rows)

    order = sorted(range(len(units)), key=lambda k: -max(lens[r] for r in units[k]))
    plan: list[list[int]] = []
    current: list[int] = []
    for k in order:
        if current and cost(current + units[k]) > max_tokens:
            plan.append(current)
            current = []
        current = current + units[k]
    if current:
        plan.append(current)
    return plan


def split_plan(plan: list[list[int]], units: list[list[int]], target: int) -> list[list[int] | None]:
    """Grows a plan to exactly ``target`` micro-batches (every rank must run the same number of
    forward/backward passes: ZeRO-2/3 communicate inside them). Splits the biggest splittable
    micro-batch at a unit boundary; when none is left, pads with ``None`` (a zero-weight pass)."""
    if target < len(plan):
        raise ValueError(f"cannot shrink a plan of {len(plan)} micro-batches to {target}")
    unit_of = {row: k for k, unit in enumerate(units) for row in unit}
    result: list[list[int] | None] = [list(mb) for mb in plan]
    while len(result) < target:
        candidates = [i for i, mb in enumerate(result) if mb is not None and len({unit_of[r] for r in mb}) > 1]
        if not candidates:
            result.extend([None] * (target - len(result)))
            break
        i = max(candidates, key=lambda j: len(result[j]))
        mb = result[i]
        ids = list(dict.fromkeys(unit_of[r] for r in mb))
        half = set(ids[: len(ids) // 2])
        result[i] = [r for r in mb if unit_of[r] in half]
        result.insert(i + 1, [r for r in mb if unit_of[r] not in half])
    return result
