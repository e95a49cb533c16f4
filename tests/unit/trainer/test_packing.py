"""Sequence packing (cispo/trainer/packing.py): packed micro-batches give the unpacked log-probs,
entropy, gradients and update, on real tiny models built by our code (no mocks).

Tolerance: packed and unpacked run the same fp32 math through different kernels (one [1, L] row
and a per-row causal SDPA call vs a padded [B, T] batch and a masked SDPA call), so they agree to
round-off: log-probs and entropy within 1e-5 absolute (values of magnitude ~6), gradients within
1e-4 of the largest gradient entry of each tensor.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from cispo.trainer import TrainBatch, TrainerConfig
from cispo.trainer.batch import group_units, plan_micro_batches
from cispo.trainer.logprobs import PolicyModel
from cispo.trainer.packing import LAYOUT_KWARG, enable_packed_attention, pack_rows
from cispo.trainer.synthetic import random_batch
from rollout.models import prepare_model

LOGPROB_ATOL = 1e-5
GRAD_RTOL = 1e-4


def _tiny_qwen2():
    """``tiny``: the random Qwen2 of rollout/models.py (2 heads, 2 KV heads)."""
    return AutoModelForCausalLM.from_pretrained(prepare_model("tiny"), dtype=torch.float32)


def _tiny_llama_gqa():
    """A random Llama with grouped-query attention (4 heads share 2 KV heads, like SmolLM2's 9 / 3)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                        tie_word_embeddings=True)).float()


MODELS = {"tiny-qwen2": _tiny_qwen2, "tiny-llama-gqa": _tiny_llama_gqa}


def _pair(name: str, chunk: int = 7) -> tuple[PolicyModel, PolicyModel]:
    """The same weights, unpacked and packed."""
    plain = MODELS[name]()
    packed = MODELS[name]()
    packed.load_state_dict(plain.state_dict())
    return PolicyModel(plain, chunk), PolicyModel(packed, chunk, packing=True)


def _uneven_batch(vocab: int, seed: int = 0) -> TrainBatch:
    """Rows of very different lengths: responses of 1, 2, 9, 33, 70 and 120 tokens after prompts of
    1 to 6 tokens (so row lengths 2 .. 126), right-padded to 126."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (3, 1, 6, 2, 5, 4)]
    responses = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (70, 1, 120, 9, 2, 33)]
    return TrainBatch.from_sequences(prompts, responses, torch.randn(6, generator=g), list(range(6))).validate()


def _run(policy: PolicyModel, batch: TrainBatch, *, with_entropy: bool = True):
    return policy(batch.input_ids, batch.attention_mask, batch.response_mask, with_entropy)


# ------------------------------------------------------------------------------ layout
def test_pack_rows_by_hand():
    ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 11, 12]])
    mask = (ids > 0).long()
    packed = pack_rows(ids, mask)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    assert packed.flat.tolist() == [0, 1, 2, 4, 8, 9, 10, 11]  # in the flattened [3 x 4] grid
    assert (packed.rows, packed.width) == (3, 4)
    real = mask.bool()
    # Every real token (b, t) is found at its packed index.
    assert torch.equal(packed.input_ids[0][packed.index[real]], ids[real])
    assert packed.index[0, :3].tolist() == [0, 1, 2] and packed.index[2].tolist() == [4, 5, 6, 7]


def test_sliding_window_models_are_refused():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, use_sliding_window=True,
                                         sliding_window=4, max_window_layers=0))
    with pytest.raises(ValueError, match="sliding-window"):
        enable_packed_attention(model)


def test_config_field_is_checked():
    assert TrainerConfig().sequence_packing is False
    TrainerConfig(sequence_packing=True).validate()
    with pytest.raises(ValueError, match=r"trainer\.sequence_packing"):
        TrainerConfig(sequence_packing="yes").validate()


# ------------------------------------------------------------------------------ planner
@pytest.mark.parametrize("keep_groups", [False, True])
def test_packed_plan_respects_the_budget_and_covers_every_row_once(keep_groups):
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(2, 200, (64,), generator=g)
    group_ids = torch.arange(64) // 4
    units = group_units(group_ids, keep_groups=keep_groups)
    for budget in (150, 512, 4096):
        plan = plan_micro_batches(lengths, units, budget, packed=True)
        rows = sorted(r for mb in plan for r in mb)
        assert rows == list(range(64))
        for mb in plan:
            whole_units = [u for u in units if u[0] in mb]
            assert all(set(u) <= set(mb) for u in whole_units)  # a unit is never split
            # Over the budget only when the micro-batch is a single unit that alone exceeds it.
            assert int(lengths[mb].sum()) <= budget or len(whole_units) == 1
        # Packed micro-batches hold real tokens only: never more of them than padded ones.
        assert len(plan) <= len(plan_micro_batches(lengths, units, budget))


# ------------------------------------------------------------------------------ forward / backward
@pytest.mark.parametrize("name", list(MODELS))
def test_packed_log_probs_and_entropy_equal_unpacked(name):
    plain, packed = _pair(name)
    vocab = plain.model.config.vocab_size
    with torch.no_grad():
        for batch in (_uneven_batch(vocab), random_batch(8, 5, 40, vocab, seed=1)):
            (lp_a, ent_a), (lp_b, ent_b) = _run(plain, batch), _run(packed, batch)
            mask = batch.response_mask.bool()
            assert float((lp_a - lp_b).abs().max()) <= LOGPROB_ATOL
            assert float((ent_a - ent_b)[mask].abs().max()) <= LOGPROB_ATOL
            assert bool((lp_b[~mask] == 0).all())  # the [B, T] layout of the unpacked path
            assert lp_b.shape == batch.input_ids.shape


@pytest.mark.parametrize("name", list(MODELS))
def test_a_single_row_packs_to_itself(name):
    plain, packed = _pair(name)
    batch = _uneven_batch(plain.model.config.vocab_size).select([2]).trim()
    with torch.no_grad():
        lp_a, lp_b = _run(plain, batch)[0], _run(packed, batch)[0]
    assert float((lp_a - lp_b).abs().max()) <= LOGPROB_ATOL


def test_attention_stays_inside_each_row():
    """Changing row 0's tokens leaves the other rows' packed log-probs unchanged; running the same
    packed row WITHOUT the layout (plain causal attention across the packed row) changes them a
    lot: the comparisons above are sensitive to cross-row attention."""
    _, packed = _pair("tiny-llama-gqa")
    batch = _uneven_batch(300)
    other = replace(batch, input_ids=batch.input_ids.clone())
    n0 = int(batch.attention_mask[0].sum())
    other.input_ids[0, 1:n0] = (other.input_ids[0, 1:n0] + 7) % 297 + 3
    with torch.no_grad():
        a, b = _run(packed, batch)[0], _run(packed, other)[0]
        assert float((a[1:] - b[1:]).abs().max()) <= LOGPROB_ATOL
        assert float((a[0] - b[0]).abs().max()) > 1e-2
        rows = pack_rows(batch.input_ids, batch.attention_mask)
        body = packed.model.model
        per_row = body(input_ids=rows.input_ids, position_ids=rows.position_ids,
                       **{LAYOUT_KWARG: rows}).last_hidden_state
        across_rows = body(input_ids=rows.input_ids, position_ids=rows.position_ids,
                           attention_mask=torch.ones_like(rows.input_ids)).last_hidden_state
    first = n0  # row 0 comes first and sees nothing else either way
    assert torch.allclose(per_row[:, :first], across_rows[:, :first], atol=1e-5)
    assert float((per_row[:, first:] - across_rows[:, first:]).abs().max()) > 1e-2


@pytest.mark.parametrize("name", list(MODELS))
def test_packed_gradients_equal_unpacked(name):
    plain, packed = _pair(name, chunk=5)
    batch = _uneven_batch(plain.model.config.vocab_size, seed=2)
    weights = torch.randn(batch.input_ids.shape, generator=torch.Generator().manual_seed(0))
    for policy in (plain, packed):
        (_run(policy, batch, with_entropy=False)[0] * weights).sum().backward()
    for (key, p), q in zip(plain.named_parameters(), packed.parameters()):
        scale = float(p.grad.abs().max())
        assert scale > 0, key
        assert float((p.grad - q.grad).abs().max()) <= GRAD_RTOL * scale, key


# ------------------------------------------------------------------------------ the whole update
@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_update_is_the_same_with_and_without_packing(stage):
    """Two DeepSpeed workers, one packed, one not: same log-probs, loss, gradient norm and
    weights after two optimizer steps (token budget small enough for several micro-batches)."""
    from cispo.trainer.worker import PolicyWorker

    path = prepare_model("tiny")
    vocab = AutoModelForCausalLM.from_pretrained(path).config.vocab_size
    batch = random_batch(8, prompt_len=4, max_response_len=40, vocab_size=vocab, seed=5)
    # Adam with a large eps: the step is ~ lr * gradient, so weights compare gradients.
    cfg = TrainerConfig(zero_stage=stage, precision="fp32", batch_size=8, mini_batch_size=4, micro_batch_max_tokens=60,
                        lr=1e-1, adam_eps=1.0, log_entropy=True)
    workers = [PolicyWorker(replace(cfg, sequence_packing=packing), path) for packing in (False, True)]
    lps = [w.compute_log_probs(batch) for w in workers]
    assert float((lps[0] - lps[1]).abs().max()) <= LOGPROB_ATOL
    metrics = [w.update(batch) for w in workers]
    for key in ("actor/loss", "actor/grad_norm", "actor/entropy"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-4, abs=1e-6), key
    assert metrics[0]["actor/perf/padding_frac"] > 0.1
    assert metrics[1]["actor/perf/padding_frac"] == 0.0
    initial = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    states = [w.export_weights() for w in workers]  # gathered under ZeRO-3
    for key, value in states[0].items():
        step = float((value - initial[key]).abs().max())
        assert step > 0, key
        assert float((value - states[1][key]).abs().max()) <= GRAD_RTOL * step, key
