"""End-to-end RL step: cispo (Ray + vLLM + DeepSpeed) vs Hugging Face TRL's
``GRPOTrainer(loss_type="cispo")`` on the same model, prompts, G, max new tokens, mini-batches,
optimizer and precision, on this CPU.

One step = generate G responses for each prompt of a rollout batch, score them, old log-probs,
``batch / mini_batch`` optimizer steps (the off-policy regime), and for us the weight push to vLLM.
TRL equivalent: ``steps_per_generation = batch / mini_batch`` optimizer steps per generation batch of
``prompts x G`` completions (``per_device_train_batch_size = mini_batch``), generation with
transformers ``generate`` (what TRL does without a GPU for vLLM). Both sides score with the same
reward function (``rewards``, math-verify) and start from the same (warm-started) weights. Neither
side uses dynamic sampling (TRL has none), and ours skips eval (only the final step evaluates and
checkpoints, and is not counted).

TRL is NOT a dependency: it lives in ``.venv-trl`` (``bash benchmarks/setup_trl.sh``), which sees the
project's venv, so both sides run the same torch and transformers.

Each run is a fresh process; sides alternate, ``--reps`` times; the first step of every run (start-up,
allocator warm-up) and the last one (final eval + checkpoint) are not counted. Reported: the median
step time per side and the ratio ours / TRL (goal <= 0.5).

    .venv/bin/python benchmarks/bench_step_vs_trl.py                    # every setting
    .venv/bin/python benchmarks/bench_step_vs_trl.py --models tiny --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = HERE / "results" / "step_vs_trl.md"
STORE = HERE / "results" / "step_vs_trl.json"  # rows of every setting measured; a run replaces its own
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"

# The job on each side, as train-config overrides (the default job's setting; tiny = the smoke preset).
MODELS = {
    "smollm2": ["experiment=default"],
    # Long responses: no warm start, so the instruct model writes until the 128-token cap (the regime
    # of reasoning RL, where generation dominates the step).
    "smollm2-long": ["experiment=default", "model.warmstart.steps=0", "rollout.sampling.max_tokens=128"],
    "tiny": ["experiment=quick", "prompts_per_step=8", "group_size=4", "trainer.mini_batch_size=8"],
}
# What makes our run a pure step-time measurement with TRL's semantics.
OURS_COMMON = ["algorithm=cispo", "algorithm.dynamic_sampling=false", "eval.at_start=false", "eval.every=0",
               "eval.sets=[]", "checkpoint.save_every=0", "logger=disabled"]
# Our variants: the shipped defaults, and the engine bound to one core (vLLM's "auto" on 2 cores).
VARIANTS = {
    "ours": ["rollout.engine.omp_threads_bind=all"],
    "ours-1-thread-vllm": ["rollout.engine.omp_threads_bind=auto"],
    # pi_old from vLLM's own log-probs (fp32 engine == trainer to ~1e-5): no trainer pass before the update.
    "ours-rollout-logprobs": ["rollout.engine.omp_threads_bind=all", "algorithm.old_log_probs=rollout"],
    # The fused AdamW kernel (last bits differ from torch's loop; benchmarks/results/update_profile.md).
    "ours-fused-adam": ["rollout.engine.omp_threads_bind=all", "trainer.adam_impl=fused"],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cispo.config import load_config

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        raw = hydra_compose(config_name="train", overrides=overrides + ["run_dir=/tmp/unused"])
    from omegaconf import OmegaConf

    return load_config(OmegaConf.to_container(raw, resolve=True))


def trl_spec(model: str, steps: int) -> dict:
    """Everything the TRL side needs, resolved by OUR code so both sides see the same weights,
    prompts (rendered by our template), sampling and optimizer."""
    from transformers import AutoTokenizer

    from cispo.data import PromptSampler, load_data, render_prompts
    from cispo.driver.warmstart import warm_start
    from rollout.models import default_cache_dir, prepare_model

    cfg = compose(MODELS[model] + OURS_COMMON + [f"total_steps={steps}"])
    path = prepare_model(cfg.model.path, cfg.model.cache_dir, dtype=cfg.model.dtype, seed=cfg.model.seed)
    data = load_data(cfg.data)
    if cfg.model.warmstart.steps:
        cache = Path(cfg.model.cache_dir) if cfg.model.cache_dir else default_cache_dir()
        path = warm_start(path, data.train, cfg.data.prompt, cfg.model.warmstart, cache)
    rows = PromptSampler(data.train, seed=cfg.data.seed, shuffle=cfg.data.shuffle).sample(steps * cfg.prompts_per_step)
    texts = render_prompts(AutoTokenizer.from_pretrained(str(path)), rows, cfg.data.prompt)
    t, s = cfg.trainer, cfg.rollout.sampling
    return {
        "model_path": str(path), "steps": steps, "prompts_per_step": cfg.prompts_per_step, "group_size": cfg.group_size,
        "mini_batch_size": t.mini_batch_size, "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p,
        "lr": t.lr, "adam_beta1": t.adam_beta1, "adam_beta2": t.adam_beta2, "adam_eps": t.adam_eps,
        "weight_decay": t.weight_decay, "grad_clip": t.grad_clip, "eps_high": t.eps_high, "seed": cfg.seed,
        "prompts": [{"prompt": p, "ground_truth": str(r.ground_truth), "kind": r.reward_kind} for p, r in zip(texts, rows)],
    }


def run_ours(model: str, steps: int, extra: list[str], out: Path, env: dict[str, str] | None = None) -> dict:
    """One training run of ours (fresh process); per-step times of the counted steps."""
    run_dir = out / "run"
    cmd = [sys.executable, "-m", "cispo.train", *MODELS[model], *OURS_COMMON, *extra, f"total_steps={steps}",
           f"run_dir={run_dir}"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=(out / "stderr.txt").open("w"),
                   env=dict(os.environ, **(env or {})))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counted = [r for r in records if 1 < r["step"] < steps]
    phases = {k.removeprefix("time/"): statistics.median(r[k] for r in counted)
              for k in counted[0] if k.startswith("time/") and k not in ("time/total_elapsed", "time/step")}
    return {"step_s": [r["time/step"] for r in counted], "phases": phases,
            "update_s": [r["time/update"] for r in counted],
            "mfu": [r["actor/perf/mfu"] for r in counted if "actor/perf/mfu" in r],
            "response_tokens": statistics.median(r["response_length/mean"] for r in counted),
            "reward": statistics.mean(r["reward/mean"] for r in records if "reward/mean" in r),
            "padding": statistics.median(r.get("actor/perf/padding_frac", float("nan")) for r in counted)}


def run_trl(spec: dict, out: Path) -> dict:
    if not TRL_PYTHON.exists():
        subprocess.run(["bash", str(HERE / "setup_trl.sh")], cwd=ROOT, check=True)
    (out / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    subprocess.run([str(TRL_PYTHON), __file__, "--trl-worker", str(out)], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=(out / "stderr.txt").open("w"))
    return json.loads((out / "trl.json").read_text())


def trl_worker(out: Path) -> None:
    """Runs inside .venv-trl: TRL's GRPOTrainer with the spec's settings; writes per-step times."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards import score_batch

    spec = json.loads((out / "spec.json").read_text())
    steps_per_generation = spec["prompts_per_step"] * spec["group_size"] // spec["mini_batch_size"]

    def reward(completions, ground_truth, kind, **_):
        items = [{"kind": k, "response": c, "ground_truth": g} for c, g, k in zip(completions, ground_truth, kind)]
        return [v.score for v in score_batch(items)]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_begin(self, *_, **__):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, *_, **__):
            if state.global_step % steps_per_generation == 0:
                self.marks.append(time.perf_counter())

    args = GRPOConfig(
        output_dir=str(out / "trl_out"), per_device_train_batch_size=spec["mini_batch_size"],
        gradient_accumulation_steps=1, steps_per_generation=steps_per_generation, num_iterations=1,
        num_generations=spec["group_size"], max_completion_length=spec["max_tokens"],
        temperature=spec["temperature"], top_p=spec["top_p"], loss_type="cispo",
        epsilon_high=1.0 + spec["eps_high"],  # TRL's cispo cap is absolute (ours: 1 + eps_high)
        beta=0.0, learning_rate=spec["lr"], adam_beta1=spec["adam_beta1"], adam_beta2=spec["adam_beta2"],
        adam_epsilon=spec["adam_eps"], weight_decay=spec["weight_decay"], max_grad_norm=spec["grad_clip"],
        lr_scheduler_type="constant", warmup_steps=0, max_steps=spec["steps"] * steps_per_generation,
        use_cpu=True, bf16=False, fp16=False, seed=spec["seed"], logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, use_vllm=False, shuffle_dataset=False,
    )
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"], padding_side="left")
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(spec["prompts"]), callbacks=[clock])
    trainer.train()
    step_s = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    (out / "trl.json").write_text(json.dumps({
        "step_s": step_s[1:spec["steps"] - 1], "threads": torch.get_num_threads(),
        "reward": statistics.mean(rewards), "response_tokens": statistics.median(lengths)}))


