"""A collective weight channel: trainer rank 0 broadcasts parameter buckets to every engine worker.

Why: the object-store sync gathers the whole state dict in one process and copies it to every
engine; at 32B parameters that is ~64 GB per step through one process. Here the sender streams
fixed-size buckets over a process group of its own (gloo on CPU, NCCL on GPU, same code), so no
process holds more than about one bucket beyond its model.

One sync, as every member of the group sees it:

1. the sender broadcasts the *manifest* (name, shape, dtype of every tensor, in send order);
2. every receiver checks it against its model (names, shapes, floats) and all members agree on
   the outcome (an all-reduce of a status flag): a bad manifest stops everyone before any tensor
   moves, and the receiver raises a ValueError naming the tensor;
3. the sender broadcasts the buckets: `plan_buckets(manifest, bucket_bytes)` is a pure function,
   so every member knows each bucket's size and contents without per-bucket metadata;
4. a final status all-reduce tells the sender that every receiver loaded its copy.

The group is separate from DeepSpeed's and vLLM's default groups: a TCPStore hosted by the sender
plus `ProcessGroupGloo` / `ProcessGroupNCCL` built from it, with the configured timeout on every
collective, so a receiver that is gone turns into an error instead of a hang.
"""

from __future__ import annotations

import datetime
import pickle
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rollout.weight_format import WeightSyncError

# Offsets of tensors inside a bucket are multiples of this, so every slice can be viewed as its dtype.
_ALIGN = 64
BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a sync: its checkpoint name, full (gathered) shape and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def torch_dtype(self) -> torch.dtype:
        dt = getattr(torch, self.dtype, None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}")
        return dt

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n * torch.empty((), dtype=self.torch_dtype).element_size()


@dataclass(frozen=True)
class Bucket:
    """Tensors sent together: spec and byte offset of each inside one flat uint8 buffer."""

    specs: tuple[TensorSpec, ...]
    offsets: tuple[int, ...]
    nbytes: int


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def plan_buckets(manifest: Sequence[TensorSpec], bucket_bytes: int) -> list[Bucket]:
    """Cut the manifest, in order, into buckets of at most `bucket_bytes` (a tensor larger than
    that travels alone). Sender and receivers call this on the same manifest: same buckets."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: list[Bucket] = []
    specs: list[TensorSpec] = []
    offsets: list[int] = []
    size = 0
    for spec in manifest:
        start = _aligned(size)
        if specs and start + spec.nbytes > bucket_bytes:
            buckets.append(Bucket(tuple(specs), tuple(offsets), size))
            specs, offsets, start = [], [], 0
        specs.append(spec)
        offsets.append(start)
        size = start + spec.nbytes
    if specs:
        buckets.append(Bucket(tuple(specs), tuple(offsets), size))
    return buckets


def pack_into(spec: TensorSpec, offset: int, t: torch.Tensor, buffer: torch.Tensor) -> None:
    """Copy one tensor into its slot of a bucket buffer (checked against its manifest entry)."""
    if tuple(t.shape) != spec.shape or t.dtype != spec.torch_dtype:
        raise ValueError(f"tensor {spec.name!r} is {tuple(t.shape)} {t.dtype}; the manifest says "
                         f"{spec.shape} {spec.dtype}")
    buffer[offset: offset + spec.nbytes].view(t.dtype).view(t.shape).copy_(t.detach())


def unpack_bucket(bucket: Bucket, buffer: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Views (no copy) of the bucket's tensors inside `buffer`."""
    return [(s.name, buffer[off: off + s.nbytes].view(s.torch_dtype).view(s.shape))
            for s, off in zip(bucket.specs, bucket.offsets)]


