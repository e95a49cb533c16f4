"""A short supervised warm start on the training task, so that a small model starts RL with a
non-zero, non-saturated accuracy (RL needs reward variance inside groups to learn anything).

It trains on the task's training prompts, rendered exactly as the RL loop renders them, with the
answer in the format the reward extracts. The result is cached by a hash of everything that
determines it, so a second run (or a resumed one) reuses it at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cispo.config.data import PromptConfig
from cispo.config.sections import ANSWER_PLACEHOLDER, WarmStartConfig
from cispo.data import PromptRow, encode_prompts

log = logging.getLogger(__name__)


def _cache_key(model_path: Path, cfg: WarmStartConfig, rows: list[PromptRow], prompt_cfg: PromptConfig) -> str:
    weights = sorted((p.name, p.stat().st_size) for p in model_path.glob("*.safetensors"))
    payload: dict[str, Any] = {"model": str(model_path), "weights": weights, "cfg": asdict(cfg),
                               "prompt": asdict(prompt_cfg), "rows": [(r.id, str(r.ground_truth)) for r in rows]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(p) + len(a) for p, a in zip(prompts, answers))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    attention = torch.zeros_like(ids)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        attention[i, :len(p) + len(a)] = 1
    return ids, attention, labels


def warm_start(model_path: Path, rows: list[PromptRow], prompt_cfg: PromptConfig, cfg: WarmStartConfig,
               cache_dir: Path) -> Path:
    """Returns the folder of the warm-started model (``model_path`` itself when ``cfg.steps == 0``)."""
    if cfg.steps == 0:
        return model_path
    if not rows:
        raise ValueError("model.warmstart: the training set is empty")
    out = cache_dir / f"warm-{_cache_key(model_path, cfg, rows, prompt_cfg)}"
    if (out / "config.json").is_file():
        return out
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    prompts = encode_prompts(tokenizer, rows, prompt_cfg)
    eos = tokenizer.eos_token_id
    answers = [tokenizer.encode(cfg.response.replace(ANSWER_PLACEHOLDER, str(r.ground_truth)), add_special_tokens=False)
               + [eos] for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in tqdm(range(cfg.steps), desc="warm start", leave=False):
        pick = torch.randint(len(rows), (cfg.batch_size,), generator=generator).tolist()
        ids, attention, labels = _batch([prompts[i] for i in pick], [answers[i] for i in pick], pad)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    log.info("warm start: %d steps, final loss %.4f -> %s", cfg.steps, loss.item(), out)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-warm-", dir=cache_dir))
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same warm start first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
