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
    from cispo.warmstart import warm_start
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


def run_ours(model: str, steps: int, extra: list[str], out: Path) -> dict:
    """One training run of ours (fresh process); per-step times of the counted steps."""
    run_dir = out / "run"
    cmd = [sys.executable, "-m", "cispo.train", *MODELS[model], *OURS_COMMON, *extra, f"total_steps={steps}",
           f"run_dir={run_dir}"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=(out / "stderr.txt").open("w"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counted = [r for r in records if 1 < r["step"] < steps]
    phases = {k.removeprefix("time/"): statistics.median(r[k] for r in counted)
              for k in counted[0] if k.startswith("time/") and k not in ("time/total_elapsed", "time/step")}
    return {"step_s": [r["time/step"] for r in counted], "phases": phases,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "smollm2-long", "tiny"], choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="steps per run (first and last not counted)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["ours", "ours-1-thread-vllm"], choices=sorted(VARIANTS))
    parser.add_argument("--trl-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return 0
    if args.steps < 3:
        parser.error("--steps must be >= 3 (the first and the last step are not counted)")
    rows = []
    for model in args.models:
        spec = trl_spec(model, args.steps)
        times: dict[str, list[float]] = {"trl": [], **{v: [] for v in args.variants}}
        quality: dict[str, list[tuple[float, float]]] = {k: [] for k in times}
        phases: dict[str, list[dict]] = {v: [] for v in args.variants}
        for rep in range(args.reps):
            sides = ["trl", *args.variants]
            for side in sides if rep % 2 == 0 else sides[::-1]:
                with tempfile.TemporaryDirectory(prefix=f"bench_{side}_") as tmp:
                    t0 = time.perf_counter()
                    if side == "trl":
                        result = run_trl(spec, Path(tmp))
                    else:
                        result = run_ours(model, args.steps, VARIANTS[side], Path(tmp))
                        phases[side].append(result["phases"])
                    times[side] += result["step_s"]
                    quality[side].append((result["reward"], result["response_tokens"]))
                    print(f"{model} {side} rep {rep}: steps {['%.1f' % s for s in result['step_s']]} "
                          f"(run {time.perf_counter() - t0:.0f} s)", flush=True)
        trl = statistics.median(times["trl"])
        for side in args.variants:
            ours = statistics.median(times[side])
            ph = {k: statistics.median(p[k] for p in phases[side]) for k in phases[side][0]}
            rows.append({"model": model, "side": side, "ours": ours, "trl": trl, "phases": ph,
                         "counted": f"{len(times[side])}/{len(times['trl'])}", "q_ours": mean_quality(quality[side]),
                         "q_trl": mean_quality(quality["trl"]), "load": round(os.getloadavg()[0], 1),
                         "command": f"--models {model} --steps {args.steps} --reps {args.reps}"})
    write_result(rows)
    return 0


def mean_quality(pairs: list[tuple[float, float]]) -> str:
    return f"{statistics.mean(p[0] for p in pairs):.2f} / {statistics.mean(p[1] for p in pairs):.1f}"


def write_result(rows: list[dict]) -> None:
    stored = json.loads(STORE.read_text()) if STORE.exists() else []
    fresh = {(r["model"], r["side"]) for r in rows}
    rows = [r for r in stored if (r["model"], r["side"]) not in fresh] + rows
    rows.sort(key=lambda r: (list(MODELS).index(r["model"]), r["side"]))
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# End-to-end RL step vs TRL GRPOTrainer(loss_type=\"cispo\")", "",
             "`.venv/bin/python benchmarks/bench_step_vs_trl.py <options in the table>`. Same model, prompts, G = 4, "
             "max new tokens, mini-batches (8 prompts x 4 = 32 responses, 4 optimizer steps per rollout batch), "
             "AdamW settings, fp32, CISPO with the same weight cap; TRL generates with transformers `generate` "
             "(TRL's CPU path), we with vLLM. Median seconds per RL step over the counted steps (first and last "
             "step of each run excluded). `smollm2`: the default job's setting (warm-started, answers of ~8 "
             "tokens, cap 32); `smollm2-long`: no warm start, responses run to the 128-token cap; `tiny`: the "
             "smoke-test model. `ours-1-thread-vllm`: our engine on one core (vLLM's `auto` binding, the "
             "setting before the change); `ours-rollout-logprobs`: `algorithm.old_log_probs=rollout`.", "",
             "Reward / tokens: mean training reward and median mean response length per side (both sides do "
             "the same work).", "",
             "| setting | ours | ours s/step | TRL s/step | ratio ours/TRL (goal <= 0.5) | our phases (median s) "
             "| steps counted (ours/TRL) | reward / tokens, ours | reward / tokens, TRL | options | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        phase_text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["phases"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
        lines.append(f"| {r['model']} | {r['side']} | {r['ours']:.2f} | {r['trl']:.2f} | **{r['ours'] / r['trl']:.2f}** "
                     f"| {phase_text} | {r['counted']} | {r['q_ours']} | {r['q_trl']} | `{r['command']}` | {r['load']} |")
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
