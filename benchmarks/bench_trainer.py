"""Trainer benchmarks: update and log-prob throughput against a bare torch loop, peak memory.

    python benchmarks/bench_trainer.py                       # everything, writes results/trainer.md
    python benchmarks/bench_trainer.py --stages throughput --precisions bf16 --no-write

Stages
- throughput: tokens/s of ``PolicyWorker.update`` (one rank, ZeRO 0 and the default stage, one
  mini-batch = one optimizer step) vs a bare loop on the same model, same tokens, same precision: transformers
  forward, full-vocabulary log-softmax, the same policy loss, backward, torch AdamW, clipping.
  Steps of the two alternate so a change of load on the shared machine hits both. Then
  ``compute_log_probs`` vs a plain no-grad forward + log-softmax over the same batch.
- memory: peak RSS of one worker process (a fresh subprocess per setting) doing one update at the
  default micro-batch token budget, minus the RSS of the same process after imports.

The machine is shared: every table carries the 1-minute load average when it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cispo.algorithms import compute_policy_loss  # noqa: E402
from cispo.trainer import TrainBatch, TrainerConfig  # noqa: E402
from cispo.trainer.optim import param_groups  # noqa: E402
from cispo.trainer.synthetic import random_batch  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "trainer.md"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load() -> float:
    return os.getloadavg()[0]


def make_batch(vocab: int, rows: int, prompt_len: int, response_len: int, seed: int) -> TrainBatch:
    # Full-length responses: both sides see exactly the same number of tokens.
    return random_batch(rows, prompt_len, response_len, vocab, min_response_len=response_len, seed=seed)


class BareLoop:
    """The reference: what a minimal hand-written trainer does for the same update."""

    def __init__(self, path: Path, cfg: TrainerConfig):
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[cfg.precision])
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                     betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)

    def log_probs(self, batch: TrainBatch) -> torch.Tensor:
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        out[:, 1:] = logits[:, :-1].float().log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        return out * batch.response_mask

    def update(self, batch: TrainBatch) -> None:
        self.model.train()
        lp = self.log_probs(batch)
        loss, _ = compute_policy_loss(self.cfg.loss, lp, lp.detach(), batch.advantages, batch.response_mask,
                                      eps_low=self.cfg.eps_low, eps_high=self.cfg.eps_high)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()


def stage_throughput(args: argparse.Namespace, path: Path) -> list[str]:
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    lines = ["## Update and log-prob throughput", "",
             f"Model `{args.model}`; batch {args.rows} x ({args.prompt_len} prompt + {args.response_len} response) "
             f"tokens = {args.rows * (args.prompt_len + args.response_len)} tokens per step; one rank, "
             f"{torch.get_num_threads()} torch threads; {args.steps} timed steps after {args.warmup} warm-up "
             "step(s), alternating ours / bare; median step time.", "",
             "| precision | ZeRO | ours update tok/s | bare update tok/s | ratio | ours log-probs tok/s "
             "| bare forward tok/s | ratio | load |", "|---|---|---|---|---|---|---|---|---|"]
    for precision in args.precisions:
        for stage in args.zero_stages:
            lines.append(_throughput_row(args, path, vocab, precision, stage))
            print(lines[-1], flush=True)
    return lines + [""]


def _throughput_row(args: argparse.Namespace, path: Path, vocab: int, precision: str, stage: int) -> str:
    from cispo.trainer.worker import PolicyWorker

    cfg = TrainerConfig(precision=precision, zero_stage=stage, batch_size=args.rows, mini_batch_size=args.rows,
                        lr=1e-6, log_entropy=False)
    worker = PolicyWorker(cfg, path)
    bare = BareLoop(path, cfg)
    tokens = args.rows * (args.prompt_len + args.response_len)
    times: dict[str, list[float]] = {"ours": [], "bare": [], "ours_lp": [], "bare_lp": []}
    loads = []
    for step in tqdm(range(args.warmup + args.steps), desc=f"update {precision} ZeRO-{stage}"):
        batch = make_batch(vocab, args.rows, args.prompt_len, args.response_len, seed=step)
        for name, fn in (("bare", lambda: bare.update(batch)), ("ours", lambda: worker.update(batch))):
            t0 = time.perf_counter()
            fn()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        loads.append(load())
    bare.model.eval()
    for step in tqdm(range(args.warmup + args.steps), desc=f"log-probs {precision} ZeRO-{stage}"):
        batch = make_batch(vocab, args.rows, args.prompt_len, args.response_len, seed=100 + step)
        for name, fn in (("bare_lp", lambda: _no_grad(bare.log_probs, batch)),
                         ("ours_lp", lambda: worker.compute_log_probs(batch))):
            t0 = time.perf_counter()
            fn()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        loads.append(load())
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    tps = {k: tokens / v for k, v in med.items()}
    return (f"| {precision} | {stage} | {tps['ours']:.0f} | {tps['bare']:.0f} | **{tps['ours'] / tps['bare']:.2f}x** | "
            f"{tps['ours_lp']:.0f} | {tps['bare_lp']:.0f} | **{tps['ours_lp'] / tps['bare_lp']:.2f}x** | "
            f"{min(loads):.1f}-{max(loads):.1f} |")


def _no_grad(fn, batch):
    with torch.no_grad():
        return fn(batch)


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: RSS after imports, then peak RSS over one update."""
    import deepspeed  # noqa: F401  (imported before the baseline is taken)
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401

    from cispo.trainer.worker import PolicyWorker

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = Path(spec["path"])
    vocab = AutoConfig.from_pretrained(path).vocab_size
    cfg = replace(TrainerConfig(), **spec["config"])
    trainer = BareLoop(path, cfg) if spec.get("bare") else PolicyWorker(cfg, path)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = make_batch(vocab, spec["rows"], spec["prompt_len"], spec["response_len"], seed=0)
    t0 = time.perf_counter()
    trainer.update(batch)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"base_mib": base, "built_mib": built, "peak_mib": peak, "update_s": seconds}


