"""`RolloutGroup`: N rollout actors on Ray that act as one engine.

A batch of prompts is split into N contiguous shares; results come back in prompt order. If an
actor dies, the group starts a replacement, loads the latest weights into it, and resubmits that
actor's share: nothing is lost, and the restart shows up in `metrics`. Per-prompt seeds are
global (see SamplingConfig), so how prompts are split does not change which seed a prompt gets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rollout.actor import RolloutActor
from rollout.config import EngineConfig, GroupConfig, SamplingConfig
from rollout.engine import Prompt
from rollout.types import RolloutResult
from rollout.weight_channel import ChannelSpec, WeightStream
from rollout.weight_format import PackedWeights, WeightsLike, WeightSyncError, WeightSyncTimeoutError, pack_weights


class RolloutGroupError(RuntimeError):
    """The group could not finish a call (too many actor deaths)."""


@dataclass
class _Share:
    start: int
    prompts: list
    group_ids: list[int] | None


@dataclass
class PendingRollout:
    """A submitted batch: `RolloutGroup.collect(pending)` waits for it."""

    num_prompts: int
    sampling: SamplingConfig
    shares: list[_Share]
    # ObjectRef -> (share index, actor index, actor handle it was sent to)
    refs: dict = field(default_factory=dict)
    submitted_at: float = field(default_factory=time.perf_counter)


@dataclass
class PendingWeights:
    """A queued weight update: `RolloutGroup.finish_weights(pending)` waits for it."""

    ref: ray.ObjectRef
    refs: list
    num_bytes: float
    started_at: float
    serialize_s: float


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `parts` contiguous shares of n items, sizes differing by at most 1;
    empty shares are dropped."""
    if n < 0 or parts < 1:
        raise ValueError(f"split_evenly needs n >= 0 and parts >= 1, got n={n}, parts={parts}")
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        if size:
            out.append((start, start + size))
        start += size
    return out


