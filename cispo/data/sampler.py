"""A stateful, seeded prompt sampler whose state makes a resume continue exactly.

Epoch e visits the items in the order `permutation(seed, e)`. The state is just (seed, epoch,
position): the permutation is recomputed from it, never stored. When the last item of an epoch is
drawn the state moves to (epoch + 1, 0) at once, so a checkpoint taken exactly at an epoch boundary
resumes at the first item of the next epoch, not into an exhausted one (verl 5725).
"""

from __future__ import annotations

from typing import Any, Generic, Iterator, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

STATE_VERSION = 1


def epoch_permutation(num_items: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The visiting order of one epoch (identity when not shuffling)."""
    if not shuffle:
        return list(range(num_items))
    return np.random.default_rng([seed, epoch]).permutation(num_items).tolist()


class PromptSampler(Generic[T]):
    """Draws items (prompt rows) in a per-epoch shuffled order; any count per draw.

    A draw that crosses an epoch boundary takes the rest of the epoch and continues into the next
    one, so across the whole run every item is drawn once per epoch: nothing skipped or repeated.
    """

    def __init__(self, items: Sequence[T], *, seed: int = 0, shuffle: bool = True) -> None:
        if len(items) == 0:
            raise ValueError("PromptSampler: items is empty; there is nothing to sample")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"PromptSampler: seed={seed!r}: expected an integer >= 0")
        self.items = items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self.consumed = 0
        self.retired: set[int] = set()
        self._order: list[int] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _current_order(self) -> list[int]:
        if self._order is None:
            self._order = epoch_permutation(len(self.items), self.seed, self.epoch, self.shuffle)
        return self._order

    def retire(self, index: int) -> None:
        """Never draw item ``index`` again (ScaleRL's no-positive-resampling); saved in the state."""
        if not 0 <= index < len(self.items):
            raise ValueError(f"retire({index}): expected an item index in [0, {len(self.items)})")
        self.retired.add(int(index))

    def sample_indices(self, count: int) -> list[int]:
        """The next `count` item indices (any count >= 0, e.g. more when dynamic sampling asks);
        retired items are passed over."""
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count={count!r}: expected an integer >= 0")
        if count and len(self.retired) >= len(self.items):
            raise ValueError(f"all {len(self.items)} prompts are retired (algorithm.no_positive_resampling): "
                             "nothing is left to sample; raise the threshold, set it to null, or stop the run earlier")
        indices: list[int] = []
        while len(indices) < count:
            order = self._current_order()
            index = order[self.position]
            self.position += 1
            if index not in self.retired:
                indices.append(index)
            if self.position == len(order):
                self.epoch += 1
                self.position = 0
                self._order = None
        self.consumed += count
        return indices

    def sample(self, count: int) -> list[T]:
        return [self.items[index] for index in self.sample_indices(count)]

    def batches(self, batch_size: int) -> Iterator[list[T]]:
        """Endless batches of `batch_size` (the caller decides when to stop)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
        while True:
            yield self.sample(batch_size)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable; goes into every checkpoint's trainer_state.json."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "consumed": self.consumed,
            "num_items": len(self.items),
            "shuffle": self.shuffle,
            "retired": sorted(self.retired),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state`; refuses a state of a different data set size or format."""
        expected = {"version", "seed", "epoch", "position", "consumed", "num_items", "shuffle"}
        missing = expected - set(state)
        if missing:
            raise ValueError(f"sampler state: missing keys {sorted(missing)}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"sampler state: version {state['version']!r}, expected {STATE_VERSION}")
        if state["num_items"] != len(self.items):
            raise ValueError(
                f"sampler state: saved for {state['num_items']} prompts, this data set has {len(self.items)}; "
                "resuming with different data would skip or repeat prompts"
            )
        for key in ("seed", "epoch", "position", "consumed"):
            if not isinstance(state[key], int) or state[key] < 0:
                raise ValueError(f"sampler state: {key}={state[key]!r}, expected an integer >= 0")
        if state["position"] > len(self.items):
            raise ValueError(f"sampler state: position={state['position']} > {len(self.items)} items")
        self.seed = state["seed"]
        self.shuffle = bool(state["shuffle"])
        self.epoch, self.position, self.consumed = state["epoch"], state["position"], state["consumed"]
        retired = state.get("retired", [])  # absent in states written before no-positive-resampling
        if not isinstance(retired, list) or any(not isinstance(i, int) or not 0 <= i < len(self.items) for i in retired):
            raise ValueError(f"sampler state: retired must be a list of item indices in [0, {len(self.items)})")
        self.retired = set(retired)
        if self.position == len(self.items):  # a state written by a sampler that did not roll over
            self.epoch, self.position = self.epoch + 1, 0
        self._order = None
