"""Synchronous vs asynchronous RL steps (``rollout.mode=async``, max_staleness k = 1, 2, 4, 8) on a
local two-node Ray cluster: the vLLM engine on one node pinned to core 0, the trainer on another pinned
to core 1, so generation and the update can overlap instead of sharing cores.

Setting: the default job (SmolLM2-135M-Instruct warm-started, CISPO, 8 prompts x G = 4, 32 tokens,
dynamic sampling), pi_old = the engine's log-probs in every variant (async k > 0 needs it; the sync
row uses it too so the rows differ only in the mode). Each variant is its own run of ``--steps``
steps; step 1 (start-up of the pipeline) and the last step (final checkpoint) are not timed.

Prediction: a synchronous step costs generate + score + update + sync; an asynchronous one
max(generate + score, update + sync) once the pipeline is full (taken from the sync run's phases).

    .venv/bin/python benchmarks/bench_async.py               # all variants, then the table
    .venv/bin/python benchmarks/bench_async.py --steps 6 --staleness 1 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
RESULT = HERE / "results" / "async.md"
COMMON = ("experiment=default", "logger=disabled", "eval.at_start=false", "eval.sets=[]", "checkpoint.save_every=0",
          "algorithm.old_log_probs=rollout", "++rollout.group.resources={rollout_node: 1}",
          "++trainer.resources_per_rank={trainer_node: 1}", "rollout.engine.num_threads=1", "trainer.torch_threads=1")
CORES = {"rollout": {0}, "trainer": {1}}


def pin_all_threads(cores: set[int]) -> list[int]:
    """Runs inside a worker: every thread of the process (torch's pool included) onto ``cores``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:
            pass
    return sorted(os.sched_getaffinity(0))


def pin_workers(c) -> None:  # noqa: ANN001 - cispo.driver.components.Components
    import ray

    for role, actors in (("rollout", c.rollout.actors), ("trainer", c.trainer.actors)):
        for a in actors:
            ray.get(a.__ray_call__.remote(lambda self, cores=CORES[role]: pin_all_threads(cores)))


def make_config(run_dir: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from cispo.config import load_config
    from cispo.cli.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        raw = compose(config_name="train", overrides=[*COMMON, f"run_dir={run_dir}", *overrides])
    return load_config(OmegaConf.to_container(raw, resolve=True))


def timed_steps(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("step", 0) >= 1]
    return steps[1:-1]


def mean(records: list[dict], key: str) -> float:
    values = [r.get(key, 0.0) for r in records]
    return statistics.fmean(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--staleness", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be >= 3 (step 1 and the last step are not timed)")

    import ray
    from ray.cluster_utils import Cluster

    from cispo.driver.loop import train

    load_start = os.getloadavg()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"rollout_node": 1})
    cluster.add_node(num_cpus=1, resources={"trainer_node": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    variants = [("sync", ["rollout.mode=sync"])] + [
        (f"async k={k}", ["rollout.mode=async", f"algorithm.max_staleness={k}"]) for k in args.staleness]
    rows = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench_async_") as tmp:
            for name, overrides in variants:
                run_dir = Path(tmp) / name.replace(" ", "_").replace("=", "")
                cfg = make_config(run_dir, [f"total_steps={args.steps}", *overrides])
                start = time.perf_counter()
                train(cfg, on_built=pin_workers)
                rows[name] = (timed_steps(run_dir), time.perf_counter() - start)
                print(f"{name}: {mean(rows[name][0], 'time/step'):.1f} s/step", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    write_table(rows, args, load_start, os.getloadavg())
    return 0


def write_table(rows: dict, args: argparse.Namespace, load_start: tuple, load_end: tuple) -> None:
    from bench_step_vs_trl import cpu_model  # the CPU as lscpu names it (one place for every benchmark)

    sync = rows["sync"][0]
    gen = mean(sync, "time/generate") + mean(sync, "time/score")
    upd = mean(sync, "time/update") + mean(sync, "time/sync") + mean(sync, "time/old_log_probs")
    predicted_async = max(gen, upd)
    lines = [
        "## Asynchronous rollout: sync vs async (max_staleness k)",
        "",
        f"`.venv/bin/python benchmarks/bench_async.py --steps {args.steps}` ({cpu_model()}, "
        f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end). A local two-node Ray cluster: "
        "the vLLM engine's node pinned to core 0, the trainer's to core 1 (one thread each); the default job "
        "(SmolLM2-135M, CISPO, 8 prompts x G = 4, 32 tokens, dynamic sampling), pi_old = the engine's "
        f"log-probs in every row. Steps 2..{args.steps - 1} of each run are timed (one run per row; the "
        "spread is over its steps).",
        "",
        f"Prediction from the sync run's phases: sync step = generate + score ({gen:.1f} s) + update + sync "
        f"({upd:.1f} s) = {gen + upd:.1f} s; async step -> max of the two = {predicted_async:.1f} s "
        f"(x{(gen + upd) / predicted_async:.2f} steps per hour).",
        "",
        "| mode | s/step (min-max) | steps/hour | generated tokens/s | x sync | trainer idle s/step | "
        "rollout idle s/step | staleness mean (max) | dropped stale |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = mean(sync, "time/step")
    for name, (records, _wall) in rows.items():
        step_s = mean(records, "time/step")
        times = [r["time/step"] for r in records]
        tokens = mean(records, "rollout/tokens")
        is_async = name != "sync"
        lines.append(
            f"| {name} | {step_s:.1f} ({min(times):.1f}-{max(times):.1f}) | {3600 / step_s:.0f} | {tokens / step_s:.1f} | "
            f"x{base / step_s:.2f} | "
            + (f"{mean(records, 'async/trainer_idle_s'):.1f} | {mean(records, 'async/rollout_idle_s'):.1f} | "
               f"{mean(records, 'async/staleness_mean'):.2f} ({max(r['async/staleness_max'] for r in records):.0f}) | "
               f"{sum(r['async/dropped_stale'] for r in records):.0f} |" if is_async else "- | - | 0 | - |"))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