@dataclass(frozen=True)
class ChannelSpec:
    """Where and how to form the group. Rank 0 is the sender; receivers take ranks 1..world_size-1."""

    host: str
    port: int
    world_size: int
    backend: str = "gloo"
    timeout_s: float = 120.0
    bucket_bytes: int = 256 * 2**20

    def validate(self) -> "ChannelSpec":
        if self.backend not in BACKENDS:
            raise ValueError(f"weight channel backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.world_size < 2:
            raise ValueError(f"a weight channel needs a sender and >= 1 receiver, got world_size={self.world_size}")
        if not self.timeout_s > 0:
            raise ValueError(f"weight channel timeout_s must be > 0, got {self.timeout_s}")
        if self.bucket_bytes < 1:
            raise ValueError(f"weight channel bucket_bytes must be >= 1, got {self.bucket_bytes}")
        return self


class WeightChannel:
    """One member of the group (the sender, rank 0, or a receiver). Building it blocks until every
    member has joined or `spec.timeout_s` passes (then a WeightSyncError names the address)."""

    def __init__(self, spec: ChannelSpec, rank: int, device: torch.device | str = "cpu") -> None:
        spec.validate()
        if not 0 <= rank < spec.world_size:
            raise ValueError(f"weight channel rank must be in [0, {spec.world_size}), got {rank}")
        self.spec, self.rank, self.device = spec, rank, torch.device(device)
        timeout = datetime.timedelta(seconds=spec.timeout_s)
        try:
            self._store = dist.TCPStore(spec.host, spec.port, spec.world_size, is_master=rank == 0,
                                        timeout=timeout, wait_for_workers=False)
            if spec.backend == "gloo":
                self.pg: dist.ProcessGroup = dist.ProcessGroupGloo(self._store, rank, spec.world_size, timeout)
            else:
                opts = dist.ProcessGroupNCCL.Options()
                opts._timeout = timeout
                self.pg = dist.ProcessGroupNCCL(self._store, rank, spec.world_size, opts)
        except Exception as e:  # noqa: BLE001 - re-raised with the address and the timeout
            raise WeightSyncError(
                f"weight channel rank {rank}/{spec.world_size} could not join the group at "
                f"{spec.host}:{spec.port} ({spec.backend}) within {spec.timeout_s:.0f} s: "
                f"{type(e).__name__}: {e}") from e
        self.syncs = 0

    # ------------------------------------------------------------- primitives
    def _wait(self, work, what: str) -> None:  # noqa: ANN001 - a c10d Work
        try:
            work.wait()
        except Exception as e:  # noqa: BLE001 - c10d raises RuntimeError/DistBackendError
            # Out of step for good: drop the group so members still waiting in it fail now, not
            # after their timeout.
            self.close()
            raise WeightSyncError(
                f"weight channel rank {self.rank}: {what} failed (a member gone or slower than "
                f"{self.spec.timeout_s:.0f} s): {type(e).__name__}: {str(e)[:300]}") from e

    def _group(self) -> dist.ProcessGroup:
        pg = getattr(self, "pg", None)
        if pg is None:
            raise WeightSyncError(f"weight channel rank {self.rank} is closed (an earlier collective failed)")
        return pg

    def broadcast(self, t: torch.Tensor, what: str) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self._wait(self._group().broadcast([t], opts), what)

    def agree(self, failed: bool, what: str) -> bool:
        """True when some member reports a failure (all-reduce MAX of a flag)."""
        flag = torch.tensor([1 if failed else 0], dtype=torch.int32, device=self.device)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MAX
        self._wait(self._group().allreduce([flag], opts), what)
        return bool(flag.item())

    def _broadcast_object(self, obj: object) -> object:
        if self.rank == 0:
            data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
            size = torch.tensor([data.numel()], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        size = size.to(self.device)
        self.broadcast(size, "manifest size broadcast")
        if self.rank != 0:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        buf = data.to(self.device)
        self.broadcast(buf, "manifest broadcast")
        return pickle.loads(buf.cpu().numpy().tobytes())

    # ------------------------------------------------------------------ sender
    def send(self, manifest: Sequence[TensorSpec], tensors: Iterable[torch.Tensor]) -> dict[str, float]:
        """Rank 0: stream `tensors` (in manifest order, produced lazily, e.g. gathered one module at
        a time) to every receiver. Raises WeightSyncError when a receiver refuses or fails."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 sends on a weight channel")
        manifest = list(manifest)
        self._broadcast_object({"sync": self.syncs, "manifest": manifest})
        if self.agree(False, "manifest check"):
            raise WeightSyncError("a rollout engine refused the weight manifest (its own error names the tensor)")
        buckets = plan_buckets(manifest, self.spec.bucket_bytes)
        buffer = torch.empty(max((b.nbytes for b in buckets), default=0), dtype=torch.uint8, device=self.device)
        it = iter(tensors)
        try:
            for k, bucket in enumerate(buckets):
                for spec, off in zip(bucket.specs, bucket.offsets):
                    # Copied as soon as it is produced: a ZeRO-3 gather frees it when the next one starts.
                    t = next(it, None)
                    if t is None:
                        raise ValueError(f"the sender ran out of tensors at {spec.name!r} "
                                         f"(manifest has {len(manifest)})")
                    pack_into(spec, off, t, buffer)
                self.broadcast(buffer[: bucket.nbytes], f"bucket {k + 1}/{len(buckets)} broadcast")
            if next(it, None) is not None:
                raise ValueError("the sender produced more tensors than its manifest lists")
        except ValueError:
            self.close()  # the receivers wait in a broadcast that will not come: fail them now
            raise
        if self.agree(False, "load confirmation"):
            raise WeightSyncError("a rollout engine failed to load the streamed weights (see its error)")
        self.syncs += 1
        return {"num_tensors": float(len(manifest)), "num_bytes": float(sum(s.nbytes for s in manifest)),
                "num_buckets": float(len(buckets)), "bucket_bytes": float(buffer.numel())}

    # ---------------------------------------------------------------- receiver
    def receive(self, check: Callable[[list[TensorSpec]], None],
                load: Callable[[Iterator[tuple[str, torch.Tensor]]], None]) -> dict[str, float]:
        """Receiver: get the manifest, `check` it (raise ValueError to refuse: nothing moves), then
        hand `load` an iterator over (name, tensor) that receives bucket by bucket as it is consumed.
        Each bucket gets a fresh buffer (freed once its tensors are dropped): vLLM's layerwise reload
        keeps references to a layer's tensors until the layer is complete, which may span buckets."""
        if self.rank == 0:
            raise RuntimeError("rank 0 sends; receivers have rank >= 1")
        msg = self._broadcast_object(None)
        manifest: list[TensorSpec] = msg["manifest"]  # type: ignore[index]
        error: Exception | None = None
        try:
            check(manifest)
        except ValueError as e:
            error = e
        if self.agree(error is not None, "manifest check"):
            raise error or WeightSyncError("another engine refused the weight manifest")
        buckets = plan_buckets(manifest, self.spec.bucket_bytes)
        received = 0

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal received
            for k, bucket in enumerate(buckets):
                buf = torch.empty(bucket.nbytes, dtype=torch.uint8, device=self.device)
                self.broadcast(buf, f"bucket {k + 1}/{len(buckets)} broadcast")
                received += 1
                yield from unpack_bucket(bucket, buf)
                del buf

        failure: Exception | None = None
        try:
            load(stream())
        except WeightSyncError:
            raise  # the channel itself broke: the collective is out of step, nothing to drain
        except Exception as e:  # noqa: BLE001 - reported to the sender, then re-raised
            failure = e
        if failure is None and received != len(buckets):
            failure = WeightSyncError(f"the loader stopped after {received} of {len(buckets)} buckets")
        for k in range(received, len(buckets)):  # keep the collective in step after a failed load
            drain = torch.empty(buckets[k].nbytes, dtype=torch.uint8, device=self.device)
            self.broadcast(drain, f"bucket {k + 1}/{len(buckets)} broadcast (drain)")
        if self.agree(failure is not None, "load confirmation") and failure is None:
            raise WeightSyncError("another engine failed to load the streamed weights")
        if failure is not None:
            raise failure
        self.syncs += 1
        return {"num_tensors": float(len(manifest)), "num_bytes": float(sum(s.nbytes for s in manifest)),
                "num_buckets": float(len(buckets))}

    def close(self) -> None:
        """Drop the group (its sockets close; members still waiting on it get an error)."""
        pg = self.__dict__.pop("pg", None)
        for method in ("abort", "shutdown"):
            if pg is not None and hasattr(pg, method):
                try:
                    getattr(pg, method)()
                except Exception:  # noqa: BLE001 - best effort
                    pass
        self.__dict__.pop("_store", None)


@dataclass(frozen=True)
class WeightStream:
    """A streamed sync under way: the Ray ObjectRefs of the trainer ranks' send calls (all ranks
    take part in the ZeRO-3 gathers; rank 0 broadcasts). `RolloutGroup.update_weights` takes it."""

    sender_refs: tuple
