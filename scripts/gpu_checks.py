"""The checks `scripts/gpu_check.sh` runs: the quick preset on GPUs through each weight channel,
trainer/engine log-prob agreement after a sync through each channel, a short throughput figure.

Each prints ONE JSON line (``{"check": ..., "ok": ..., ...}``) and exits 0 when the check passed,
1 when it ran and failed. Works on CPU too (``--gpus 0``), which is how it is developed here.

    python scripts/gpu_checks.py agreement --gpus 0.5 --channel collective
    python scripts/gpu_checks.py quick --gpus 1 --channel collective --run-dir runs/gpu_check/quick
    python scripts/gpu_checks.py throughput --gpus 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _ray_init() -> None:
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})


def agreement(gpus: float, channel: str, tolerance: float) -> dict:
    """Train one step, sync through `channel`, then compare vLLM's log-probs of its own samples with
    the trainer's recomputation (fp32 both sides, tied head)."""
    import numpy as np
    import ray

    from cispo.trainer import TrainBatch, TrainerConfig, TrainerGroup
    from cispo.driver.weights import make_broadcast
    from cispo.trainer.synthetic import random_batch
    from rollout.config import EngineConfig, GroupConfig, SamplingConfig
    from rollout.group import RolloutGroup
    from rollout.models import prepare_model

    path = prepare_model("tiny-tied")
    _ray_init()
    try:
        trainer = TrainerGroup(TrainerConfig(zero_stage=3, world_size=1, precision="fp32", lm_head_fp32=True,
                                             num_cpus_per_rank=1, num_gpus_per_rank=gpus, batch_size=8,
                                             mini_batch_size=8, lr=5e-2, micro_batch_max_tokens=64,
                                             logprob_chunk_size=16), path)
        rollout = RolloutGroup(EngineConfig(model=str(path), dtype="float32", max_model_len=64,
                                            gpu_memory_utilization=0.3, enforce_eager=True),
                               GroupConfig(num_actors=1, num_cpus_per_actor=1, num_gpus_per_actor=gpus,
                                           weight_sync=channel, weight_bucket_mb=0.1))
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(str(path)).vocab_size
        trainer.update(random_batch(8, prompt_len=4, max_response_len=8, vocab_size=vocab, seed=1))
        t0 = time.perf_counter()
        stats = make_broadcast(rollout.config.weight_sync, trainer, rollout).load()
        sync_s = time.perf_counter() - t0
        results = rollout.generate([[5, 17, 42, 8], [9, 3, 77, 21, 30]],
                                   SamplingConfig(n=4, max_tokens=12, temperature=1.0, seed=0))
        batch = TrainBatch.from_sequences(
            [r.prompt_ids for r in results], [r.response_ids for r in results],
            advantages=np.zeros(len(results)), group_ids=[r.group_id for r in results],
            rollout_log_probs=[r.logprobs for r in results])
        gap = (trainer.compute_log_probs(batch) - batch.rollout_log_probs)[batch.response_mask.bool()].abs()
        worst = float(gap.max())
        return {"check": f"logprob_agreement_{channel}", "ok": worst <= tolerance, "max_abs_diff": worst,
                "tolerance": tolerance, "sync_s": round(sync_s, 3), "buckets": stats.get("num_buckets", 1.0),
                "backend": rollout.channel_backend() if channel == "collective" else "object_store"}
    finally:
        ray.shutdown()


