"""One policy update of the default job, in process (no Ray, no vLLM): where its time goes and what
changes it.

    flock /tmp/cispo-heavy.lock .venv/bin/python benchmarks/bench_update_profile.py --setting default
    flock /tmp/cispo-heavy.lock .venv/bin/python benchmarks/bench_update_profile.py --setting long --reps 3

The batch has the default job's shapes: 32 responses (8 prompts x G = 4) after the job's rendered
prompts (their median token count), split into 4 mini-batches of 8 (4 optimizer steps), the job's
trainer config (configs/trainer/cpu.yaml: fp32, ZeRO-0, lr 1e-5); response lengths like the job's
(``default``: 6-11 tokens, mean ~8.5, as the warm-started model answers; ``long``: 64-128 tokens,
mean ~96, the 128-token-cap setting). pi_old is given (the loop computes it before the update).

1. GEMM ceiling: the best fp32 FLOP/s of 2048-square ``torch.mm`` on the same threads in this
   process (cispo.trainer.flops.measure_fp32_gemm_flops), measured before and after the rest; the
   best is passed as ``trainer.peak_flops`` so the update reports ``actor/perf/mfu``.
2. Profile: torch.profiler over one update; the top operators by self CPU time and their share.
3. A/B: each candidate against the baseline on the SAME worker and the SAME tokens, alternating
   (A B, B A, ...) ``--reps`` times; per pair the ratio candidate / baseline; reported: the median
   ratio and a bootstrap 95% interval (pairs resampled). Candidates switch per call (threads, the
   LM-head chunk, torch.compile of the transformer body, glibc malloc tuning), and for the ones
   that can change numbers, the largest |log-prob difference| against the baseline on one batch.

Results: benchmarks/results/update_profile.md (+ .json). The machine is shared: the load average at
start and end is in the table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from cispo.trainer import worker as worker_mod  # noqa: E402
from cispo.trainer.flops import measure_fp32_gemm_flops  # noqa: E402
from cispo.trainer.synthetic import random_batch  # noqa: E402

RESULT = HERE / "results" / "update_profile.md"
STORE = HERE / "results" / "update_profile.json"
RESPONSES = {"default": (6, 11), "long": (64, 128)}

_libc = ctypes.CDLL("libc.so.6")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4


def set_malloc(tuned: bool) -> None:
    """glibc: keep freed memory in the heap (no mmap per large tensor, no trim) or the defaults."""
    if tuned:
        _libc.mallopt(M_MMAP_MAX, 0)
        _libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    else:
        _libc.mallopt(M_MMAP_MAX, 65536)
        _libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        _libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def bootstrap_median(values: list[float], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def job_shapes(setting: str):
    """The default job's trainer config, model (warm-started) and median rendered prompt length."""
    from transformers import AutoTokenizer

    from bench_step_vs_trl import MODELS, OURS_COMMON, compose, trl_spec

    model = "smollm2" if setting == "default" else "smollm2-long"
    spec = trl_spec(model, 1)
    tok = AutoTokenizer.from_pretrained(spec["model_path"])
    prompt_len = int(statistics.median(len(tok(p["prompt"])["input_ids"]) for p in spec["prompts"]))
    cfg = compose(MODELS[model] + OURS_COMMON + ["total_steps=2"])
    trainer = replace(cfg.trainer, batch_size=spec["prompts_per_step"] * spec["group_size"])
    return trainer, spec["model_path"], prompt_len, spec["prompts_per_step"] * spec["group_size"], spec["group_size"]


class Toggles:
    """Per-call switches on one worker (restored after each call)."""

    def __init__(self, worker) -> None:
        self.worker = worker
        self.policy = worker.engine.module
        self.body_name = self.policy.model.base_model_prefix
        self.body = getattr(self.policy.model, self.body_name)
        self.compiled = None
        opt = worker.engine.optimizer
        while not isinstance(opt, torch.optim.AdamW):
            opt = opt.optimizer
        self.optimizer = opt

    def apply(self, arm: dict) -> None:
        torch.set_num_threads(arm.get("threads", self.worker.threads))
        self.policy.chunk = arm.get("chunk", self.worker.config.logprob_chunk_size)
        set_malloc(arm.get("malloc", False))
        for group in self.optimizer.param_groups:
            group["fused"] = arm.get("adam") == "fused" or None
            group["foreach"] = arm.get("adam") == "foreach" or None
        if arm.get("compile"):
            if self.compiled is None:
                self.compiled = torch.compile(self.body, dynamic=True)
            self.policy.model._modules[self.body_name] = self.compiled
        else:
            self.policy.model._modules[self.body_name] = self.body

    def reset(self) -> None:
        self.apply({})