class RolloutGroup:
    """N `RolloutActor`s; call `ray.init(...)` before creating one."""

    def __init__(self, engine_config: EngineConfig | None = None, group_config: GroupConfig | None = None, *,
                 placement_group: "ray.util.placement_group.PlacementGroup | None" = None) -> None:
        """`placement_group`: actor i runs in its bundle i (one bundle per actor, made by the caller)."""
        self.engine_config = engine_config or EngineConfig()
        self.config = group_config or GroupConfig()
        self.engine_config.validate()
        self.config.validate()
        self.placement_group = placement_group
        self._actor_cls = ray.remote(
            num_cpus=self.config.num_cpus_per_actor, num_gpus=self.config.num_gpus_per_actor
        )(RolloutActor)
        self.actors = [self._spawn(i) for i in range(self.config.num_actors)]
        ray.get([a.ready.remote() for a in self.actors])
        self._weights_ref: ray.ObjectRef | None = None  # the newest update every actor accepted
        self._queued_ref: ray.ObjectRef | None = None  # an update queued and not yet accepted everywhere
        # Collective channel (GroupConfig.weight_sync="collective"): formed by the trainer through
        # `connect_weight_channel`; `weights_source` re-exports the weights for a restarted actor.
        self.channel: ChannelSpec | None = None
        self.weights_source: Callable[[], tuple[ray.ObjectRef, int]] | None = None
        self.metrics: dict[str, float] = {
            "actor_restarts": 0,
            "resubmitted_prompts": 0,
            "weight_updates": 0,
        }

    def _spawn(self, idx: int):  # noqa: ANN202 - a Ray actor handle
        if self.placement_group is None:
            options = {"resources": self.config.resources} if self.config.resources else {}
        else:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options = {"scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.placement_group, placement_group_bundle_index=idx)}
        return self._actor_cls.options(**options).remote(self.engine_config)

    # ---------------------------------------------------------------- generate
    def submit(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig | None = None,
        *,
        group_ids: Sequence[int] | None = None,
    ) -> PendingRollout:
        """Send each actor its share and return at once; `collect` gathers the results."""
        s = sampling or SamplingConfig()
        s.validate()
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: nothing to generate")
        if group_ids is not None and len(group_ids) != len(prompts):
            raise ValueError(f"group_ids has {len(group_ids)} entries for {len(prompts)} prompts")
        shares = [
            _Share(a, list(prompts[a:b]), None if group_ids is None else list(group_ids[a:b]))
            for a, b in split_evenly(len(prompts), len(self.actors))
        ]
        pending = PendingRollout(num_prompts=len(prompts), sampling=s, shares=shares)
        for k in range(len(shares)):
            self._send(pending, k, k)
        return pending

    def _send(self, pending: PendingRollout, share: int, actor_idx: int) -> None:
        sh = pending.shares[share]
        actor = self.actors[actor_idx]
        ref = actor.generate.remote(sh.prompts, pending.sampling, sh.group_ids, sh.start)
        pending.refs[ref] = (share, actor_idx, actor)

    def collect(self, pending: PendingRollout) -> list[RolloutResult]:
        """Wait for every share; restart dead actors and resubmit their shares."""
        done: dict[int, list[RolloutResult]] = {}
        restarts = 0
        timeout = self.config.generate_timeout_s
        while pending.refs:
            ready, _ = ray.wait(list(pending.refs), num_returns=1, timeout=timeout)
            if not ready:
                late = sorted({a for _, a, _ in pending.refs.values()})
                raise TimeoutError(f"rollout actors {late} returned nothing within {timeout} s")
            ref = ready[0]
            share, actor_idx, actor = pending.refs.pop(ref)
            try:
                done[share] = ray.get(ref)
            except RayActorError as e:
                restarts += 1
                if restarts > self.config.max_restarts_per_call:
                    raise RolloutGroupError(
                        f"{restarts} actor deaths in one call (GroupConfig.max_restarts_per_call="
                        f"{self.config.max_restarts_per_call}); last: {e}"
                    ) from e
                if self.actors[actor_idx] is actor:  # not yet replaced by another call
                    self.restart_actor(actor_idx)
                self.metrics["resubmitted_prompts"] += len(pending.shares[share].prompts)
                self._send(pending, share, actor_idx)
        results = [r for k in range(len(pending.shares)) for r in done[k]]
        for r in results:  # Ray hands numpy arrays back read-only (zero-copy): give callers their own
            r.logprobs = np.array(r.logprobs, dtype=np.float32)
        return results

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig | None = None,
        *,
        group_ids: Sequence[int] | None = None,
    ) -> list[RolloutResult]:
        """Like `RolloutEngine.generate` over all actors: prompt-major, sample-minor order."""
        return self.collect(self.submit(prompts, sampling, group_ids=group_ids))

    # ------------------------------------------------------- collective channel
    def channel_backend(self) -> str:
        """``auto``: NCCL when every engine has whole GPUs; gloo otherwise (CPU, or an engine sharing
        its GPU with a trainer rank: NCCL refuses two ranks of one group on the same device)."""
        b = self.config.weight_channel_backend
        return b if b != "auto" else ("nccl" if self.config.num_gpus_per_actor >= 1 else "gloo")

    def connect_weight_channel(self, host: str, port: int, open_sender: Callable[[ChannelSpec], ray.ObjectRef],
                               weights_source: Callable[[], tuple[ray.ObjectRef, int]] | None = None) -> ChannelSpec:
        """Form the collective weight channel: the sender (rank 0, started by `open_sender(spec)`, a
        Ray call on the trainer's rank 0 that hosts the store at host:port) and every worker of every
        engine. Raises WeightSyncError naming the members that did not join in time."""
        tp = self.engine_config.tensor_parallel_size
        spec = ChannelSpec(host=host, port=int(port), world_size=1 + len(self.actors) * tp,
                           backend=self.channel_backend(), timeout_s=self.config.weight_channel_timeout_s,
                           bucket_bytes=max(1, int(self.config.weight_bucket_mb * 2**20))).validate()
        self.channel = None
        sender = open_sender(spec)
        members = {a.open_weight_channel.remote(spec, 1 + i * tp): f"rollout actor {i}" for i, a in enumerate(self.actors)}
        members[sender] = "trainer rank 0"
        ready, late = ray.wait(list(members), num_returns=len(members), timeout=spec.timeout_s * 1.5 + 10.0)
        errors = []
        for ref in ready:
            try:
                ray.get(ref)
            except Exception as e:  # noqa: BLE001 - collected, reported together
                errors.append(f"{members[ref]}: {e}")
        if late or errors:
            raise WeightSyncError(
                f"the weight channel at {host}:{port} ({spec.backend}, {spec.world_size} members) did not form: "
                + "; ".join(errors + [f"{members[r]} did not join within {spec.timeout_s:.0f} s" for r in late]))
        self.channel = spec
        self.weights_source = weights_source
        return spec

    def _receive_stream(self, stream: WeightStream) -> list[dict[str, float]]:
        """Receive on every actor while the trainer sends. A receiver's error is raised as soon as it
        arrives (a refusal names the tensor); then the senders are awaited. Any failure closes the
        channel: the next sync forms a new one."""
        limit = max(self.config.weight_channel_timeout_s, self.engine_config.weight_update_timeout_s) * 1.5 + 10.0
        deadline = time.perf_counter() + limit
        receivers = [a.receive_weights.remote(self.engine_config.weight_update_timeout_s) for a in self.actors]
        names = {r: f"rollout actor {i}" for i, r in enumerate(receivers)}
        names.update({r: f"trainer rank {k}" for k, r in enumerate(stream.sender_refs)})
        stats: dict[ray.ObjectRef, dict[str, float]] = {}
        try:
            for group in (receivers, list(stream.sender_refs)):
                pending = list(group)
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1,
                                              timeout=max(0.0, deadline - time.perf_counter()))
                    if not ready:
                        raise WeightSyncTimeoutError(
                            f"streamed weight sync: {sorted(names[r] for r in pending)} did not finish within "
                            f"{limit:.0f} s")
                    try:
                        stats[ready[0]] = ray.get(ready[0])
                    except RayActorError as e:
                        raise WeightSyncError(f"{names[ready[0]]} died during a streamed weight sync: {e}") from e
        except Exception:
            self.channel = None
            self._repair_after_failed_stream()
            raise
        return [stats[r] for r in receivers]

    def _repair_after_failed_stream(self) -> None:
        """A stream cut part-way leaves engines on a mix of two weight versions (they refuse to
        generate): give every live actor the trainer's weights through the object store. Best
        effort: an actor that is gone is replaced (with these weights) when it is next needed."""
        if self.weights_source is None:
            return
        try:
            ref, _ = self.weights_source()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            return
        timeout = self.engine_config.weight_update_timeout_s
        for r in [a.update_weights.remote(ref, timeout) for a in self.actors]:
            try:
                ray.get(r, timeout=timeout * 1.5 + 5.0)
            except Exception:  # noqa: BLE001 - see above
                pass
        self._weights_ref = ref

    # ----------------------------------------------------------- weight update
    def update_weights(self, weights: WeightsLike | bytes | tuple[ray.ObjectRef, int] | WeightStream) -> dict[str, float]:
        """Push a full update to every actor (one copy in the object store, shared by all).

        ``(ObjectRef, num_bytes)`` of a ``PackedWeights`` already in the object store (what
        ``TrainerGroup.export_weights_ref`` returns) is forwarded as is: no copy through this process.

        Tensors travel as numpy arrays (`PackedWeights`: zero-copy reads in the actors); safetensors
        bytes are passed through as they are. The object is kept, so an actor restarted later gets
        the same weights.
        """
        t0 = time.perf_counter()
        if isinstance(weights, WeightStream):
            if self.channel is None:
                raise WeightSyncError("no weight channel is open: connect_weight_channel() first")
            stats = self._receive_stream(weights)
            self._weights_ref = None  # a restarted actor asks weights_source instead
            self.metrics["weight_updates"] += 1
            return {"num_bytes": stats[0]["num_bytes"], "num_buckets": stats[0]["num_buckets"],
                    "serialize_s": 0.0, "max_actor_load_s": max(s["total_s"] for s in stats),
                    "total_s": time.perf_counter() - t0}
        return self.finish_weights(self.submit_weights(weights, started_at=t0))

    def submit_weights(self, weights: WeightsLike | bytes | tuple[ray.ObjectRef, int], *,
                       started_at: float | None = None) -> "PendingWeights":
        """Queue a full update on every actor and return at once (object-store channel only).

        Each actor runs its calls in the order they were sent, so a generation sent after this call
        runs with these weights and one sent before it finishes with the old ones: the asynchronous
        loop relies on this to know which policy version produced each response."""
        t0 = time.perf_counter() if started_at is None else started_at
        if isinstance(weights, WeightStream):
            raise WeightSyncError("a streamed (collective) update cannot be queued: use update_weights")
        if isinstance(weights, tuple) and len(weights) == 2 and isinstance(weights[0], ray.ObjectRef):
            # Already in the object store (the trainer put it there): forward the reference.
            ref, size = weights
            t_ser = t0
        else:
            if isinstance(weights, (bytes, bytearray)):
                payload: PackedWeights | bytes = bytes(weights)
                size = len(payload)
            else:
                named = dict(weights.items()) if isinstance(weights, Mapping) else dict(weights)
                payload = pack_weights(named)
                size = sum(a.nbytes for a in payload.arrays.values())
            t_ser = time.perf_counter()
            ref = ray.put(payload)
        timeout = self.engine_config.weight_update_timeout_s
        refs = [a.update_weights.remote(ref, timeout) for a in self.actors]
        # Until every actor has accepted it, a restarted actor gets these (they are the newest queued);
        # a refused update is forgotten in finish_weights, so a replacement never loads bad weights.
        self._queued_ref = ref
        return PendingWeights(ref=ref, refs=refs, num_bytes=float(size), started_at=t0, serialize_s=t_ser - t0)

    def finish_weights(self, pending: "PendingWeights") -> dict[str, float]:
        """Wait until every actor has loaded a queued update; its timing."""
        timeout = self.engine_config.weight_update_timeout_s
        try:
            # Small margin over the engine's own timeout, which fires first with a clearer error.
            stats = ray.get(pending.refs, timeout=timeout * 1.5 + 5.0)
        except GetTimeoutError as e:
            self._forget_queued(pending)
            raise WeightSyncTimeoutError(
                f"rollout actors did not finish a weight update within {timeout * 1.5 + 5.0:.0f} s"
            ) from e
        except Exception:
            self._forget_queued(pending)
            raise
        self._weights_ref = pending.ref
        self._forget_queued(pending)
        self.metrics["weight_updates"] += 1
        return {
            "num_bytes": pending.num_bytes,
            "serialize_s": pending.serialize_s,
            "max_actor_load_s": max(s["total_s"] for s in stats),
            "total_s": time.perf_counter() - pending.started_at,
        }

    def _forget_queued(self, pending: "PendingWeights") -> None:
        if self._queued_ref is pending.ref:
            self._queued_ref = None

    # ------------------------------------------------------------- lifecycle
    def restart_actor(self, idx: int) -> None:
        """Replace actor `idx` by a fresh one with the latest weights."""
        old = self.actors[idx]
        try:
            ray.kill(old, no_restart=True)
        except Exception:  # noqa: BLE001 - it is usually dead already
            pass
        new = self._spawn(idx)
        ray.get(new.ready.remote())
        ref = self._queued_ref if self._queued_ref is not None else self._weights_ref
        if ref is None and self.weights_source is not None:
            ref = self.weights_source()[0]  # streamed syncs keep no copy: export one for this actor
        if self.channel is not None:
            self.channel = None  # the new actor is not a member: the next sync forms a new channel
        if ref is not None:
            ray.get(new.update_weights.remote(ref, self.engine_config.weight_update_timeout_s))
        self.actors[idx] = new
        self.metrics["actor_restarts"] += 1

    def ready(self) -> list[dict[str, object]]:
        return ray.get([a.ready.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
        self._weights_ref = None
        self._queued_ref = None
