"""Sequence packing (``trainer.sequence_packing``) against padded micro-batches: update and
log-prob time, and the padding share of the positions, on SmolLM2-135M fp32, one rank.

    .venv/bin/python benchmarks/bench_packing.py --setting long --reps 3 [--append]   # -> results/packing_long.json
    .venv/bin/python benchmarks/bench_packing.py --attention --reps 3          # per-row SDPA vs a 4D mask
    .venv/bin/python benchmarks/bench_packing.py --report                     # the JSONs -> results/packing.md
    .venv/bin/python benchmarks/bench_packing.py --model tiny --reps 1 --no-write   # smoke run

Settings (the default job's geometry, configs/experiment/default.yaml: 8 prompts x G = 4 = 32
responses, mini-batches of 8 = 4 optimizer steps per update, ZeRO-0, default token budget):
- ``default``: the default job's lengths: prompts of 39-41 tokens (the arithmetic prompts under
  SmolLM2's chat template, measured) and responses of 4-13 tokens (the warm-started model answers
  in ~8);
- ``long``: the same prompts, responses of 40-128 tokens (no warm start, cap 128: the setting where
  ``actor/perf/padding_frac`` was 19%).

Two workers, packed and padded, built from the same weights in one process. Each repetition draws
a fresh batch and runs, on both workers in alternating order (AB, BA, ...): ``compute_log_probs``
(the old-log-prob pass) then ``update`` with those old log-probs. Reported: median seconds per
side, the median of the per-repetition ratios packed / padded with its min-max over repetitions,
the padding share, and max |log-prob difference| between the two workers before any update.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cispo.trainer import TrainBatch, TrainerConfig  # noqa: E402
from cispo.trainer.packing import LAYOUT_KWARG, _to_grid, enable_packed_attention, pack_rows  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SETTINGS = {"default": (4, 13), "long": (40, 128)}  # response length range (inclusive)
PROMPTS, GROUP = 8, 4
NOTES_HEADING = "## Reading"


def make_batch(vocab: int, responses: tuple[int, int], seed: int) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    prompt_ids, response_ids = [], []
    for _ in range(PROMPTS):
        prompt = torch.randint(3, vocab, (int(torch.randint(39, 42, (1,), generator=g)),), generator=g).tolist()
        for _ in range(GROUP):
            n = int(torch.randint(responses[0], responses[1] + 1, (1,), generator=g))
            prompt_ids.append(prompt)
            response_ids.append(torch.randint(3, vocab, (n,), generator=g).tolist())
    rows = PROMPTS * GROUP
    return TrainBatch.from_sequences(prompt_ids, response_ids, torch.randn(rows, generator=g),
                                     torch.arange(rows) // GROUP).validate()


def run_setting(args: argparse.Namespace) -> dict:
    from transformers import AutoConfig

    from cispo.trainer.worker import PolicyWorker
    from rollout.models import prepare_model

    path = prepare_model(args.model)
    vocab = AutoConfig.from_pretrained(path).vocab_size
    rows = PROMPTS * GROUP
    cfg = TrainerConfig(zero_stage=0, precision="fp32", batch_size=rows, mini_batch_size=8, lr=1e-5,
                        weight_decay=0.0)
    workers = {"padded": PolicyWorker(cfg, path), "packed": PolicyWorker(replace(cfg, sequence_packing=True), path)}
    first = make_batch(vocab, SETTINGS[args.setting], seed=10_000)
    lp = {name: w.compute_log_probs(first) for name, w in workers.items()}
    logprob_diff = float((lp["packed"] - lp["padded"]).abs().max())
    reps = []
    loads = []
    for rep in range(args.warmup + args.reps):
        batch = make_batch(vocab, SETTINGS[args.setting], seed=rep)
        order = ["padded", "packed"] if rep % 2 == 0 else ["packed", "padded"]
        out = {}
        for name in order:
            worker = workers[name]
            t0 = time.perf_counter()
            old = worker.compute_log_probs(batch)
            t1 = time.perf_counter()
            metrics = worker.update(replace(batch, old_log_probs=old))
            t2 = time.perf_counter()
            out[name] = {"logprobs_s": t1 - t0, "update_s": t2 - t1,
                         "padding_frac": metrics["actor/perf/padding_frac"], "loss": metrics["actor/loss"],
                         "grad_norm": metrics["actor/grad_norm"]}
        loads.append(os.getloadavg()[0])
        print(f"rep {rep}{' (warm-up)' if rep < args.warmup else ''}: " + ", ".join(
            f"{n} update {o['update_s']:.1f} s log-probs {o['logprobs_s']:.1f} s pad {o['padding_frac']:.3f}"
            for n, o in out.items()), flush=True)
        if rep >= args.warmup:
            reps.append(out)
    tokens = float(make_batch(vocab, SETTINGS[args.setting], seed=0).attention_mask.sum())
    return {"setting": args.setting, "responses": SETTINGS[args.setting], "rows": rows, "reps": reps,
            "warmup": args.warmup, "logprob_max_abs_diff": logprob_diff, "load_min": min(loads),
            "load_max": max(loads), "threads": torch.get_num_threads(), "tokens_rep0": tokens,
            "command": f"benchmarks/bench_packing.py --setting {args.setting} --reps {args.reps}"}


def block_diagonal_mask(lengths: list[int]) -> torch.Tensor:
    """[1, 1, L, L] bool: causal and within one row (what transformers builds from packed position ids)."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    causal = torch.ones(len(seg), len(seg), dtype=torch.bool).tril()
    return (causal & (seg[:, None] == seg[None, :]))[None, None]


