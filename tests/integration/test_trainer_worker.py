"""PolicyWorker with a real DeepSpeed engine (CPU accelerator, gloo, one rank) on the tiny models.

Reference values come from a second, independent implementation: plain transformers logits with a
full float64 log-softmax, and a bare torch AdamW loop over the whole mini-batch.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from cispo.algorithms import compute_policy_loss
from cispo.trainer import TrainBatch, TrainerConfig
from cispo.trainer.optim import WarmupSchedule, param_groups
from cispo.trainer.synthetic import random_batch
from cispo.trainer.worker import PolicyWorker
from rollout.models import prepare_model

pytestmark = pytest.mark.slow

# Adam with a large eps makes the first step ~ lr * g (not lr * sign(g)), so weight differences
# measure gradient differences instead of amplifying round-off of near-zero gradients.
EXACT = dict(precision="fp32", lr=1e-1, adam_eps=1.0, weight_decay=0.01, grad_clip=1.0, log_entropy=False)


@pytest.fixture(scope="module")
def tiny():
    return prepare_model("tiny")


@pytest.fixture(scope="module")
def tiny_tied():
    return prepare_model("tiny-tied")


@pytest.fixture(scope="module")
def vocab(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny).config.vocab_size


def _batch(vocab: int, rows: int = 8, seed: int = 0) -> TrainBatch:
    return random_batch(rows, prompt_len=4, max_response_len=10, vocab_size=vocab, seed=seed)


def _reference_log_probs(model, batch: TrainBatch) -> torch.Tensor:
    """float64 log-softmax of the plain transformers forward, aligned like ours ([B, T], col 0 = 0)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float64)
    out[:, 1:] = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    return out * batch.response_mask


def _bare_update(path, batch: TrainBatch, cfg: TrainerConfig) -> dict[str, torch.Tensor]:
    """The update done by hand: whole mini-batches, no DeepSpeed, no micro-batches, no chunking."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupSchedule(cfg.warmup_steps, cfg.total_steps, cfg.lr_schedule, cfg.min_lr_ratio))
    with torch.no_grad():
        old = _reference_log_probs(model, batch).float()
    for _ in range(cfg.ppo_epochs):
        for start in range(0, len(batch), cfg.mini_batch_size):
            mb = batch.select(slice(start, start + cfg.mini_batch_size))
            logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
            lp = torch.zeros(mb.input_ids.shape)
            lp[:, 1:] = logits[:, :-1].log_softmax(-1).gather(-1, mb.input_ids[:, 1:, None]).squeeze(-1)
            loss, _ = compute_policy_loss(
                cfg.loss, lp * mb.response_mask, old[start:start + cfg.mini_batch_size], mb.advantages,
                mb.response_mask, eps_low=cfg.eps_low, eps_high=cfg.eps_high, agg=cfg.agg,
                token_budget=float(batch.input_ids.shape[1]), group_ids=mb.group_ids)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("chunk", "stage", "tied"), [(10_000, 0, False), (3, 0, False), (5, 3, True)])
def test_log_probs_equal_plain_transformers_forward(tiny, tiny_tied, vocab, chunk, stage, tied):
    path = tiny_tied if tied else tiny
    batch = _batch(vocab)
    cfg = TrainerConfig(zero_stage=stage, precision="fp32", logprob_chunk_size=chunk, micro_batch_max_tokens=30,
                        batch_size=8, mini_batch_size=8)
    worker = PolicyWorker(cfg, path)
    log_probs, entropy = worker.compute_log_probs_and_entropy(batch)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        expected = _reference_log_probs(model, batch)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    mask = batch.response_mask.bool()
    assert float((log_probs.double() - expected)[mask].abs().max()) <= 1e-5
    assert bool((log_probs[~mask] == 0).all())
    logp = logits[:, :-1].log_softmax(-1)
    expected_entropy = torch.zeros_like(expected)
    expected_entropy[:, 1:] = -(logp.exp() * logp).sum(-1)
    assert float((entropy.double() - expected_entropy)[mask].abs().max()) <= 1e-5
    assert torch.equal(worker.compute_log_probs(batch), log_probs)


@pytest.mark.parametrize(("loss", "agg", "stage", "micro_tokens", "chunk", "checkpointing"), [
    ("cispo", None, 0, 10_000, 10_000, False),     # one micro-batch, one chunk
    ("cispo", None, 0, 30, 4, False),              # several micro-batches and LM-head chunks
    ("cispo", None, 1, 30, 4, False),
    ("cispo", None, 2, 30, 4, False),
    ("cispo", None, 3, 30, 4, True),               # + HF activation checkpointing
    ("grpo", None, 0, 30, 4, False),               # seq-mean-token-mean
    ("cispo", "prompt-mean", 2, 30, 4, False),
    ("cispo", "seq-mean-token-sum-norm", 0, 30, 4, False),
])
def test_update_equals_bare_torch_loop(tiny, vocab, loss, agg, stage, micro_tokens, chunk, checkpointing):
    """Two mini-batches (two optimizer steps): ZeRO stage, micro-batch split and LM-head chunking do
    not change the weights, because the loss normaliser is the mini-batch's global count."""
    batch = _batch(vocab)
    cfg = TrainerConfig(zero_stage=stage, loss=loss, agg=agg, batch_size=8, mini_batch_size=4,
                        micro_batch_max_tokens=micro_tokens, logprob_chunk_size=chunk, warmup_steps=2,
                        gradient_checkpointing=checkpointing, **EXACT)
    worker = PolicyWorker(cfg, tiny)
    before = worker.export_weights()
    metrics = worker.update(batch)
    after = worker.export_weights()
    expected = _bare_update(tiny, batch, cfg)
    assert metrics["actor/optimizer_steps"] == 2 and metrics["actor/skipped_steps"] == 0
    assert metrics["actor/lr"] == pytest.approx(cfg.lr * 1.0)  # second warm-up step: 2/2
    assert _max_diff(before, expected) > 1e-3  # the update moved the weights
    assert _max_diff(after, expected) <= 2e-6