class ForeignLoad:
    """Samples, once a second, the CPU used by processes that are NOT this script or its descendants
    (other users of the shared machine): the mean over a run is reported per block, since such load
    slows whichever side it overlaps (measured: our update at ~1 core instead of ~1.9 while another
    user's unit tests ran, 25 s instead of 15 s)."""

    def __init__(self) -> None:
        import threading

        self.hz = os.sysconf("SC_CLK_TCK")
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _procs() -> dict[int, tuple[int, int]]:
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
        return out

    def _foreign(self, procs: dict[int, tuple[int, int]]) -> set[int]:
        mine, me = set(), os.getpid()
        for pid in procs:
            chain, cur = [], pid
            while cur > 1 and cur not in mine and cur != me:
                chain.append(cur)
                cur = procs.get(cur, (0, 0))[0]
            if cur == me or cur in mine:
                mine.update(chain)
        return {pid for pid in procs if pid not in mine and pid != me}

    def _run(self) -> None:
        prev, t_prev = self._procs(), time.perf_counter()
        while not self._stop.wait(1.0):
            cur, t = self._procs(), time.perf_counter()
            foreign = self._foreign(cur)
            ticks = sum(cur[p][1] - prev[p][1] for p in foreign if p in prev)
            self.samples.append(100.0 * ticks / self.hz / (t - t_prev))
            prev, t_prev = cur, t

    def __enter__(self) -> "ForeignLoad":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else 0.0


