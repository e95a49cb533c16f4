"""Weight sync trainer -> vLLM per model size and per channel: time, and peak extra memory per process.

Setup: two DeepSpeed ZeRO-3 ranks (fp32, gloo) and one in-process vLLM engine, each a Ray actor on
this machine; both channels alternate on the same actors, ``--reps`` times (median):

- object store (``rollout.group.weight_sync=object_store``): every rank gathers the full model,
  rank 0 packs it and puts it in Ray's object store, the engine reads it and loads it;
- collective (``weight_sync=collective``): ranks gather one module at a time, rank 0 broadcasts
  ``--bucket-mb`` buckets over a gloo group to the engine, which loads them as they arrive.

Peak extra memory: before each sync every process returns its freed heap to the OS (``malloc_trim``)
and the kernel's peak-RSS counter is reset (``/proc/<pid>/clear_refs``); afterwards
``VmHWM - VmRSS_before`` is the most memory the sync added to that process. The object-store channel
also holds one full copy in Ray's shared-memory object store (a column of its own: the pages the
engine maps were already resident from the previous sync, so its RSS does not show them).

Models: ``tiny``, ``smollm2-135m`` and ``synthetic-<N>m``: a random Llama-style model of about N
million parameters built from a config (SmolLM2's tokenizer), e.g. ``synthetic-500m``.

    .venv/bin/python benchmarks/bench_weight_sync.py --models tiny smollm2-135m synthetic-500m
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "weight_sync.md"
CHANNELS = ("object_store", "collective")


def synthetic_model(millions: int) -> Path:
    """A random Llama-style model of ~`millions` M parameters (hidden 1536, SmolLM2's tokenizer,
    tied embeddings), cached next to the built-in models."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rollout.models import default_cache_dir, prepare_model

    out = default_cache_dir() / f"synthetic-{millions}m-fp32"
    if (out / "config.json").is_file():
        return out
    tok_dir = prepare_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    hidden, inter, heads, kv = 1536, 4096, 16, 4
    per_layer = hidden * hidden * 2 + 2 * hidden * (hidden * kv // heads) + 3 * hidden * inter
    layers = max(1, round((millions * 1e6 - len(tok) * hidden) / per_layer))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def model_path(name: str) -> Path:
    from rollout.models import prepare_model

    m = re.fullmatch(r"synthetic-(\d+)m", name)
    return synthetic_model(int(m.group(1))) if m else prepare_model(name, dtype="float32")


def _status(pid: int, key: str) -> float:
    """A /proc/<pid>/status field in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _trim(_actor: object = None) -> None:
    """Give freed heap memory back to the OS, so that the RSS before a sync is live memory only
    (glibc keeps freed arenas: without this, a sync that reuses the previous sync's freed memory
    shows no peak at all)."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(name: str, reps: int, bucket_mb: float, env: dict[str, str]) -> dict[str, dict[str, list[float]]]:
    import ray

    from cispo.trainer import TrainerConfig
    from cispo.driver.weights import make_broadcast
    from cispo.trainer.group import TrainerGroup
    from rollout.config import EngineConfig, GroupConfig
    from rollout.group import RolloutGroup

    path = model_path(name)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", runtime_env={"env_vars": env} if env else None)
    try:
        trainer = TrainerGroup(TrainerConfig(zero_stage=3, world_size=2, num_cpus_per_rank=0.5, precision="fp32",
                                             batch_size=8, mini_batch_size=8), path)
        engine = dataclasses.replace(EngineConfig(), model=str(path), dtype="float32", max_model_len=256,
                                     omp_threads_bind="all")
        rollout = RolloutGroup(engine, GroupConfig(num_actors=1, num_cpus_per_actor=1.0, weight_sync="collective",
                                                   weight_bucket_mb=bucket_mb))
        pids = {f"trainer rank {r}": ray.get(a.__ray_call__.remote(lambda self: os.getpid()))
                for r, a in enumerate(trainer.actors)}
        pids["engine"] = int(rollout.ready()[0]["pid"])
        pids["driver"] = os.getpid()
        out: dict[str, dict[str, list[float]]] = {c: {} for c in CHANNELS}
        for rep in range(reps + 1):  # rep 0 warms both paths up (first loads allocate)
            for channel in CHANNELS:
                rollout.config.weight_sync = channel
                ray.get([a.__ray_call__.remote(_trim) for a in [*trainer.actors, *rollout.actors]])
                _trim()
                before = {k: _status(p, "VmRSS") for k, p in pids.items()}
                for p in pids.values():
                    _reset_peak(p)
                t0 = time.perf_counter()
                stats = make_broadcast(rollout.config.weight_sync, trainer, rollout).load()
                sec = time.perf_counter() - t0
                if rep == 0:
                    continue
                rec = out[channel]
                rec.setdefault("seconds", []).append(sec)
                rec.setdefault("MiB", []).append(stats["num_bytes"] / 2**20)
                rec.setdefault("buckets", []).append(stats.get("num_buckets", 1.0))
                for k, p in pids.items():
                    rec.setdefault(f"peak {k}", []).append(_status(p, "VmHWM") - before[k])
                print(name, channel, f"{sec:.2f} s", {k: round(v[-1]) for k, v in rec.items() if k.startswith("peak")},
                      flush=True)
        rollout.shutdown()
        trainer.shutdown()
        return out
    finally:
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m", "synthetic-500m"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=64.0,
                        help="collective channel bucket size (rollout.group.weight_bucket_mb)")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment of the Ray workers, e.g. MALLOC_MMAP_THRESHOLD_=1048576 (glibc returns "
                             "buffers >= 1 MiB to the OS on free: peaks then show live memory, not heap retention)")
    parser.add_argument("--out", type=Path, default=RESULT, help="results file")
    parser.add_argument("--step-seconds", type=float, default=44.0,
                        help="step time of the default job, for the sync's share (README: 44 s)")
    args = parser.parse_args()
    bad = [e for e in args.env if "=" not in e]
    if bad:
        parser.error(f"--env takes KEY=VALUE pairs, got {bad}")
    env = dict(e.split("=", 1) for e in args.env)
    cmd = " ".join(["benchmarks/bench_weight_sync.py", "--models", *args.models, "--reps", str(args.reps),
                    "--bucket-mb", f"{args.bucket_mb:g}", *(["--env", *args.env] if env else []),
                    *(["--out", str(args.out)] if args.out != RESULT else [])])
    lines = ["# Weight sync (trainer -> vLLM): object store vs collective channel", "",
             f"`.venv/bin/python {cmd}`: two ZeRO-3 trainer ranks (fp32, gloo) and one in-process vLLM engine "
             "as Ray actors on 2 cores; both channels alternate on the same actors; median of the reps. Peak = "
             "most memory the sync added to the process (VmHWM after the sync minus VmRSS before it; before, "
             "each process returns freed heap to the OS with malloc_trim and its peak counter is reset). The "
             "object store channel also holds one full copy in Ray's shared-memory object store.", "",
             "| model | MiB sent | channel | buckets | sync (s) | peak trainer rank 0 (MiB) | peak rank 1 (MiB) "
             f"| peak engine (MiB) | object store copy (MiB) | share of a {args.step_seconds:.0f} s step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        res = measure(name, args.reps, args.bucket_mb, env)
        for channel in CHANNELS:
            r = {k: statistics.median(v) for k, v in res[channel].items()}
            lines.append(f"| {name} | {r['MiB']:.1f} | {channel} | {r['buckets']:.0f} | {r['seconds']:.2f} | "
                         f"{r['peak trainer rank 0']:.0f} | {r['peak trainer rank 1']:.0f} | {r['peak engine']:.0f} | "
                         f"{r['MiB'] if channel == 'object_store' else 0:.0f} | "
                         f"{100 * r['seconds'] / args.step_seconds:.1f}% |")
            print(lines[-1], flush=True)
    lines.append(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