def timed_update(worker, batch) -> tuple[float, dict]:
    import resource

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    metrics = worker.update(batch)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds in the kernel (page faults of fresh allocations, thread wake-ups) vs in user code.
    metrics = dict(metrics, sys_s=r1.ru_stime - r0.ru_stime, user_s=r1.ru_utime - r0.ru_utime,
                   minflt=r1.ru_minflt - r0.ru_minflt)
    return wall, metrics


def adam_step_diff(optimizer, impl: str) -> float:
    """Largest |parameter difference| after one AdamW step (this run's settings, random gradients and
    moments) of ``impl`` vs the default for-loop implementation: 0.0 means bit-identical."""
    g = torch.Generator().manual_seed(0)
    group = optimizer.param_groups[0]
    shapes = [(576, 1536), (576,), (49152, 576)]
    out = []
    for kind in ("loop", impl):
        params = [torch.nn.Parameter(torch.randn(s, generator=g.manual_seed(i))) for i, s in enumerate(shapes)]
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=g.manual_seed(100 + i)) * 1e-3
        opt = torch.optim.AdamW(params, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                weight_decay=0.01, fused=kind == "fused" or None, foreach=kind == "foreach" or None)
        for _ in range(3):
            opt.step()
        out.append(params)
    return max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(*out))