def _timed(variants: dict, reps: int, warmup: int, loads: list[float]) -> tuple[dict, dict]:
    """Runs every variant warmup + reps times, alternating the order; seconds and last outputs."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    with torch.no_grad():
        for rep in range(warmup + reps):
            for name in list(variants) if rep % 2 == 0 else list(reversed(variants)):
                t0 = time.perf_counter()
                outputs[name] = variants[name]()
                if rep >= warmup:
                    times[name].append(time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
    return times, outputs


def run_attention(args: argparse.Namespace) -> dict:
    """How to keep attention per row in a packed micro-batch (the ``long`` lengths), measured:

    - one layer's SDPA at the model's head shapes: one causal call per row of the packed row; one
      causal call on the rows re-padded to [B, heads, T, d] (ours); one call on the packed row with
      a block-diagonal causal [L, L] mask (dense: every masked score is computed too);
    - the whole body forward: padded rows; packed with ours; packed with the 4D block-diagonal mask.
    """
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rollout.models import prepare_model

    model = AutoModelForCausalLM.from_pretrained(prepare_model(args.model), dtype=torch.float32).eval()
    enable_packed_attention(model)  # without the layout keyword it is transformers' sdpa
    body, cfg = model.model, model.config
    heads, dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    out = {"sizes": [], "threads": torch.get_num_threads(), "heads": heads, "head_dim": dim}
    loads: list[float] = []
    for n in (8, 32):
        batch = make_batch(cfg.vocab_size, SETTINGS["long"], seed=0).select(list(range(n))).trim()
        lengths = batch.lengths().tolist()
        rows = pack_rows(batch.input_ids, batch.attention_mask)
        mask = block_diagonal_mask(lengths)
        real = batch.attention_mask.bool()
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, rows.flat.shape[0], dim, generator=g) for _ in range(3))
        bounds = torch.cumsum(torch.tensor([0] + lengths), 0).tolist()
        sdpa = {
            "per-row calls": lambda: torch.cat([F.scaled_dot_product_attention(
                q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True) for a, b in zip(bounds, bounds[1:])], 2),
            "re-padded, one call (ours)": lambda: F.scaled_dot_product_attention(
                *(_to_grid(t, rows) for t in (q, k, v)), is_causal=True).transpose(1, 2).reshape(
                    n * rows.width, heads, dim)[rows.flat].transpose(0, 1)[None],
            "4D block-diagonal mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        }
        sdpa_times, sdpa_out = _timed(sdpa, args.reps * 3, args.warmup, loads)
        forward = {
            "padded": lambda: body(input_ids=batch.input_ids, attention_mask=batch.attention_mask
                                   ).last_hidden_state[real],
            "packed (ours)": lambda: body(input_ids=rows.input_ids, attention_mask=torch.ones_like(
                rows.input_ids), position_ids=rows.position_ids, **{LAYOUT_KWARG: rows}).last_hidden_state[0],
            "packed, 4D mask": lambda: body(input_ids=rows.input_ids, attention_mask=mask,
                                            position_ids=rows.position_ids).last_hidden_state[0],
        }
        fwd_times, fwd_out = _timed(forward, args.reps, args.warmup, loads)
        size = {"rows": n, "real": int(real.sum()), "padded": int(real.numel()), "sdpa_times": sdpa_times,
                "forward_times": fwd_times,
                "sdpa_max_abs_diff": {k: float((o - sdpa_out["per-row calls"]).abs().max()) for k, o in sdpa_out.items()},
                "forward_max_abs_diff": {k: float((o - fwd_out["padded"]).abs().max()) for k, o in fwd_out.items()}}
        out["sizes"].append(size)
        print(json.dumps(size), flush=True)
    out.update(load_min=min(loads), load_max=max(loads), reps=args.reps, warmup=args.warmup,
               command=f"benchmarks/bench_packing.py --attention --reps {args.reps}")
    return out


def _summary(res: dict) -> list[str]:
    reps = res["reps"]
    lines = []
    for key, label in (("update_s", "update (4 optimizer steps)"), ("logprobs_s", "old log-probs (forward)")):
        padded = [r["padded"][key] for r in reps]
        packed = [r["packed"][key] for r in reps]
        ratios = [b / a for a, b in zip(padded, packed)]
        lines.append(f"| {res['setting']} | {label} | {statistics.median(padded):.2f} | {statistics.median(packed):.2f} | "
                     f"**{statistics.median(ratios):.3f}** ({min(ratios):.3f}-{max(ratios):.3f}) |")
    return lines


def report() -> None:
    found = [json.loads((RESULTS / f"packing_{s}.json").read_text()) for s in SETTINGS
             if (RESULTS / f"packing_{s}.json").is_file()]
    if not found:
        raise SystemExit("no results/packing_<setting>.json yet: run a --setting first")
    lines = ["# Sequence packing (`trainer.sequence_packing`)", "",
             f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), shared; torch "
             f"{torch.__version__}. SmolLM2-135M fp32, one rank, ZeRO-0, {found[0]['threads']} torch threads; "
             f"{PROMPTS} prompts x G = {GROUP} = {PROMPTS * GROUP} responses per update, mini-batches of 8 (4 optimizer "
             "steps), default token budget (4096). Prompts of 39-41 tokens. Two workers (padded, packed) from the same "
             "weights in one process; each repetition draws a fresh batch and runs both, alternating which goes "
             "first; median seconds, and the median of the per-repetition ratios packed / padded with its min-max "
             "over the repetitions in parentheses.", "",
             "| setting (response tokens) | phase | padded s | packed s | packed / padded |", "|---|---|---|---|---|"]
    for res in found:
        lo, hi = res["responses"]
        for row in _summary(res):
            lines.append(row.replace(f"| {res['setting']} |", f"| {res['setting']} ({lo}-{hi}) |", 1))
    lines += ["", "| setting | repetitions (+ warm-up) | padding share, padded | padding share, packed | "
              "max \\|log-prob diff\\| packed vs padded | \\|loss diff\\| / \\|grad-norm diff\\| (rel., median) | load | command |",
              "|---|---|---|---|---|---|---|---|"]
    for res in found:
        reps = res["reps"]
        pad = statistics.median(r["padded"]["padding_frac"] for r in reps)
        pad_p = statistics.median(r["packed"]["padding_frac"] for r in reps)
        dloss = statistics.median(abs(r["packed"]["loss"] - r["padded"]["loss"]) / max(abs(r["padded"]["loss"]), 1e-12)
                                  for r in reps)
        dnorm = statistics.median(abs(r["packed"]["grad_norm"] - r["padded"]["grad_norm"]) / r["padded"]["grad_norm"]
                                  for r in reps)
        lines.append(f"| {res['setting']} | {len(reps)} (+{res['warmup']} per run, {res.get('runs', 1)} run(s)) | {pad:.1%} | {pad_p:.1%} | "
                     f"{res['logprob_max_abs_diff']:.1e} | {dloss:.1e} / {dnorm:.1e} | "
                     f"{res['load_min']:.1f}-{res['load_max']:.1f} | `nice -n 5 .venv/bin/python {res['command']}` |")
    attention = RESULTS / "packing_attention.json"
    if attention.is_file():
        att = json.loads(attention.read_text())
        med = {}
        lines += ["", "## Keeping attention per row: three ways, measured", "",
                  f"Micro-batches of the `long` lengths (8 rows: one mini-batch; 32 rows: one old-log-prob pass). "
                  f"SDPA of one layer at SmolLM2's shapes ({att['heads']} heads x {att['head_dim']}, random q/k/v, "
                  f"median of {att['reps'] * 3} calls) and the body's forward (no grad, median of {att['reps']}), "
                  f"after {att['warmup']} warm-up, variants alternating; load {att['load_min']:.1f}-"
                  f"{att['load_max']:.1f}. Max |difference|: SDPA outputs to the per-row calls, hidden states to "
                  "the padded rows. Command: `nice -n 5 .venv/bin/python " + att["command"] + "`.", "",
                  "| rows (real / padded tokens) | SDPA: per-row calls | SDPA: re-padded, one call (ours) "
                  "| SDPA: 4D block-diagonal mask | forward: padded | forward: packed (ours) | forward: packed, 4D mask "
                  "| max diff, SDPA (ours / mask) | max diff, forward (ours / mask) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for size in att["sizes"]:
            med = {k: statistics.median(v) for k, v in {**size["sdpa_times"], **size["forward_times"]}.items()}
            sd, fd = size["sdpa_max_abs_diff"], size["forward_max_abs_diff"]
            lines.append(f"| {size['rows']} ({size['real']} / {size['padded']}) | {med['per-row calls'] * 1e3:.1f} ms | "
                         f"{med['re-padded, one call (ours)'] * 1e3:.1f} ms | {med['4D block-diagonal mask'] * 1e3:.1f} ms | "
                         f"{med['padded']:.2f} s | {med['packed (ours)']:.2f} s | {med['packed, 4D mask']:.2f} s | "
                         f"{sd['re-padded, one call (ours)']:.1e} / {sd['4D block-diagonal mask']:.1e} | "
                         f"{fd['packed (ours)']:.1e} / {fd['packed, 4D mask']:.1e} |")
    # The hand-written reading of the tables (from NOTES_HEADING on) survives a --report.
    previous = (RESULTS / "packing.md").read_text() if (RESULTS / "packing.md").is_file() else ""
    if NOTES_HEADING in previous:
        lines += ["", previous[previous.index(NOTES_HEADING):].strip()]
    text = "\n".join(lines) + "\n"
    (RESULTS / "packing.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=list(SETTINGS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only rebuild results/packing.md from the JSONs")
    parser.add_argument("--attention", action="store_true", help="only the packed-attention forward comparison")
    parser.add_argument("--append", action="store_true", help="add the repetitions to the setting's JSON")
    parser.add_argument("--no-write", action="store_true", help="print only (e.g. a smoke run on --model tiny)")
    args = parser.parse_args()
    if args.attention:
        res = run_attention(args)
        if not args.no_write:
            (RESULTS / "packing_attention.json").write_text(json.dumps(res, indent=1) + "\n")
        return
    # No option (benchmarks/run_all.py): both settings, then the report.
    for setting in [args.setting] if args.setting else ([] if args.report else list(SETTINGS)):
        res = run_setting(replace_setting(args, setting))
        if args.no_write:
            continue
        out = RESULTS / f"packing_{setting}.json"
        if args.append and out.is_file():  # more repetitions in a second run (each run < 10 min)
            old = json.loads(out.read_text())
            res = {**res, "reps": old["reps"] + res["reps"], "load_min": min(old["load_min"], res["load_min"]),
                   "load_max": max(old["load_max"], res["load_max"]), "runs": old.get("runs", 1) + 1,
                   "logprob_max_abs_diff": max(old["logprob_max_abs_diff"], res["logprob_max_abs_diff"])}
        out.write_text(json.dumps(res, indent=1) + "\n")
    if not args.no_write and (args.report or not args.setting):
        report()


def replace_setting(args: argparse.Namespace, setting: str) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "setting": setting})


if __name__ == "__main__":
    main()