def throughput(gpus: float, model: str, prompts: int, max_tokens: int) -> dict:
    """Generated tokens per second of one engine (bf16 on GPU, fp32 on CPU), after a warm-up call."""
    import torch

    from rollout.config import EngineConfig, SamplingConfig
    from rollout.engine import RolloutEngine
    from rollout.models import prepare_model

    dtype = "bfloat16" if gpus > 0 and torch.cuda.is_available() else "float32"
    path = prepare_model(model, dtype=dtype)
    engine = RolloutEngine(EngineConfig(model=str(path), dtype=dtype, max_model_len=max_tokens + 64,
                                        gpu_memory_utilization=0.5, enforce_eager=True))
    try:
        sampling = SamplingConfig(n=1, max_tokens=max_tokens, temperature=1.0, seed=0)
        batch = [[10 + i % 50, 20, 30, 40] for i in range(prompts)]
        engine.generate(batch[:2], sampling)  # warm-up
        t0 = time.perf_counter()
        results = engine.generate(batch, sampling)
        sec = time.perf_counter() - t0
        tokens = sum(len(r.response_ids) for r in results)
        return {"check": "throughput", "ok": tokens > 0, "model": model, "dtype": dtype, "prompts": prompts,
                "tokens": tokens, "seconds": round(sec, 3), "tokens_per_s": round(tokens / sec, 1)}
    finally:
        engine.close()


def quick(gpus: float, channel: str, run_dir: str) -> dict:
    """The quick preset with rollout=gpu trainer=gpu, sized for one engine and one trainer rank
    (`gpus` each), syncing through `channel`; reports the steps, sync time and reward."""
    import subprocess

    from cispo.tracking import read_metrics

    overrides = [
        "experiment=quick", "rollout=gpu", "trainer=gpu", "logger=disabled", f"run_dir={run_dir}",
        f"rollout.group.weight_sync={channel}", "rollout.group.num_actors=1", f"rollout.group.num_gpus_per_actor={gpus}",
        "rollout.group.num_cpus_per_actor=1", "rollout.engine.max_model_len=1024", "rollout.engine.enforce_eager=true",
        "rollout.engine.gpu_memory_utilization=0.3", "rollout.sampling.max_tokens=16",
        "rollout.sampling.repetition_window=0", "trainer.world_size=1", f"trainer.num_gpus_per_rank={gpus}",
        "trainer.num_cpus_per_rank=1", "trainer.precision=fp32", "trainer.mini_batch_size=8",
        "trainer.micro_batch_max_tokens=4096", "trainer.logprob_chunk_size=1024"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cispo.train", *overrides], cwd=ROOT, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"check": f"quick_{channel}", "ok": False, "error": f"cispo.train exited {proc.returncode}"}
    recs = [r for r in read_metrics(run_dir) if "time/sync" in r]
    last = recs[-1] if recs else {}
    reward = next((v for k, v in last.items() if k.startswith("reward") and k.endswith("mean")), None)
    return {"check": f"quick_{channel}", "ok": bool(recs), "run_s": round(seconds, 1), "steps_with_sync": len(recs),
            "sync_s": round(float(last.get("time/sync", 0.0)), 3), "step_s": round(float(last.get("time/step", 0.0)), 2),
            "reward_mean": reward}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("agreement")
    a.add_argument("--gpus", type=float, required=True, help="GPUs per worker (0.5: trainer and engine share one)")
    a.add_argument("--channel", choices=("object_store", "collective"), required=True)
    a.add_argument("--tolerance", type=float, default=2e-3, help="max |log-prob diff| (fp32; CPU tests use 1e-4)")
    q = sub.add_parser("quick")
    q.add_argument("--gpus", type=float, required=True)
    q.add_argument("--channel", choices=("object_store", "collective"), required=True)
    q.add_argument("--run-dir", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--gpus", type=float, required=True)
    t.add_argument("--model", default="smollm2-135m")
    t.add_argument("--prompts", type=int, default=64)
    t.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        if args.cmd == "agreement":
            out = agreement(args.gpus, args.channel, args.tolerance)
        elif args.cmd == "quick":
            out = quick(args.gpus, args.channel, args.run_dir)
        else:
            out = throughput(args.gpus, args.model, args.prompts, args.max_tokens)
    except Exception as e:  # noqa: BLE001 - one summary line either way
        name = {"agreement": "logprob_agreement_", "quick": "quick_"}.get(args.cmd)
        out = {"check": f"{name}{args.channel}" if name else args.cmd, "ok": False,
               "error": f"{type(e).__name__}: {str(e)[:500]}"}
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