def profile_update(worker, batch, top: int) -> tuple[list[dict], float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        worker.update(batch)
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    rows = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:top]]
    return rows, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(RESPONSES), default="default")
    parser.add_argument("--reps", type=int, default=6, help="A/B pairs per candidate")
    parser.add_argument("--candidates", nargs="*", default=["adam_fused", "adam_foreach", "threads1", "malloc",
                                                            "compile", "chunk4096", "chunk256"])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--ab-rows", type=int, default=0, help="rows of an A/B update (0: one mini-batch)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="skip the candidates left past this")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]

    trainer_cfg, model_path, prompt_len, rows, group = job_shapes(args.setting)
    threads = worker_mod._set_threads(trainer_cfg)
    peak_before = measure_fp32_gemm_flops()
    trainer_cfg = replace(trainer_cfg, peak_flops=peak_before)
    worker = worker_mod.PolicyWorker(trainer_cfg, model_path)
    vocab = worker.hf_model.config.vocab_size
    lo, hi = RESPONSES[args.setting]
    batch = random_batch(rows, prompt_len, hi, vocab, group_size=group, min_response_len=lo, seed=0)
    batch = replace(batch, old_log_probs=worker.compute_log_probs(batch))
    toggles = Toggles(worker)
    toggles.reset()  # the baseline: torch's for-loop AdamW (the trainer's kernel before adam_impl), 2 threads
    # A/B unit: one mini-batch (one optimizer step), so more pairs fit in one lock hold.
    ab_batch = batch.select(slice(0, args.ab_rows or trainer_cfg.mini_batch_size))
    print(f"{args.setting}: {rows} rows x ({prompt_len} prompt + {lo}-{hi} response) tokens, "
          f"{int(batch.attention_mask.sum())} real tokens, {threads} threads, GEMM {peak_before / 1e9:.1f} GFLOP/s",
          flush=True)

    # Warm-up, then the baseline's spread on the same tokens.
    timed_update(worker, batch)
    base_s, base_metrics = [], []
    for _ in range(3):
        s, m = timed_update(worker, batch)
        base_s.append(s)
        base_metrics.append(m)
    print(f"baseline updates: {['%.2f' % s for s in base_s]}; sys/user CPU s "
          f"{[(round(m['sys_s'], 2), round(m['user_s'], 2)) for m in base_metrics]}", flush=True)

    try:
        profile_rows, profile_wall = ([], 0.0) if args.no_profile else profile_update(worker, batch, args.top)
    except Exception as exc:  # noqa: BLE001 - the rest is still worth writing
        print(f"profile failed: {exc!r}", flush=True)
        profile_rows, profile_wall = [], 0.0
    for r in profile_rows:
        print(f"  {r['op']:<40} {r['self_s']:7.2f} s {100 * r['share']:5.1f}% x{r['calls']}", flush=True)

    arms = {"adam_fused": {"adam": "fused"}, "adam_foreach": {"adam": "foreach"}, "threads1": {"threads": 1}, "malloc": {"malloc": True}, "chunk256": {"chunk": 256},
            "chunk4096": {"chunk": 4096}, "compile": {"compile": True}, "threads2": {"threads": 2}}
    results = []
    for name in args.candidates:
        if args.budget_s and time.perf_counter() - t_start > args.budget_s:
            print(f"budget: skipping {name}", flush=True)
            continue
        arm = arms[name]
        note = ""
        diff = None
        try:
            toggles.apply(arm)
            t0 = time.perf_counter()
            cand_lp = worker.compute_log_probs(batch)  # also compiles (first call)
            first_call = time.perf_counter() - t0
            toggles.reset()
            diff = float((cand_lp - worker.compute_log_probs(batch)).abs().max())
            toggles.apply(arm)
            timed_update(worker, ab_batch)  # warm-up (compile of the backward, allocator)
            toggles.reset()
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is a result
            toggles.reset()
            results.append({"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            print(f"{name}: failed: {results[-1]['error']}", flush=True)
            continue
        ratios, a_s, b_s, sys_a, sys_b = [], [], [], [], []
        for rep in range(args.reps):
            pair = {}
            for which in (("base", "cand") if rep % 2 == 0 else ("cand", "base")):
                toggles.apply(arm if which == "cand" else {})
                pair[which], m = timed_update(worker, ab_batch)
                pair[which + "_sys"] = m["sys_s"]
                toggles.reset()
            ratios.append(pair["cand"] / pair["base"])
            a_s.append(pair["base"])
            b_s.append(pair["cand"])
            sys_a.append(pair["base_sys"])
            sys_b.append(pair["cand_sys"])
        lo_ci, hi_ci = bootstrap_median(ratios)
        if "adam" in arm:
            diff = adam_step_diff(toggles.optimizer, arm["adam"])
        if name == "compile":
            note = f"first forward (compile) {first_call:.0f} s"
        results.append({"name": name, "arm": arm, "ratio": statistics.median(ratios), "lo": lo_ci, "hi": hi_ci,
                        "ratios": ratios, "base_s": statistics.median(a_s), "cand_s": statistics.median(b_s),
                        "max_abs_logprob_diff": diff, "note": note,
                        "sys_s": [statistics.median(sys_a), statistics.median(sys_b)]})
        print(f"{name}: ratio {results[-1]['ratio']:.3f} [{lo_ci:.3f}, {hi_ci:.3f}] "
              f"base {results[-1]['base_s']:.2f} s cand {results[-1]['cand_s']:.2f} s, max |dlogp| {diff:.2e}",
              flush=True)

    torch.set_num_threads(threads)
    peak_after = measure_fp32_gemm_flops()
    peak = max(peak_before, peak_after)
    flops = statistics.median(m["actor/perf/flops_per_s"] for m in base_metrics)
    out = {"setting": args.setting, "rows": rows, "prompt_len": prompt_len, "responses": [lo, hi],
           "real_tokens": int(batch.attention_mask.sum()), "threads": threads,
           "gemm_flops": [peak_before, peak_after], "update_s": base_s, "flops_per_s": flops,
           "mfu_reported": statistics.median(m["actor/perf/mfu"] for m in base_metrics), "mfu": flops / peak,
           "padding_frac": statistics.median(m["actor/perf/padding_frac"] for m in base_metrics),
           "sys_s": statistics.median(m["sys_s"] for m in base_metrics),
           "user_s": statistics.median(m["user_s"] for m in base_metrics),
           "minflt": statistics.median(m["minflt"] for m in base_metrics),
           "profile": profile_rows, "profile_wall_s": profile_wall, "candidates": results,
           "load": [round(load_start, 2), round(os.getloadavg()[0], 2)], "cpu": cpu_model(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv[1:])}
    stored = json.loads(STORE.read_text()) if STORE.exists() else {}
    stored[args.setting] = out
    STORE.write_text(json.dumps(stored, indent=1) + "\n")
    render(stored)
    return 0


def cpu_model() -> str:
    from bench_step_vs_trl import cpu_model as model

    return model()


def render(stored: dict) -> None:
    lines = ["# One policy update: profile, MFU and candidate speed-ups", "",
             "`.venv/bin/python benchmarks/bench_update_profile.py --setting <setting>` (under the shared lock): "
             "one `PolicyWorker.update` in process (no Ray, no vLLM) on the default job's shapes and trainer "
             "config (32 responses = 4 mini-batches of 8, 4 AdamW steps, fp32, ZeRO-0), pi_old given. "
             "`default`: responses of 6-11 tokens (the warm-started job's ~8.5); `long`: 64-128 tokens (the "
             "128-token-cap setting). MFU = model FLOP/s of the update (cispo/trainer/flops.py, PaLM's count) / "
             "the fp32 GEMM ceiling measured in the same process on the same threads (2048-square `torch.mm`, "
             "best of 5, before and after; the best is `trainer.peak_flops`). A/B: candidate and baseline "
             "alternate on the same worker and tokens; ratio = candidate / baseline update time per pair, median "
             "and bootstrap 95% interval over the pairs (< 1: faster); the A/B unit is one mini-batch (8 rows, "
             "one optimizer step) of the same batch.", ""]
    for setting, r in stored.items():
        lines += [f"## {setting}", "",
                  f"{r['rows']} rows x ({r['prompt_len']} prompt + {r['responses'][0]}-{r['responses'][1]} "
                  f"response) tokens = {r['real_tokens']} real tokens (padding share {r['padding_frac']:.2f}); "
                  f"{r['threads']} torch threads; CPU {r['cpu']}; {r['date']}; load {r['load'][0]}-{r['load'][1]}; "
                  f"`{r['command']}`.", "",
                  f"- update: {statistics.median(r['update_s']):.2f} s (3 repeats on the same tokens: "
                  f"{', '.join('%.2f' % s for s in r['update_s'])})",
                  f"- CPU time of one update: {r['user_s']:.2f} s user + {r['sys_s']:.2f} s kernel "
                  f"({r['minflt']:.0f} minor page faults)",
                  f"- fp32 GEMM ceiling: {r['gemm_flops'][0] / 1e9:.1f} / {r['gemm_flops'][1] / 1e9:.1f} GFLOP/s "
                  "(before / after)",
                  f"- model FLOP/s of the update: {r['flops_per_s'] / 1e9:.1f} G; **MFU {r['mfu']:.2f}** "
                  f"(`actor/perf/mfu` reported by the update: {r['mfu_reported']:.2f})", ""]
        if r["profile"]:
            lines += [f"Top operators by self CPU time (torch.profiler, one update of {r['profile_wall_s']:.2f} s "
                      "wall under the profiler; share of the total self CPU time of all operators):", "",
                      "| operator | self CPU s | share | calls |", "|---|---|---|---|"]
            lines += [f"| `{p['op']}` | {p['self_s']:.2f} | {100 * p['share']:.1f}% | {p['calls']} |"
                      for p in r["profile"]]
            lines.append("")
        if r["candidates"]:
            lines += ["| candidate | setting | ratio (median) | 95% interval | baseline s | candidate s | "
                      "pair ratios | max abs diff vs baseline (log-probs; Adam: parameters after 3 steps) | note |", "|---|---|---|---|---|---|---|---|---|"]
            for c in r["candidates"]:
                if "error" in c:
                    lines.append(f"| {c['name']} | | failed | | | | | | {c['error']} |")
                    continue
                lines.append(f"| {c['name']} | `{json.dumps(c['arm'])}` | **{c['ratio']:.3f}** | "
                             f"{c['lo']:.3f}-{c['hi']:.3f} | {c['base_s']:.2f} | {c['cand_s']:.2f} | "
                             f"{', '.join('%.3f' % x for x in c['ratios'])} | {c['max_abs_logprob_diff']:.1e} | "
                             f"kernel CPU s {c['sys_s'][0]:.2f} -> {c['sys_s'][1]:.2f}. {c['note']} |")
            lines.append("")
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
