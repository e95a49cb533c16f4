"""Placement groups for the two worker groups: each group's actors get one bundle each (CPU, GPU
and custom resources), reserved up front, so a run either gets all its workers or fails fast with
a clear error instead of hanging half-scheduled."""

from __future__ import annotations

from typing import Any


def bundle(num_cpus: float, num_gpus: float, resources: dict[str, float]) -> dict[str, float]:
    out = {"CPU": float(num_cpus), **{k: float(v) for k, v in resources.items()}}
    if num_gpus:
        out["GPU"] = float(num_gpus)
    return {k: v for k, v in out.items() if v > 0}


def reserve(name: str, one: dict[str, float], count: int, strategy: str, timeout_s: float) -> Any:
    """A placement group of ``count`` copies of ``one``; raises naming what could not be placed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([dict(one) for _ in range(count)], strategy=strategy, name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(f"{name}: could not place {count} worker(s) of {one} with strategy {strategy} within "
                           f"{timeout_s:.0f} s; cluster resources: {ray.cluster_resources()}")
    return pg


def release(pg: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    if pg is not None:
        remove_placement_group(pg)