def test_bf16_update_runs_and_tracks_fp32(tiny, vocab):
    batch = _batch(vocab)
    kw = dict(batch_size=8, mini_batch_size=8, micro_batch_max_tokens=30, logprob_chunk_size=4, lr=1e-2)
    ref = PolicyWorker(TrainerConfig(zero_stage=2, precision="fp32", **kw), tiny)
    low = PolicyWorker(TrainerConfig(zero_stage=2, precision="bf16", lm_head_fp32=True, **kw), tiny)
    start = {k: v.float() for k, v in ref.export_weights().items()}
    m_ref, m_low = ref.update(batch), low.update(batch)
    w_ref, w_low = ref.export_weights(), low.export_weights()
    assert all(v.dtype == torch.bfloat16 for v in w_low.values())
    assert m_low["actor/optimizer_steps"] == 1 and math.isfinite(m_low["actor/loss"])
    assert m_low["actor/loss"] == pytest.approx(m_ref["actor/loss"], rel=0.05)
    # The bf16 step moves the weights the same way as the fp32 step (up to bf16 rounding).
    delta_ref = torch.cat([(w_ref[k] - start[k]).flatten() for k in start])
    delta_low = torch.cat([(w_low[k].float() - start[k]).flatten() for k in start])
    cos = float(torch.nn.functional.cosine_similarity(delta_ref, delta_low, dim=0))
    assert cos > 0.9


def test_cispo_raises_positive_and_lowers_negative_advantage_tokens(tiny, vocab):
    batch = replace(_batch(vocab, rows=4, seed=3), advantages=torch.tensor([1.0, -1.0, 1.0, -1.0]))
    cfg = TrainerConfig(zero_stage=1, precision="fp32", batch_size=4, mini_batch_size=4, lr=3e-3,
                        micro_batch_max_tokens=20, logprob_chunk_size=8)
    worker = PolicyWorker(cfg, tiny)
    before = worker.compute_log_probs(batch)
    metrics = worker.update(batch)
    change = ((worker.compute_log_probs(batch) - before) * batch.response_mask).sum(1)
    assert metrics["actor/dropped_token_frac"] == 0.0
    assert bool((change[batch.advantages > 0] > 0.05).all()), change
    assert bool((change[batch.advantages < 0] < -0.05).all()), change


@pytest.mark.parametrize(("stage", "precision"), [(0, "fp32"), (2, "fp32"), (0, "bf16")])
def test_non_finite_loss_skips_the_step_and_keeps_state(tiny, vocab, stage, precision):
    batch = _batch(vocab, rows=4)
    cfg = TrainerConfig(zero_stage=stage, precision=precision, batch_size=4, mini_batch_size=4, lr=1e-3,
                        micro_batch_max_tokens=30, warmup_steps=3)
    worker = PolicyWorker(cfg, tiny)
    worker.update(batch)
    state, sched = worker.training_state(), worker.scheduler_state()
    huge = replace(batch, advantages=torch.full((4,), 3e38))  # finite input, inf loss
    metrics = worker.update(huge)
    assert metrics["actor/skipped_steps"] == 1 and metrics["actor/optimizer_steps"] == 0
    assert metrics["actor/skipped_steps_total"] == 1 and math.isnan(metrics["actor/loss"])
    after = worker.training_state()
    for name, entry in state.items():
        for key, value in entry.items():
            assert torch.equal(after[name][key], value), (name, key)
    assert worker.scheduler_state()["last_epoch"] == sched["last_epoch"]
    assert worker.update(batch)["actor/optimizer_steps"] == 1  # training goes on


