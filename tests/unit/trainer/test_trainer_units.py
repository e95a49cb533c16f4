"""Trainer logic that needs no DeepSpeed engine: config validation, batch planning, sharding, LR
schedule, the guarded optimizer, chunked log-probs and metric accumulation (values by hand / float64)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cispo.trainer import TrainBatch, TrainerConfig
from cispo.trainer.batch import group_units, plan_micro_batches, split_plan
from cispo.trainer.flops import ModelShape, measure_fp32_gemm_flops, training_flops
from cispo.trainer.group import even_shards, update_shards
from cispo.trainer.logprobs import FP32Linear, chunked_token_log_probs, use_fp32_head
from cispo.trainer.metrics import DiagnosticsAccumulator, MismatchAccumulator
from cispo.trainer.optim import GuardedAdamW, WarmupSchedule, deepspeed_config, param_groups
from cispo.trainer.synthetic import random_batch


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(("changes", "key"), [
    ({"mini_batch_size": 128, "batch_size": 64}, "trainer.mini_batch_size"),
    ({"batch_size": 64, "mini_batch_size": 24}, "trainer.mini_batch_size"),
    ({"batch_size": 9, "mini_batch_size": 3, "world_size": 2}, "trainer.batch_size"),
    ({"batch_size": 64, "mini_batch_size": 16, "world_size": 32}, "trainer.mini_batch_size"),
    ({"loss": "ppo2"}, "trainer.loss"),
    ({"zero_stage": 4}, "trainer.zero_stage"),
    ({"zero_stage": True}, "trainer.zero_stage"),
    ({"precision": "fp16"}, "trainer.precision"),
    ({"lr_schedule": "linear"}, "trainer.lr_schedule"),
    ({"agg": "sum"}, "trainer.agg"),
    ({"loss_options": {"dual_clip": 3.0}}, "trainer.loss_options"),
    ({"adam_beta2": 1.0}, "trainer.adam_beta2"),
    ({"lr": 0.0}, "trainer.lr"),
    ({"micro_batch_max_tokens": 0}, "trainer.micro_batch_max_tokens"),
    ({"lr_schedule": "cosine", "warmup_steps": 10, "total_steps": 10}, "trainer.warmup_steps"),
    ({"tis_cap": -1.0}, "trainer.tis_cap"),
    ({"peak_flops": 0.0}, "trainer.peak_flops"),
])
def test_bad_config_names_the_key(changes, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        TrainerConfig(**changes).validate()


def test_default_config_is_valid_and_resolves_aggregation():
    TrainerConfig().validate()  # the defaults are valid (construction checks them too)
    assert TrainerConfig().resolved_agg() == "token-mean"
    assert TrainerConfig(loss="grpo").resolved_agg() == "seq-mean-token-mean"
    assert TrainerConfig(loss="grpo", agg="token-mean").resolved_agg() == "token-mean"


def test_bad_config_fails_before_any_model_or_ray(tmp_path):
    """The worker and the group validate first: a missing model folder is never reached."""
    from cispo.trainer.group import TrainerGroup
    from cispo.trainer.worker import PolicyWorker

    missing = tmp_path / "no-model-here"
    with pytest.raises(ValueError, match=r"trainer\.loss"):
        PolicyWorker(TrainerConfig(loss="nope"), missing)
    with pytest.raises(ValueError, match=r"trainer\.mini_batch_size"):
        PolicyWorker(TrainerConfig(batch_size=8, mini_batch_size=16), missing)
    with pytest.raises(ValueError, match=r"trainer\.batch_size"):
        TrainerGroup(TrainerConfig(batch_size=9, mini_batch_size=3, world_size=2), missing)
    # The folder is missing, yet each error names the config key: validation ran before any load.
    with pytest.raises(ValueError, match="no config.json"):
        PolicyWorker(TrainerConfig(), missing)


def test_deepspeed_config_unmanaged_accumulation_and_clipping_owner():
    ds = deepspeed_config(TrainerConfig(zero_stage=0, precision="fp32", grad_clip=0.5))
    assert ds["managed_gradient_accumulation"] is False and ds["gradient_clipping"] == 0.0
    ds = deepspeed_config(TrainerConfig(zero_stage=2, precision="bf16", grad_clip=0.5))
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert deepspeed_config(TrainerConfig(zero_stage=2), train=False)["zero_optimization"]["stage"] == 0
    assert deepspeed_config(TrainerConfig(zero_stage=3), train=False)["zero_optimization"]["stage"] == 3


# ----------------------------------------------------------------- batch
def _batch(**changes) -> TrainBatch:
    return replace(random_batch(4, prompt_len=3, max_response_len=5, vocab_size=50, seed=1), **changes)


def test_random_batch_is_valid_and_right_padded():
    b = _batch().validate()
    assert b.input_ids.shape == (4, 8)
    assert torch.equal(b.input_ids[0, :3], b.input_ids[1, :3])  # one prompt per group of 2
    assert bool((b.input_ids[b.attention_mask == 0] == 0).all())


@pytest.mark.parametrize(("changes", "field"), [
    ({"response_mask": torch.ones(4, 8, dtype=torch.long)}, "response_mask"),
    ({"attention_mask": torch.tensor([[0, 1] * 4] * 4)}, "attention_mask"),
    ({"advantages": torch.tensor([1.0, float("nan"), 0.0, 0.0])}, "advantages"),
    ({"advantages": torch.zeros(3)}, "advantages"),
    ({"group_ids": torch.zeros(4, 8)}, "group_ids"),
    ({"old_log_probs": torch.zeros(4, 7)}, "old_log_probs"),
    ({"input_ids": torch.zeros(4, 8)}, "input_ids"),
])
def test_bad_batch_names_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"batch\.{field}"):
        _batch(**changes).validate()


def test_from_sequences_by_hand():
    b = TrainBatch.from_sequences([[1, 2], [3]], [[4, 5, 6], [7]], advantages=[0.5, -0.5], group_ids=[9, 9],
                                  rollout_log_probs=[[-0.1, -0.2, -0.3], [-0.4]], pad_id=0).validate()
    assert b.input_ids.tolist() == [[1, 2, 4, 5, 6], [3, 7, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.response_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    torch.testing.assert_close(b.rollout_log_probs, torch.tensor([[0, 0, -0.1, -0.2, -0.3], [0, -0.4, 0, 0, 0]]))
    assert b.group_ids.tolist() == [9, 9] and b.advantages.tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match=r"rollout_log_probs\[1\]"):
        TrainBatch.from_sequences([[1], [2]], [[3], [4, 5]], [0.0, 0.0], [0, 0], rollout_log_probs=[[-1.0], [-1.0]])
    with pytest.raises(ValueError, match=r"prompt_ids\[0\] is empty"):
        TrainBatch.from_sequences([[]], [[3]], [0.0], [0])


def test_trim_drops_all_padding_columns():
    b = _batch()
    width = int(b.attention_mask.sum(1).max())
    trimmed = b.trim()
    assert trimmed.input_ids.shape[1] == width
    assert torch.equal(trimmed.response_mask, b.response_mask[:, :width])
    assert int(b.response_mask[:, width:].sum()) == 0


def test_micro_batch_plan_respects_budget_and_covers_every_row_once():
    lengths = torch.tensor([10, 3, 7, 7, 2, 9, 10, 1])
    units = group_units(torch.arange(8), keep_groups=False)
    plan = plan_micro_batches(lengths, units, max_tokens=20)
    assert sorted(r for mb in plan for r in mb) == list(range(8))
    for mb in plan:
        assert len(mb) * int(lengths[mb].max()) <= 20
    # Longest first: [10, 10] fills 20; then 9 + 7 + ... by hand: [9, 7] = 18 -> next 7 would make 27.
    assert plan[0] == [0, 6]
    # A row longer than the budget gets a micro-batch of its own instead of being dropped.
    assert plan_micro_batches(torch.tensor([50, 2]), units[:2], max_tokens=20) == [[0], [1]]


def test_split_plan_reaches_the_target_count():
    units = group_units(torch.arange(4), keep_groups=False)
    grown = split_plan([[0, 1, 2, 3]], units, 3)
    assert len(grown) == 3 and sorted(r for mb in grown for r in mb) == [0, 1, 2, 3]
    padded = split_plan([[0], [1]], units, 4)  # nothing left to split: zero-weight passes
    assert padded == [[0], [1], None, None]
    with pytest.raises(ValueError):
        split_plan([[0], [1]], units, 1)


def test_prompt_groups_stay_whole():
    gids = torch.tensor([5, 5, 7, 7, 7, 2])
    assert group_units(gids, keep_groups=True) == [[0, 1], [2, 3, 4], [5]]
    plan = plan_micro_batches(torch.ones(6, dtype=torch.long) * 4, group_units(gids, True), max_tokens=8)
    assert sorted(map(sorted, plan)) == [[0, 1], [2, 3, 4], [5]]
    with pytest.raises(ValueError, match="not contiguous"):
        group_units(torch.tensor([1, 2, 1]), keep_groups=True)


def test_update_shards_give_each_rank_its_slice_of_every_mini_batch():
    b = random_batch(8, 2, 3, 50)
    cfg = TrainerConfig(batch_size=8, mini_batch_size=4, world_size=2)
    assert update_shards(b, cfg) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    cfg4 = TrainerConfig(batch_size=8, mini_batch_size=8, world_size=2, agg="prompt-mean")
    b4 = random_batch(8, 2, 3, 50, group_size=4)
    assert update_shards(b4, cfg4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="split across ranks"):
        update_shards(random_batch(8, 2, 3, 50, group_size=8), cfg4)
    with pytest.raises(ValueError, match=r"trainer\.mini_batch_size"):
        update_shards(random_batch(6, 2, 3, 50), cfg)
    assert even_shards(5, 2) == [[0, 1, 2], [3, 4]]


# -------------------------------------------------------------- optimizer
def test_warmup_then_cosine_by_hand():
    s = WarmupSchedule(warmup=4, total=12, kind="cosine", min_ratio=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == pytest.approx(1.0)
    assert s(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(12) == pytest.approx(0.1) and s(50) == pytest.approx(0.1)
    assert WarmupSchedule(0, 10, "constant", 0.0)(7) == 1.0


def test_param_groups_decay_matrices_only():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    groups = param_groups(model, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3] and groups[0]["params"][0] is model[0].weight


def _two_param_model(seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(3, 2, generator=g)), nn.Parameter(torch.randn(2, generator=g))]


def test_guarded_adamw_clips_like_torch_and_skips_non_finite():
    ours, ref = _two_param_model(0), _two_param_model(0)
    opt = GuardedAdamW(ours, lr=0.1, betas=(0.9, 0.95), eps=1e-8, guard=True, max_grad_norm=0.5)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, betas=(0.9, 0.95), eps=1e-8)
    grads = [torch.full((3, 2), 2.0), torch.tensor([-1.0, 3.0])]
    for p, q, g in zip(ours, ref, grads):
        p.grad, q.grad = g.clone(), g.clone()
    total = math.sqrt(6 * 4.0 + 1.0 + 9.0)
    torch.nn.utils.clip_grad_norm_(ref, 0.5)
    opt.step(), ref_opt.step()
    assert opt._global_grad_norm == pytest.approx(total) and not opt.overflow
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)

    before = [p.detach().clone() for p in ours]
    moments = [opt.state[p]["exp_avg"].clone() for p in ours]
    ours[0].grad = torch.full((3, 2), float("nan"))
    ours[1].grad = torch.ones(2)
    opt.step()
    assert opt.overflow and math.isnan(opt._global_grad_norm)
    for p, b, m in zip(ours, before, moments):
        assert torch.equal(p, b) and torch.equal(opt.state[p]["exp_avg"], m)
        assert int(opt.state[p]["step"]) == 1


# -------------------------------------------------------------- log-probs
def _head_and_hidden(n: int = 11, h: int = 6, v: int = 13, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(h, v, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g))
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    return head, hidden, targets


@pytest.mark.parametrize("chunk", [1, 4, 11, 100])
def test_chunked_log_probs_and_entropy_match_float64(chunk):
    head, hidden, targets = _head_and_hidden()
    lp, ent = chunked_token_log_probs(head, hidden, targets, chunk, with_entropy=True)
    logits = hidden.detach().double() @ head.weight.detach().double().T
    logp = logits.log_softmax(-1)
    torch.testing.assert_close(lp.double(), logp.gather(-1, targets[:, None]).squeeze(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), -(logp.exp() * logp).sum(-1), rtol=0, atol=1e-5)


def test_chunked_gradients_equal_unchunked():
    """The recomputed (checkpointed) chunks give the gradient of the plain computation."""
    head, hidden, targets = _head_and_hidden()
    weights = torch.linspace(-1, 1, hidden.shape[0])
    lp, _ = chunked_token_log_probs(head, hidden, targets, chunk=3)
    (lp * weights).sum().backward()
    chunked = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    full = F.linear(hidden, head.weight).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    (full * weights).sum().backward()
    torch.testing.assert_close(chunked[0], hidden.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked[1], head.weight.grad, rtol=0, atol=1e-6)


def test_padded_chunk_count_and_empty_input():
    head, hidden, targets = _head_and_hidden(n=5)
    lp, _ = chunked_token_log_probs(head, hidden, targets, chunk=4, n_chunks=6)
    ref, _ = chunked_token_log_probs(head, hidden, targets, chunk=4)
    assert torch.equal(lp, ref)
    empty, _ = chunked_token_log_probs(head, hidden[:0], targets[:0], chunk=4)
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="n_chunks"):
        chunked_token_log_probs(head, hidden, targets, chunk=2, n_chunks=2)


def test_fp32_head_runs_in_fp32_for_bf16_weights():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = nn.Linear(8, 16, bias=False)

        def get_output_embeddings(self):
            return self.lm_head

    model = Tiny().to(torch.bfloat16)
    x = torch.randn(3, 8).to(torch.bfloat16)
    use_fp32_head(model)
    assert isinstance(model.lm_head, FP32Linear) and model.lm_head.weight.dtype == torch.bfloat16
    out = model.lm_head(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), x.double() @ model.lm_head.weight.double().T, rtol=0, atol=1e-5)
    assert list(dict(model.named_parameters())) == ["lm_head.weight"]


# ---------------------------------------------------------------- metrics
def test_mismatch_metrics_match_numpy():
    g = torch.Generator().manual_seed(3)
    trainer = -torch.rand(3, 5, generator=g) * 3
    rollout = trainer + 0.05 * torch.randn(3, 5, generator=g)
    mask = torch.ones(3, 5)
    mask[0, :2] = 0
    acc = MismatchAccumulator()
    acc.add(trainer[:2], rollout[:2], mask[:2])  # two calls = one call on all rows
    acc.add(trainer[2:], rollout[2:], mask[2:])
    out = acc.result()
    sel = mask.bool()
    a, b = trainer[sel].double().numpy(), rollout[sel].double().numpy()
    assert out["mismatch/logprob_abs_diff_mean"] == pytest.approx(np.abs(a - b).mean(), rel=1e-9)
    assert out["mismatch/logprob_abs_diff_max"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
    assert out["mismatch/prob_corr"] == pytest.approx(np.corrcoef(np.exp(a), np.exp(b))[0, 1], rel=1e-9)
    assert MismatchAccumulator().result() == {}


def test_diagnostics_are_token_weighted():
    acc = DiagnosticsAccumulator()
    acc.add({"n_tokens": 3.0, "is_weight_mean": 1.0, "is_weight_max": 2.0, "loss": 9.0})
    acc.add({"n_tokens": 1.0, "is_weight_mean": 3.0, "is_weight_max": 1.5, "loss": 9.0})
    assert acc.result("policy/") == {"policy/is_weight_mean": 1.5, "policy/is_weight_max": 2.0}


# ---------------------------------------------------------------- FLOPs (actor/perf/flops_per_s, mfu)
def tiny_llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        tie_word_embeddings=tie))


@pytest.mark.parametrize("tie", [True, False])
def test_model_shape_counts_the_matmul_weights_by_hand(tie):
    # Per layer: q 8x8 = 64, k and v 8 x (1 kv head x head_dim 4) = 32 each, o 64, gate/up/down 8x16 = 128
    # each -> 576; 2 layers -> 1152. Head 32 x 8 = 256 (tied or not: the matmul is the same); the
    # embedding lookup is no matmul. Attention width: 2 query heads x 4.
    assert ModelShape.of(tiny_llama(tie)) == ModelShape(body_matmul_params=1152, head_params=256, layers=2,
                                                        attention_width=8)


def test_training_flops_by_hand():
    shape = ModelShape(body_matmul_params=1152, head_params=256, layers=2, attention_width=8)
    # Sequences of 3 and 5 real tokens, 4 of them scored by the head:
    # 6*1152*8 = 55296; 6*256*4 = 6144; 12*2*8*(9 + 25) = 6528.
    assert training_flops(shape, [3, 5], 4) == 55296 + 6144 + 6528
    assert training_flops(shape, [], 0) == 0.0
    with pytest.raises(ValueError, match="must be >= 0"):
        training_flops(shape, [3, -1], 4)


def test_gemm_ceiling_is_a_positive_rate():
    # 2 * 64^3 FLOPs in far less than a second: a rate well above 1 MFLOP/s on any machine.
    assert measure_fp32_gemm_flops(size=64, repeats=2) > 1e6
