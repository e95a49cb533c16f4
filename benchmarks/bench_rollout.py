"""Rollout benchmarks: throughput, weight-update time, vLLM-vs-transformers log-prob agreement.

    python benchmarks/bench_rollout.py                      # everything, writes results/rollout.md
    python benchmarks/bench_rollout.py --stages throughput --models tiny --no-write

Stages
- throughput: tokens/s of raw `LLM.generate`, of `RolloutEngine.generate` on the same engine (our
  overhead: tokenisation, params, result conversion), of a `RolloutGroup` of Ray actors, and of
  transformers `generate` (same prompts, same max_tokens, sampling at temperature 1).
- update: `update_weights` time in-process (tensors) and through a group (safetensors bytes in the
  Ray object store), per model size.
- agreement: log-probs of vLLM-sampled responses vs a transformers forward on the same tokens,
  SmolLM2-135M in fp32 and bf16 (and bf16 vLLM vs fp32 transformers, the trainer's usual view).

The machine is shared: numbers carry the 1-minute load average at the time they were taken.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rollout.config import EngineConfig, GroupConfig, SamplingConfig
from rollout.models import prepare_model

RESULTS = Path(__file__).parent / "results" / "rollout.md"
QUESTIONS = [
    "What is {a} + {b}?",
    "Compute {a} * {b} and explain the steps.",
    "A shop has {a} apples and sells {b}. How many are left?",
    "Write a short sentence about the number {a}.",
]


def prompts(n: int) -> list[list[dict[str, str]]]:
    rng = np.random.default_rng(0)
    return [
        [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(a=int(rng.integers(10, 999)), b=int(rng.integers(10, 999)))}]
        for i in range(n)
    ]


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


BIND = "auto"  # --bind: the engine's OpenMP binding ("all" = every core; "auto" keeps one for a scheduler)


def engine_config(model: str, dtype: str, threads: int) -> EngineConfig:
    return EngineConfig(model=model, dtype=dtype, max_model_len=512, num_threads=threads, omp_threads_bind=BIND)


# ------------------------------------------------------------------------------ throughput
def hf_generate_tps(model: str, dtype: str, msgs, max_tokens: int, threads: int) -> tuple[float, int]:
    """transformers generate, batched with left padding; counts tokens up to and including EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    path = prepare_model(model, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
    texts = [tok.apply_chat_template(x, tokenize=False, add_generation_prompt=True) for x in msgs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = m.generate(
            **enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=max_tokens,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
    dt = time.perf_counter() - t0
    gen = out[:, enc.input_ids.shape[1]:]
    n = 0
    for row in gen.tolist():
        n += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    del m
    gc.collect()
    return n / dt, n


def engine_tps(eng, msgs, max_tokens: int, reps: int = 3) -> dict[str, float]:
    """Raw LLM.generate vs RolloutEngine.generate on the same engine and requests, alternated
    `reps` times (median), plus the wrapper's own work timed directly."""
    from vllm.inputs import TokensPrompt

    s = SamplingConfig(max_tokens=max_tokens, seed=0)
    ids, _ = eng.tokenize_prompts(msgs)
    reqs = [TokensPrompt(prompt_token_ids=x) for x in ids]
    params = [eng.vllm_sampling_params(s, s.seed + i) for i in range(len(ids))]
    eng.generate(msgs[:4], SamplingConfig(max_tokens=8, seed=0))  # warm-up
    raw_tps, ours_tps = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        raw = eng.llm.generate(reqs, params, use_tqdm=False)
        raw_tps.append(sum(len(o.outputs[0].token_ids) for o in raw) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        res = eng.generate(msgs, s)
        ours_tps.append(sum(r.num_tokens for r in res) / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    eng.tokenize_prompts(msgs)
    tok_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    for o, x in zip(raw, ids):
        eng._to_result(x, o.outputs[0], 0, 0, s)
    conv_ms = (time.perf_counter() - t0) * 1e3
    return {
        "raw_llm_generate": float(np.median(raw_tps)),
        "rollout_engine": float(np.median(ours_tps)),
        "tokens": float(sum(r.num_tokens for r in res)),
        "tokenize_ms": tok_ms,
        "convert_ms": conv_ms,
    }


def group_tps(model: str, dtype: str, msgs, max_tokens: int, actors: int, threads: int) -> tuple[float, float]:
    import ray

    from rollout.group import RolloutGroup

    t0 = time.perf_counter()
    g = RolloutGroup(engine_config(model, dtype, threads), GroupConfig(num_actors=actors, num_cpus_per_actor=1.0))
    start_s = time.perf_counter() - t0
    try:
        g.generate(msgs[:4], SamplingConfig(max_tokens=8, seed=0))  # warm-up every actor that gets a share
        g.generate(msgs[-4:], SamplingConfig(max_tokens=8, seed=0))
        t0 = time.perf_counter()
        res = g.generate(msgs, SamplingConfig(max_tokens=max_tokens, seed=0))
        dt = time.perf_counter() - t0
    finally:
        g.shutdown()
    del ray
    return sum(r.num_tokens for r in res) / dt, start_s


# ---------------------------------------------------------------------------------- update
def random_like(eng) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    w = {k: torch.randn(shape, generator=g) * 0.02 for k, shape in eng.expected.shapes.items()}
    for head, embed in eng.expected.tied_pairs:
        w[head] = w[embed]
    return w


def time_update(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ------------------------------------------------------------------------------- agreement
def agreement(eng, hf_dtype: str, msgs, max_tokens: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    res = eng.generate(msgs, SamplingConfig(max_tokens=max_tokens, seed=0))
    m = AutoModelForCausalLM.from_pretrained(str(eng.model_dir), dtype=getattr(torch, hf_dtype)).eval()
    v, h = [], []
    with torch.no_grad():
        for r in tqdm(res, desc=f"transformers forward ({hf_dtype})", leave=False):
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            lp = torch.log_softmax(m(ids).logits[0].float(), dim=-1)
            p = len(r.prompt_ids)
            h.append(lp[p - 1 : -1].gather(-1, torch.tensor(r.response_ids)[:, None])[:, 0].double().numpy())
            v.append(r.logprobs.astype(np.float64))
    del m
    gc.collect()
    v_all, h_all = np.concatenate(v), np.concatenate(h)
    d = np.abs(v_all - h_all)
    return {
        "tokens": float(d.size),
        "mean_abs": float(d.mean()),
        "max_abs": float(d.max()),
        "pearson_p": float(np.corrcoef(np.exp(v_all), np.exp(h_all))[0, 1]),
    }


# ------------------------------------------------------------------------------------ main
# (model, engine dtype) pairs, and per model: prompts / max_tokens for vLLM and for transformers.
VARIANTS = [("tiny", "float32"), ("smollm2-135m", "bfloat16"), ("smollm2-135m", "float32")]
SIZES = {
    "tiny": {"prompts": 32, "tokens": 128, "hf_prompts": 32, "reps": 3},
    # SmolLM2 is slow here (AVX2-only CPU, shared): small batches keep the run to minutes.
    "smollm2-135m": {"prompts": 8, "tokens": 32, "hf_prompts": 8, "reps": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="throughput,update,agreement")
    ap.add_argument("--models", default="tiny,smollm2-135m")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every engine / HF run")
    ap.add_argument("--group-actors", default="1,2")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="engine dtypes to run")
    ap.add_argument("--bind", default="auto", help="engine OpenMP binding: auto, all, or core ids")
    ap.add_argument("--smollm2-prompts", type=int, default=SIZES["smollm2-135m"]["prompts"],
                    help="SmolLM2 batch (prompts) for vLLM and transformers")
    ap.add_argument("--smollm2-tokens", type=int, default=SIZES["smollm2-135m"]["tokens"])
    args = ap.parse_args()
    global BIND
    BIND = args.bind
    SIZES["smollm2-135m"].update(prompts=args.smollm2_prompts, hf_prompts=args.smollm2_prompts,
                                 tokens=args.smollm2_tokens)
    stages = set(args.stages.split(","))
    models = args.models.split(",")
    variants = [v for v in VARIANTS if v[0] in models and v[1] in args.dtypes.split(",")]
    msgs = prompts(max(z["prompts"] for z in SIZES.values()))
    tput: list[str] = []
    upd: list[str] = []
    agr: list[str] = []

    from rollout.engine import RolloutEngine

    for model, dtype in tqdm(variants, desc="engines"):
        z = SIZES[model]
        if "throughput" in stages:
            hm = msgs[: z["hf_prompts"]]
            tps, n = hf_generate_tps(model, dtype, hm, z["tokens"], args.threads)
            tput.append(f"| {model} | {dtype} | transformers generate (batch {len(hm)}, left-padded) | {tps:,.1f} | {n} | {load()} |")
            print(tput[-1], flush=True)
        eng = RolloutEngine(engine_config(model, dtype, args.threads))
        try:
            if "throughput" in stages:
                r = engine_tps(eng, msgs[: z["prompts"]], z["tokens"], z["reps"])
                tput.append(f"| {model} | {dtype} | raw LLM.generate (in-process, batch {z['prompts']}) | {r['raw_llm_generate']:,.1f} | {r['tokens']:.0f} | {load()} |")
                tput.append(
                    f"| {model} | {dtype} | RolloutEngine.generate (same engine; its own work: tokenise "
                    f"{r['tokenize_ms']:.0f} ms + convert {r['convert_ms']:.0f} ms) | {r['rollout_engine']:,.1f} | {r['tokens']:.0f} | {load()} |"
                )
                print("\n".join(tput[-2:]), flush=True)
            if "update" in stages:
                w = random_like(eng)
                mb = sum(t.numel() * t.element_size() for t in w.values()) / 2**20
                sec = time_update(lambda: eng.update_weights(w), 2)
                upd.append(f"| {model} | {dtype} | {mb:,.1f} | in-process (fp32 tensors) | {sec:.3f} | {load()} |")
                print(upd[-1], flush=True)
                eng.update_weights(original_weights(eng))  # agreement needs the real weights
            if "agreement" in stages and model == "smollm2-135m":
                for hd in [dtype] + (["float32"] if dtype != "float32" else []):
                    a = agreement(eng, hd, msgs[: z["prompts"]], z["tokens"])
                    agr.append(
                        f"| vLLM {dtype} vs transformers {hd} | {a['tokens']:.0f} | {a['mean_abs']:.2e} | "
                        f"{a['max_abs']:.2e} | {a['pearson_p']:.5f} | {load()} |"
                    )
                    print(agr[-1], flush=True)
        finally:
            eng.close()
            eng = None  # drop the last reference before the next engine starts
            gc.collect()

    if stages & {"throughput", "update"}:
        import ray

        from rollout.group import RolloutGroup
        from rollout.weight_format import ExpectedWeights

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            if "throughput" in stages and "tiny" in models:
                z = SIZES["tiny"]
                for k in [int(x) for x in args.group_actors.split(",")]:
                    tps, start = group_tps("tiny", "float32", msgs[: z["prompts"]], z["tokens"], k, args.threads)
                    tput.append(f"| tiny | float32 | RolloutGroup, {k} Ray actor(s) of 1 CPU (start {start:.0f} s) | {tps:,.1f} | — | {load()} |")
                    print(tput[-1], flush=True)
            if "update" in stages:
                for model in models:
                    g = RolloutGroup(engine_config(model, "float32", args.threads), GroupConfig(num_actors=1))
                    try:
                        exp = ExpectedWeights.from_model_dir(prepare_model(model, dtype="float32"))
                        gen = torch.Generator().manual_seed(2)
                        w = {k: torch.randn(s, generator=gen) * 0.02 for k, s in exp.shapes.items()}
                        for head, embed in exp.tied_pairs:
                            w[head] = w[embed]
                        mb = sum(t.numel() * 4 for t in w.values()) / 2**20
                        sec = time_update(lambda: g.update_weights(w), 2)
                        upd.append(f"| {model} | float32 | {mb:,.1f} | Ray group, 1 actor (numpy arrays via object store) | {sec:.3f} | {load()} |")
                        print(upd[-1], flush=True)
                    finally:
                        g.shutdown()
        finally:
            ray.shutdown()

    head = (
        f"Machine: {platform.machine()} ({_cpu_name()}, AVX2, no AVX-512/AMX), {os.cpu_count()} cores shared "
        f"with other jobs (load = 1-min load average when measured; 2.0 would be a full machine). "
        f"Torch threads per engine / transformers run: {args.threads}. Sampling: temperature 1, top-p 1, "
        f"one sample per chat prompt; sizes {SIZES}. Command: `python benchmarks/bench_rollout.py`."
    )
    lines = ["# Rollout benchmarks", "", head, ""]
    if tput:
        lines += ["## Throughput (generated tokens/s)", "", "| model | dtype | path | tok/s | tokens | load |", "|---|---|---|---|---|---|", *tput, ""]
    if upd:
        lines += ["## Weight update time (median of 2)", "", "| model | engine dtype | update size (MiB as sent) | path | seconds | load |", "|---|---|---|---|---|---|", *upd, ""]
    if agr:
        lines += [
            "## Log-prob agreement on SmolLM2-135M (vLLM-sampled tokens, transformers forward on the same ids)",
            "",
            "| comparison | tokens | mean abs diff | max abs diff | Pearson r of token probs | load |",
            "|---|---|---|---|---|---|",
            *agr,
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def original_weights(eng) -> dict[str, torch.Tensor]:
    """The engine's checkpoint weights, to restore them after the timing runs."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(eng.model_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


if __name__ == "__main__":
    main()