@pytest.mark.parametrize(("stage", "precision"), [(2, "fp32"), (0, "bf16"), (3, "fp32")])
def test_save_load_restores_exact_state(tiny, vocab, tmp_path, stage, precision):
    cfg = TrainerConfig(zero_stage=stage, precision=precision, batch_size=8, mini_batch_size=4, lr=1e-3,
                        warmup_steps=2, lr_schedule="cosine", total_steps=10, micro_batch_max_tokens=40)
    first, second = _batch(vocab, seed=1), _batch(vocab, seed=2)
    a = PolicyWorker(cfg, tiny)
    a.update(first)
    a.save(tmp_path / "ckpt")
    b = PolicyWorker(cfg, tiny)
    b.load(tmp_path / "ckpt")
    state_a, state_b = a.training_state(), b.training_state()
    for name, entry in state_a.items():
        assert entry.keys() == state_b[name].keys() and {"param", "exp_avg", "exp_avg_sq"} <= entry.keys()
        for key, value in entry.items():
            assert torch.equal(state_b[name][key], value), (name, key)
    assert a.scheduler_state() == b.scheduler_state() and b.global_step == 2
    # The HF folder is a loadable model with the trained weights and the tokenizer.
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "model", dtype=torch.float32)
    exported = a.export_weights()
    for name, value in hf.state_dict().items():
        assert torch.equal(value, exported[name].float()), name
    assert (tmp_path / "ckpt" / "model" / "tokenizer.json").is_file()
    # Resume is exact: the next update gives bit-identical weights.
    a.update(second)
    b.update(second)
    assert _max_diff(a.export_weights(), b.export_weights()) == 0.0


def test_load_from_a_folder_without_state_names_it(tiny, tmp_path):
    worker = PolicyWorker(TrainerConfig(zero_stage=0, precision="fp32", batch_size=8, mini_batch_size=8), tiny)
    with pytest.raises(ValueError, match="not a trainer checkpoint"):
        worker.load(tmp_path)


def test_export_includes_tied_lm_head(tiny_tied, vocab):
    worker = PolicyWorker(TrainerConfig(zero_stage=3, precision="fp32", batch_size=8, mini_batch_size=8), tiny_tied)
    weights = worker.export_weights()
    hf = AutoModelForCausalLM.from_pretrained(tiny_tied, dtype=torch.float32)
    assert set(weights) == set(hf.state_dict()) | {"lm_head.weight"}
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    assert torch.equal(weights["model.embed_tokens.weight"], hf.model.embed_tokens.weight)


def test_kl_reference_epochs_and_mismatch_metrics(tiny, vocab):
    """GRPO with KL: the reference is loaded (only then), equals the initial policy, and its KL shows
    in the metrics; 2 epochs x 2 mini-batches = 4 steps; rollout log-probs give mismatch metrics."""
    batch = _batch(vocab)
    cfg = TrainerConfig(zero_stage=0, precision="fp32", loss="grpo", eps_low=0.2, eps_high=0.2, kl_coef=0.1,
                        batch_size=8, mini_batch_size=4, ppo_epochs=2, lr=1e-3, micro_batch_max_tokens=40)
    worker = PolicyWorker(cfg, tiny)
    assert worker.ref_engine is not None
    assert PolicyWorker(replace(cfg, kl_coef=0.0), tiny).ref_engine is None
    initial = worker.compute_log_probs(batch)
    assert torch.equal(worker.compute_ref_log_probs(batch), initial)
    noise = 0.01 * torch.randn(initial.shape, generator=torch.Generator().manual_seed(0))
    rollout = (initial + noise) * batch.response_mask
    metrics = worker.update(replace(batch, rollout_log_probs=rollout))
    assert metrics["actor/optimizer_steps"] == 4 and metrics["actor/global_step"] == 4
    assert metrics["actor/kl_ref"] > 0
    mask = batch.response_mask.bool()
    assert metrics["actor/mismatch/logprob_abs_diff_mean"] == pytest.approx(float(noise[mask].abs().mean()), rel=1e-5)
    assert 0.99 < metrics["actor/mismatch/prob_corr"] <= 1.0
    assert torch.equal(worker.compute_ref_log_probs(batch), initial)  # the reference never trains
    assert metrics["actor/perf/tokens_per_s"] > 0


def test_uneven_rank_batch_names_the_keys(tiny, vocab):
    worker = PolicyWorker(TrainerConfig(zero_stage=0, precision="fp32", batch_size=8, mini_batch_size=4), tiny)
    with pytest.raises(ValueError, match=r"trainer\.mini_batch_size"):
        worker.update(_batch(vocab, rows=6))


def test_padding_fraction_counts_the_padded_positions(tiny, vocab):
    """One micro-batch per mini-batch (large token budget): each is trimmed to its longest row, so the
    padding share is 1 - real tokens / (rows x longest row), summed over the two mini-batches."""
    batch = _batch(vocab)
    cfg = TrainerConfig(zero_stage=0, precision="fp32", batch_size=8, mini_batch_size=4, micro_batch_max_tokens=4096)
    metrics = PolicyWorker(cfg, tiny).update(batch)
    lengths = batch.attention_mask.sum(1)
    padded = sum(4 * int(lengths[i:i + 4].max()) for i in (0, 4))
    assert int(lengths.min()) < int(lengths.max())  # the batch does have padding
    assert metrics["actor/perf/padding_frac"] == pytest.approx(1 - int(lengths.sum()) / padded)
