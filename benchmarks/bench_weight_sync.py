"""Weight sync trainer -> vLLM through Ray, per model size and per path, and its share of a step.

Paths, alternated on the same actors, ``--reps`` times (median):
- via driver: ``rollout.update_weights(trainer.export_weights())``: the state dict comes to the
  driver, is packed into numpy arrays and put into the object store again (the path before the
  change);
- by reference: ``rollout.update_weights(trainer.export_weights_ref())``: rank 0 puts the packed
  arrays into the object store itself, the driver forwards the reference (the loop's path now).

Both end with the engine's ``load_weights``. The share of a step uses a step time given on the
command line (default: the default job's measured mean step, BENCHMARKS/README).

    .venv/bin/python benchmarks/bench_weight_sync.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "weight_sync.md"


def measure(model: str, reps: int) -> dict[str, list[float]]:
    import ray

    from cispo.trainer import TrainerConfig
    from cispo.trainer.group import TrainerGroup
    from rollout.config import EngineConfig, GroupConfig
    from rollout.group import RolloutGroup
    from rollout.models import prepare_model

    path = prepare_model(model, dtype="float32")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        trainer = TrainerGroup(TrainerConfig(zero_stage=0, precision="fp32", batch_size=8, mini_batch_size=8), path)
        engine = dataclasses.replace(EngineConfig(), model=str(path), dtype="float32", max_model_len=256,
                                     omp_threads_bind="all")
        rollout = RolloutGroup(engine, GroupConfig(num_actors=1, num_cpus_per_actor=1.0))
        times: dict[str, list[float]] = {"via driver": [], "by reference": []}
        rollout.update_weights(trainer.export_weights_ref())  # warm-up: first load allocates
        for _ in range(reps):
            for name, export in (("via driver", trainer.export_weights), ("by reference", trainer.export_weights_ref)):
                t0 = time.perf_counter()
                stats = rollout.update_weights(export())
                times[name].append(time.perf_counter() - t0)
                times.setdefault(f"{name} MiB", []).append(stats["num_bytes"] / 2**20)
        rollout.shutdown()
        trainer.shutdown()
        return times
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=44.0,
                        help="step time of the default job, for the sync's share (README: 44 s)")
    args = parser.parse_args()
    lines = ["# Weight sync (trainer -> vLLM through Ray)", "",
             f"`.venv/bin/python benchmarks/bench_weight_sync.py --reps {args.reps}`: one trainer rank and one "
             "rollout actor (fp32), both paths alternated on the same actors, median seconds per full update "
             "(export + transfer + vLLM `load_weights`).", "",
             "| model | MiB sent | via driver (s) | by reference (s) | ratio | share of a "
             f"{args.step_seconds:.0f} s default step (by reference; goal <= 10%) |", "|---|---|---|---|---|---|"]
    for model in args.models:
        t = measure(model, args.reps)
        via, ref = statistics.median(t["via driver"]), statistics.median(t["by reference"])
        lines.append(f"| {model} | {statistics.median(t['by reference MiB']):.1f} | {via:.2f} | {ref:.2f} | "
                     f"{ref / via:.2f} | {100 * ref / args.step_seconds:.1f}% |")
        print(lines[-1], flush=True)
    lines.append(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.")
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
