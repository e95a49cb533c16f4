"""RolloutEngine on a real in-process vLLM CPU engine with the tiny models.

Reference values come from a transformers forward pass in float64 log-softmax, or from a first
generation run checked by plain Python loops; never from the code under test.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from rollout.config import EngineConfig, SamplingConfig
from rollout.engine import engine_threads, omp_bind_list
from rollout.models import prepare_model
from rollout.repetition import repetition_cut
from rollout.weight_format import ExpectedWeights, to_safetensors_bytes

MAX_LEN = 128
CHAT = [{"role": "user", "content": "What is 23 + 58?"}]


# ------------------------------------------------------------------ pure logic (no vLLM)
def _cut_by_loop(logprobs, window, prob):
    run = 0
    for t, lp in enumerate(logprobs):
        run = run + 1 if math.exp(float(lp)) > prob else 0
        if run >= window:
            return t + 1
    return None


def test_repetition_cut_by_hand():
    hi, lo = math.log(0.995), math.log(0.5)
    assert repetition_cut([hi, hi, lo, hi, hi, hi, hi], 3, 0.99) == 6
    assert repetition_cut([hi, hi, lo, hi, hi], 3, 0.99) is None
    assert repetition_cut([hi] * 5, 0, 0.99) is None  # 0 = off
    assert repetition_cut([], 2, 0.99) is None
    assert repetition_cut([hi, hi], 1, 0.99) == 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        lp = np.log(rng.uniform(0.9, 1.0, size=int(rng.integers(0, 30)))).astype(np.float32)
        w, p = int(rng.integers(1, 5)), float(rng.uniform(0.92, 0.98))
        assert repetition_cut(lp, w, p) == _cut_by_loop(lp, w, p)
    with pytest.raises(ValueError, match="prob"):
        repetition_cut([hi], 2, 1.0)


def test_expected_weights_checks(tmp_path):
    from transformers import AutoModelForCausalLM

    path = prepare_model("tiny-tied")
    exp = ExpectedWeights.from_model_dir(path)
    sd = AutoModelForCausalLM.from_pretrained(str(path)).state_dict()
    assert set(exp.shapes) == set(sd)  # the head of a tied model is expected too
    no_head = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    filled = exp.check(no_head)
    assert filled["lm_head.weight"] is no_head["model.embed_tokens.weight"]
    bad_head = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
    with pytest.raises(ValueError, match="differ"):
        exp.check(bad_head)
    with pytest.raises(ValueError, match="shape"):
        exp.check(dict(sd, **{"model.norm.weight": torch.ones(3)}))
    with pytest.raises(ValueError, match="twice"):
        exp.check(list(sd.items()) + [("model.norm.weight", sd["model.norm.weight"])])
    with pytest.raises(ValueError, match="floating"):
        exp.check(dict(sd, **{"model.norm.weight": torch.ones(64, dtype=torch.long)}))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        exp.check(dict(sd, **{"model.norm.weight": [1.0] * 64}))


def test_config_validation():
    with pytest.raises(ValueError, match="SamplingConfig.top_p"):
        SamplingConfig(top_p=0.0).validate()
    with pytest.raises(ValueError, match="greedy"):
        SamplingConfig(temperature=0.0, n=2).validate()
    with pytest.raises(ValueError, match="SamplingConfig.stop"):
        SamplingConfig(stop=[""]).validate()
    with pytest.raises(ValueError, match="repetition_prob"):
        SamplingConfig(repetition_window=3, repetition_prob=1.0).validate()
    with pytest.raises(ValueError, match="EngineConfig.prompt_overflow"):
        EngineConfig(prompt_overflow="drop").validate()
    with pytest.raises(ValueError, match="EngineConfig.logprobs_mode"):
        EngineConfig(logprobs_mode="raw_logits").validate()
    with pytest.raises(ValueError, match="EngineConfig.model_seed"):
        EngineConfig(model_seed=-1).validate()
    with pytest.raises(ValueError, match="EngineConfig.omp_threads_bind.*'0-1,x'"):
        EngineConfig(omp_threads_bind="0-1,x").validate()
    for ok in ("auto", "nobind", "all", "0-1", "0,2|1,3"):
        EngineConfig(omp_threads_bind=ok).validate()


def test_omp_bind_all_lists_this_process_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 0, 5})
    assert omp_bind_list("all") == "0,3,5"
    assert omp_bind_list("auto") == "auto"
    assert omp_bind_list("1-2") == "1-2"
    assert engine_threads(EngineConfig(omp_threads_bind="all")) == 3  # in-process engines: torch threads
    assert engine_threads(EngineConfig(omp_threads_bind="all", num_threads=1)) == 1
    assert engine_threads(EngineConfig(omp_threads_bind="auto")) == 0  # unchanged


# ------------------------------------------------------------------ real engine
class _Engines:
    """At most one in-process engine at a time (vLLM's distributed state is process-global)."""

    def __init__(self) -> None:
        self.current = None

    def get(self, model: str):
        from rollout.engine import RolloutEngine

        if self.current is not None and self.current.config.model != model:
            self.close()
        if self.current is None:
            self.current = RolloutEngine(EngineConfig(model=model, max_model_len=MAX_LEN))
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


@pytest.fixture(scope="module")
def engines():
    e = _Engines()
    yield e
    e.close()


@pytest.fixture
def engine(engines):
    return engines.get("tiny")


@pytest.fixture(scope="module")
def hf_models():
    from transformers import AutoModelForCausalLM

    def load(name, seed):
        m = AutoModelForCausalLM.from_pretrained(str(prepare_model(name, seed=seed)), dtype=torch.float32)
        return m.eval()

    return {(n, s): load(n, s) for n in ("tiny", "tiny-tied") for s in (0, 1)}


def _max_diff_vs_hf(results, model) -> float:
    """Max |vLLM logprob - transformers float64 log-softmax| over all response tokens."""
    worst = 0.0
    with torch.no_grad():
        for r in results:
            ids = torch.tensor([r.prompt_ids + r.response_ids])
            lp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            p = len(r.prompt_ids)
            ref = lp[p - 1 : -1].gather(-1, torch.tensor(r.response_ids)[:, None])[:, 0]
            worst = max(worst, (ref - torch.from_numpy(r.logprobs).double()).abs().max().item())
    return worst


@pytest.mark.slow
def test_same_seed_same_outputs(engine):
    s = SamplingConfig(n=2, max_tokens=24, seed=11)
    a = engine.generate([CHAT, "Hello"], s)
    b = engine.generate([CHAT, "Hello"], s)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert all(np.array_equal(x.logprobs, y.logprobs) for x, y in zip(a, b))
    assert all(x.logprobs.dtype == np.float32 for x in a)
    c = engine.generate([CHAT, "Hello"], SamplingConfig(n=2, max_tokens=24, seed=12))
    assert [r.response_ids for r in a] != [r.response_ids for r in c]
    # Seeds are per prompt: a prompt's samples do not depend on the other prompts of the batch.
    alone = engine.generate(["Hello"], s, prompt_offset=1)
    assert [r.response_ids for r in alone] == [r.response_ids for r in a[2:]]


@pytest.mark.slow
def test_n_samples_group_ids_and_prompt_ids(engine):
    tok = engine.tokenizer
    prompts = [CHAT, "Hello world", [5, 6, 7, 8]]
    res = engine.generate(prompts, SamplingConfig(n=4, max_tokens=8, seed=1))
    assert len(res) == 12
    assert [r.group_id for r in res] == [0] * 4 + [1] * 4 + [2] * 4
    assert [r.sample_index for r in res] == [0, 1, 2, 3] * 3
    chat_ids = tok(
        "<|im_start|>user\nWhat is 23 + 58?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    ).input_ids
    assert res[0].prompt_ids == chat_ids
    assert res[4].prompt_ids == tok("Hello world").input_ids
    assert res[8].prompt_ids == [5, 6, 7, 8]
    assert len({tuple(r.response_ids) for r in res[:4]}) > 1  # samples differ
    for r in res:
        assert len(r.logprobs) == len(r.response_ids) and np.all(r.logprobs <= 0)
    custom = engine.generate(prompts, SamplingConfig(max_tokens=2, seed=1), group_ids=[7, 8, 9])
    assert [r.group_id for r in custom] == [7, 8, 9]


@pytest.mark.slow
def test_finish_reasons_length_and_stop_tokens(engine):
    eos = engine.tokenizer.eos_token_id
    stop_set = list(range(100, 200))
    s = SamplingConfig(n=8, max_tokens=6, seed=3, stop_token_ids=stop_set)
    res = engine.generate(["What is", [9, 10, 11]], s)
    reasons = [r.finish_reason for r in res]
    assert "stop" in reasons and "length" in reasons  # both branches exercised
    stops = set(stop_set) | {eos}
    for r in res:
        hit = [i for i, t in enumerate(r.response_ids) if t in stops]
        if r.finish_reason == "stop":
            assert hit == [len(r.response_ids) - 1]  # ends on its first stop token, which is kept
        else:
            assert r.finish_reason == "length" and not hit and len(r.response_ids) == 6


@pytest.mark.slow
def test_stop_strings(engine):
    base = engine.generate([CHAT], SamplingConfig(n=4, max_tokens=40, seed=21))
    checked = 0
    for k, b in enumerate(base):
        text = b.text
        pos = next((i for i in range(3, len(text) - 1) if text[i : i + 2].isascii() and text[i : i + 2].isalpha()), None)
        if pos is None:
            continue
        stop = text[pos : pos + 2]
        first = text.index(stop)
        # Same seed for sample k: rerun only that sample (prompt seed 21, child index k).
        res = engine.generate([CHAT], SamplingConfig(n=4, max_tokens=40, seed=21, stop=[stop]))[k]
        assert res.finish_reason == "stop" and res.stop_reason == stop
        assert res.text == text[:first]
        assert res.response_ids == b.response_ids[: len(res.response_ids)]
        checked += 1
        if checked == 2:
            break
    assert checked == 2


@pytest.mark.slow
def test_update_weights_logprobs_match_transformers(engine, hf_models):
    new, old = hf_models[("tiny", 1)], hf_models[("tiny", 0)]
    # top-k / top-p / temperature shape sampling only: the log-probs stay those of the raw policy.
    s = SamplingConfig(n=3, max_tokens=32, seed=5, temperature=0.8, top_p=0.8, top_k=40)
    before = engine.generate([CHAT, [3, 4, 5]], s)
    assert _max_diff_vs_hf(before, old) <= 1e-4
    stats = engine.update_weights(new.state_dict())
    assert stats["num_tensors"] == len(new.state_dict())
    after = engine.generate([CHAT, [3, 4, 5]], s)
    assert _max_diff_vs_hf(after, new) <= 1e-4
    assert _max_diff_vs_hf(after, old) > 1e-2  # the update really changed the engine
    # Safetensors bytes (the cross-process form) and (name, tensor) pairs work too.
    engine.update_weights(to_safetensors_bytes(old.state_dict()))
    assert _max_diff_vs_hf(engine.generate([CHAT], s), old) <= 1e-4
    engine.update_weights(iter(new.state_dict().items()))
    assert _max_diff_vs_hf(engine.generate([CHAT], s), new) <= 1e-4
    engine.update_weights(old.state_dict())


@pytest.mark.slow
def test_update_timeout_is_a_clear_error(engine, hf_models):
    from rollout.weight_format import WeightSyncTimeoutError

    new, old = hf_models[("tiny", 1)], hf_models[("tiny", 0)]
    version = engine.weight_version
    with pytest.raises(WeightSyncTimeoutError, match="did not finish within"):
        engine.update_weights(new.state_dict(), timeout_s=1e-6)
    engine._pending_update.result(timeout=60)  # let the late update land
    s = SamplingConfig(n=2, max_tokens=16, seed=4)
    assert _max_diff_vs_hf(engine.generate([CHAT], s), new) <= 1e-4  # accepted once done
    assert engine.weight_version == version + 1
    engine.update_weights(old.state_dict())


@pytest.mark.slow
def test_one_in_process_engine_at_a_time(engine):
    from rollout.engine import RolloutEngine

    with pytest.raises(RuntimeError, match="already running"):
        RolloutEngine(EngineConfig(model="tiny-tied", max_model_len=MAX_LEN))
    assert engine.generate([[1, 2]], SamplingConfig(max_tokens=2))[0].response_ids


@pytest.mark.slow
def test_wrong_or_missing_tensor_is_an_error_and_changes_nothing(engine, hf_models):
    s = SamplingConfig(n=2, max_tokens=16, seed=8)
    ref = engine.generate([CHAT], s)
    sd = hf_models[("tiny", 1)].state_dict()
    with pytest.raises(ValueError, match="unknown weight name.*model.layers.0.attn.q_proj.weight"):
        engine.update_weights(dict(sd, **{"model.layers.0.attn.q_proj.weight": torch.zeros(64, 64)}))
    missing = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(ValueError, match="missing 1 of .*model.layers.1.mlp.down_proj.weight"):
        engine.update_weights(missing)
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights(dict(sd, **{"model.norm.weight": torch.ones(65)}))
    with pytest.raises(ValueError, match="timeout_s"):
        engine.update_weights(sd, timeout_s=0)
    again = engine.generate([CHAT], s)
    assert [r.response_ids for r in again] == [r.response_ids for r in ref]
    assert all(np.array_equal(a.logprobs, b.logprobs) for a, b in zip(again, ref))


@pytest.mark.slow
def test_repetition_early_stop(engine):
    prompts = ["What is", [5, 6, 7]]
    base = engine.generate(prompts, SamplingConfig(n=4, max_tokens=48, seed=7))
    # A threshold that the tiny random model crosses often (its probabilities are ~1/vocab).
    p = float(np.exp(np.quantile(np.concatenate([r.logprobs for r in base]), 0.4)))
    window = 3
    expected = [_cut_by_loop(r.logprobs, window, p) for r in base]
    assert sum(c is not None and c < len(r.response_ids) for c, r in zip(expected, base)) >= 4
    rep = engine.generate(prompts, SamplingConfig(n=4, max_tokens=48, seed=7, repetition_window=window, repetition_prob=p))
    for b, r, c in zip(base, rep, expected):
        if c is None:
            assert r.response_ids == b.response_ids and r.finish_reason == b.finish_reason
        else:
            assert r.finish_reason == "repetition"
            assert r.response_ids == b.response_ids[:c]
            np.testing.assert_array_equal(r.logprobs, b.logprobs[:c])
            assert r.text == engine.tokenizer.decode(b.response_ids[:c], skip_special_tokens=True)
    # The logits processor stopped vLLM right after the rule fired: one forced stop token more.
    from vllm.inputs import TokensPrompt

    s = SamplingConfig(n=4, max_tokens=48, seed=7, repetition_window=window, repetition_prob=p)
    raw = engine.llm.generate([TokensPrompt(prompt_token_ids=base[0].prompt_ids)], engine.vllm_sampling_params(s, 7),
                              use_tqdm=False)
    for comp, c in zip(sorted(raw[0].outputs, key=lambda o: o.index), expected[:4]):
        if c is not None and c < 47:
            assert len(comp.token_ids) == c + 1 and comp.token_ids[-1] == engine.tokenizer.eos_token_id


@pytest.mark.slow
def test_bad_inputs_never_crash_the_engine(engine):
    from rollout.engine import PromptTooLongError

    with pytest.raises(ValueError, match="empty"):
        engine.generate([])
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        engine.generate(["ok", ""])
    with pytest.raises(ValueError, match=r"prompts\[0\].*outside"):
        engine.generate([[1, 2, 10**6]])
    with pytest.raises(ValueError, match=r"prompts\[0\] must be"):
        engine.generate([[{"role": "user"}]])
    with pytest.raises(ValueError, match="list of prompts"):
        engine.generate("a bare string")
    long_prompt = list(range(3, 3 + MAX_LEN + 20))
    with pytest.raises(PromptTooLongError, match=rf"prompts\[1\] has {MAX_LEN + 20} tokens.*{MAX_LEN - 1}"):
        engine.generate([[1, 2], long_prompt])
    # The engine is fine afterwards, and truncation is a config choice.
    assert engine.generate([[1, 2]], SamplingConfig(max_tokens=4, seed=0))[0].response_ids
    engine.config.prompt_overflow = "truncate_left"
    try:
        r = engine.generate([long_prompt], SamplingConfig(max_tokens=16, seed=0))[0]
    finally:
        engine.config.prompt_overflow = "error"
    assert r.prompt_ids == long_prompt[-(MAX_LEN - 1) :]
    assert r.prompt_truncated_tokens == 21
    assert r.finish_reason == "length" and len(r.prompt_ids) + len(r.response_ids) == MAX_LEN


def test_unknown_model_path_is_a_clear_error(tmp_path):
    from rollout.engine import RolloutEngine

    with pytest.raises(ValueError, match="neither a built-in name"):
        RolloutEngine(EngineConfig(model=str(tmp_path / "nope")))


# Runs last: it swaps the module's engine for a tied one.
@pytest.mark.slow
def test_tied_update_without_head_is_filled_in(engines, hf_models):
    eng = engines.get("tiny-tied")
    new = hf_models[("tiny-tied", 1)]
    s = SamplingConfig(n=2, max_tokens=24, seed=2, top_k=10)
    assert _max_diff_vs_hf(eng.generate([CHAT, "What is"], s), hf_models[("tiny-tied", 0)]) <= 1e-4
    sd = {k: v for k, v in new.state_dict().items() if k != "lm_head.weight"}
    eng.update_weights(sd)
    assert _max_diff_vs_hf(eng.generate([CHAT, "What is"], s), new) <= 1e-4
    # The trap this guards against: loading the embedding alone leaves vLLM's head stale.
    eng.update_weights(hf_models[("tiny-tied", 0)].state_dict())
    eng.llm.collective_rpc("cispo_load_weights", args=(sd,))
    eng.llm.reset_prefix_cache()
    assert _max_diff_vs_hf(eng.generate([CHAT], s), new) > 1e-2