def gemm_ceiling() -> float:
    """fp32 GEMM FLOP/s of this machine on the trainer's threads (all cores: one rank), measured here
    in the same run and passed to our runs as ``trainer.peak_flops`` (then they report actor/perf/mfu)."""
    import torch

    from cispo.trainer.flops import measure_fp32_gemm_flops

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return round(measure_fp32_gemm_flops())


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    isa = "/".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    return (f"{fields.get('Model name', '?').strip()} (family {fields.get('CPU family', '?').strip()}), "
            f"{fields.get('CPU(s)', '?').strip()} CPUs, {isa}")


def bootstrap_median(values: list[float], n: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the median, resampling ``values`` (one per paired block)."""
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "smollm2-long", "tiny"], choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=4, help="steps per run (first and last not counted)")
    parser.add_argument("--pairs", type=int, default=6, help="paired blocks (one run of every side each)")
    parser.add_argument("--sides", nargs="+", default=["ours", "trl"], choices=["trl", *sorted(VARIANTS)],
                        help="the ratio is each side over the last one (the reference)")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="start no new pair that would end past this many seconds (0: no limit)")
    parser.add_argument("--append", action="store_true",
                        help="pool with the stored blocks of the same model, sides and steps (several lock holds)")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE set for our runs (a candidate fix)")
    parser.add_argument("--label", default="", help="names this measurement in the table")
    parser.add_argument("--trl-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return 0
    if args.steps < 3:
        parser.error("--steps must be >= 3 (the first and the last step are not counted)")
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    t_start = time.perf_counter()
    peak = gemm_ceiling()
    for model in args.models:
        spec = trl_spec(model, args.steps) if "trl" in args.sides else None
        blocks: list[dict] = []
        load_start = os.getloadavg()
        pair_s = 0.0
        for pair in range(args.pairs):
            elapsed = time.perf_counter() - t_start
            if args.budget_s and pair and elapsed + pair_s > args.budget_s:
                print(f"budget: stopping after {pair} pairs ({elapsed:.0f} s)", flush=True)
                break
            t_pair = time.perf_counter()
            block = {"order": [], "load": round(os.getloadavg()[0], 2)}
            for side in args.sides if pair % 2 == 0 else args.sides[::-1]:
                with tempfile.TemporaryDirectory(prefix=f"bench_{side}_") as tmp:
                    t0 = time.perf_counter()
                    with ForeignLoad() as foreign:
                        if side == "trl":
                            result = run_trl(spec, Path(tmp))
                        else:
                            result = run_ours(model, args.steps, [*VARIANTS[side], f"trainer.peak_flops={peak}"],
                                              Path(tmp), extra_env)
                    result["foreign_cpu"] = round(foreign.mean(), 1)
                    block[side] = result
                    block["order"].append(side)
                    print(f"{model} pair {pair} {side}: steps {['%.1f' % s for s in result['step_s']]} "
                          + (f"update {['%.1f' % s for s in result['update_s']]} " if "update_s" in result else "")
                          + f"(run {time.perf_counter() - t0:.0f} s, foreign CPU {result['foreign_cpu']:.0f}%)",
                          flush=True)
            blocks.append(block)
            pair_s = max(pair_s, time.perf_counter() - t_pair)
        args.peak = peak
        write_result(model, args, blocks, load_start, os.getloadavg())
    return 0


def summarize(model: str, sides: list[str], steps: int, blocks: list[dict]) -> list[dict]:
    ref = sides[-1]
    rows = []
    for side in sides[:-1]:
        ratios = [statistics.median(b[side]["step_s"]) / statistics.median(b[ref]["step_s"]) for b in blocks]
        lo, hi = bootstrap_median(ratios)
        ours = [s for b in blocks for s in b[side]["step_s"]]
        theirs = [s for b in blocks for s in b[ref]["step_s"]]
        row = {"model": model, "side": side, "ref": ref, "pairs": len(blocks), "ratio": statistics.median(ratios),
               "lo": lo, "hi": hi, "ratios": ratios, "side_s": statistics.median(ours), "ref_s": statistics.median(theirs),
               "steps": steps}
        if "phases" in blocks[0][side]:
            keys = blocks[0][side]["phases"]
            row["phases"] = {k: statistics.median(b[side]["phases"][k] for b in blocks) for k in keys}
            ups = [u for b in blocks for u in b[side]["update_s"]]
            row["update"] = {"median": statistics.median(ups), "min": min(ups), "max": max(ups),
                             "block_medians": [statistics.median(b[side]["update_s"]) for b in blocks]}
            mfus = [u for b in blocks for u in b[side].get("mfu", [])]
            row["mfu"] = statistics.median(mfus) if mfus else None
        row["foreign"] = [[b[side].get("foreign_cpu"), b[ref].get("foreign_cpu")] for b in blocks]
        for name, key in (("q_side", side), ("q_ref", ref)):
            row[name] = (f"{statistics.mean(b[key]['reward'] for b in blocks):.2f} / "
                         f"{statistics.mean(b[key]['response_tokens'] for b in blocks):.1f}")
        rows.append(row)
    return rows


def write_result(model: str, args: argparse.Namespace, blocks: list[dict], load_start, load_end) -> None:
    stored = json.loads(STORE.read_text()) if STORE.exists() else {}
    if not isinstance(stored, dict):  # the single-draw rows of the first version
        stored = {}
    key = f"{model}|{'+'.join(args.sides)}|{args.steps}|{' '.join(args.env)}" + (f"|{args.label}" if args.label else "")
    entry = stored.get(key) if args.append else None
    loads = [round(x, 2) for x in (load_start[0], load_end[0])]
    if entry:
        entry["blocks"] += blocks
        entry["loads"] += [loads]
        entry["commands"].append(" ".join(sys.argv[1:]))
    else:
        entry = {"model": model, "sides": args.sides, "steps": args.steps, "env": args.env, "blocks": blocks,
                 "loads": [loads], "commands": [" ".join(sys.argv[1:])], "label": args.label}
    entry["cpu"] = cpu_model()
    entry.setdefault("gemm_flops", []).append(args.peak)
    entry["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    entry["summary"] = summarize(model, args.sides, args.steps, entry["blocks"])
    stored[key] = entry
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps(stored, indent=1) + "\n")
    render(stored)


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{x:.0f}"


def render(stored: dict) -> None:
    lines = ["# End-to-end RL step vs TRL GRPOTrainer(loss_type=\"cispo\")", "",
             "`.venv/bin/python benchmarks/bench_step_vs_trl.py <options in the table>` (under the shared lock). "
             "Same model, prompts, G = 4, max new tokens, mini-batches (8 prompts x 4 = 32 responses, 4 optimizer "
             "steps per rollout batch), AdamW settings, fp32, CISPO with the same weight cap; TRL generates with "
             "transformers `generate` (TRL's CPU path), we with vLLM. `smollm2`: the default job's setting "
             "(warm-started, answers of ~8 tokens, cap 32); `smollm2-long`: no warm start, responses run to the "
             "128-token cap; `tiny`: the smoke-test model.", "",
             "Method: the sides run block by block, alternating (A B, B A, A B, ...); a block is one fresh run of "
             "`--steps` RL steps of which the first (start-up) and the last (final eval + checkpoint) are not "
             "counted. Per pair of blocks: ratio = median counted step of the side / that of the reference in the "
             "same pair. Reported: the median of the pair ratios and a bootstrap 95% interval of it (10,000 "
             "resamples of the pairs; with few pairs the interval is coarse and can be as wide as the spread of the "
             "pairs). Seconds per step are medians over all counted steps. Load: 1-minute load average at the "
             "start and end of each run of the script (the machine is shared). Foreign CPU: mean CPU % (100 = one "
             "core) used during each block by processes outside the benchmark's process tree (other users), "
             "sampled once a second.", ""]
    for entry in stored.values():
        gemm = ", ".join(f"{g / 1e9:.0f}" for g in entry.get("gemm_flops", []) if g)
        gemm = (f"fp32 GEMM ceiling (2048-square, all cores, measured in the run: `trainer.peak_flops`) {gemm} GFLOP/s"
                if gemm else "fp32 GEMM ceiling not measured (run before the script measured it)")
        lines.append(f"CPU of the `{entry['model']}` / {' vs '.join(entry['sides'])} measurement{entry.get('label') and ' ' + entry['label']}: "
                     f"{entry['cpu']}; {gemm}; {entry['date']}.")
    lines += ["", "| setting | side / reference | pairs | ratio, median of pairs | 95% interval | side s/step | "
              "reference s/step | pair ratios | our phases (median s) | our update s: median (min-max) | update MFU | "
              "reward / tokens, side | reward / tokens, reference | options | load start-end | foreign CPU % per pair "
              "(side, reference) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in stored.values():
        for r in entry["summary"]:
            phases = r.get("phases", {})
            phase_text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])
                                   if v >= 0.05) or "-"
            up = r.get("update")
            up_text = f"{up['median']:.1f} ({up['min']:.1f}-{up['max']:.1f})" if up else "-"
            env = f" env {' '.join(entry['env'])}" if entry["env"] else ""
            lines.append(
                f"| {r['model']}{' ' + entry['label'] if entry.get('label') else ''} | {r['side']} / {r['ref']} "
                f"| {r['pairs']} | **{r['ratio']:.2f}** | {r['lo']:.2f}-{r['hi']:.2f} | {r['side_s']:.2f} "
                f"| {r['ref_s']:.2f} | {', '.join('%.2f' % x for x in r['ratios'])} | {phase_text} | {up_text} "
                f"| {'%.2f' % r['mfu'] if r.get('mfu') else '-'} "
                f"| {r['q_side']} | {r['q_ref']} | `--models {r['model']} --sides {' '.join(entry['sides'])} "
                f"--steps {r['steps']}{env}` | "
                f"{'; '.join(f'{a}-{b}' for a, b in entry['loads'])} | "
                f"{'; '.join(_pct(a) + ', ' + _pct(b) for a, b in r.get('foreign', []))} |")
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