def stage_memory(args: argparse.Namespace, path: Path) -> list[str]:
    defaults = TrainerConfig()
    tokens = args.prompt_len + args.response_len
    rows = max(2, defaults.micro_batch_max_tokens // tokens // 2 * 2)  # fills one default micro-batch
    settings = [("ours: default (fp32, ZeRO-2)", {}),
                ("ours: + gradient checkpointing", {"gradient_checkpointing": True}),
                ("ours: ZeRO-0", {"zero_stage": 0}),
                ("bare torch loop (reference)", {"bare": True})]
    lines = ["## Peak memory per worker", "",
             f"Model `{args.model}`; one update of {rows} x {tokens} tokens = {rows * tokens} tokens (one "
             f"micro-batch at the default budget of {defaults.micro_batch_max_tokens} tokens), one rank. "
             "RSS in MiB of a fresh process: after imports, after building the engine, peak during the update.",
             "", "| setting | after imports | engine built | peak | peak - imports | update s | load |",
             "|---|---|---|---|---|---|---|"]
    for label, changes in tqdm(settings, desc="memory"):
        bare = bool(changes.pop("bare", False))
        config = {"batch_size": rows, "mini_batch_size": rows, "lr": 1e-6, **changes}
        spec = {"path": str(path), "config": config, "rows": rows, "prompt_len": args.prompt_len,
                "response_len": args.response_len, "bare": bare}
        out = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(spec)], capture_output=True,
                             text=True, check=False, cwd=REPO)
        if out.returncode != 0:
            raise RuntimeError(f"memory run {label!r} failed:\n{out.stderr[-3000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        lines.append(f"| {label} | {res['base_mib']:.0f} | {res['built_mib']:.0f} | {res['peak_mib']:.0f} | "
                     f"**{res['peak_mib'] - res['base_mib']:.0f}** | {res['update_s']:.1f} | {load():.1f} |")
        print(lines[-1], flush=True)
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["throughput", "memory"], choices=["throughput", "memory"])
    parser.add_argument("--model", default="smollm2-135m")
    # bf16 only where the CPU has bf16 matmul units (AVX512-BF16 / AMX); see results/trainer.md.
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(DTYPES))
    parser.add_argument("--zero-stages", type=int, nargs="+", default=[0, TrainerConfig().zero_stage])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))), flush=True)
        return

    from rollout.models import prepare_model

    path = prepare_model(args.model)
    lines = ["# Trainer benchmarks", "",
             f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), shared; torch "
             f"{torch.__version__}; command: `nice -n 5 .venv/bin/python benchmarks/bench_trainer.py "
             f"{' '.join(sys.argv[1:])}".rstrip() + "`", ""]
    if "throughput" in args.stages:
        lines += stage_throughput(args, path)
    if "memory" in args.stages:
        lines += stage_memory(args, path)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
