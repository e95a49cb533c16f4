"""A small byte-level BPE tokenizer trained locally, so test models need no download.

The corpus is generated from a seed (arithmetic questions, answer formats, a fixed English text),
so the same spec always yields byte-identical `tokenizer.json`. Digits are split one per token
(like Qwen2), which keeps arithmetic answers checkable token by token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

# ChatML, the format Qwen2 uses: the generation prompt ends with "<|im_start|>assistant\n".
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_ENGLISH = (
    "Please reason step by step, and put your final answer within \\boxed{}. "
    "The answer is the number you get when you add, subtract, multiply or divide. "
    "Let us think about the problem carefully. First we read the question, then we write the "
    "steps one after another, and finally we check the result. If the result is wrong, we try "
    "again. A user asks a question and the assistant answers it. The system tells the assistant "
    "how to behave. What is the sum of these numbers? What is the product? How many apples are "
    "left? Answer: "
)


@dataclass(frozen=True)
class TokenizerSpec:
    """What the trained tokenizer looks like; the special tokens are the ChatML ones."""

    vocab_size: int = 512
    num_corpus_lines: int = 2000
    corpus_seed: int = 0
    bos_token: str = "<|endoftext|>"
    eos_token: str = "<|im_end|>"
    pad_token: str = "<|endoftext|>"
    special_tokens: tuple[str, ...] = field(default=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    model_max_length: int = 2048


def _corpus(seed: int, num_lines: int) -> list[str]:
    """Deterministic training text covering chat markup, arithmetic and plain English."""
    rng = random.Random(seed)
    ops = ["+", "-", "*", "/"]
    lines = [_ENGLISH] * 20
    for _ in range(num_lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice(ops)
        lines.append(
            f"<|im_start|>user\nWhat is {a} {op} {b}?<|im_end|>\n<|im_start|>assistant\n"
            f"We compute {a} {op} {b} step by step. The answer is \\boxed{{{rng.randint(0, 9999)}}}."
            "<|im_end|>\n"
        )
    return lines


def train_tokenizer(out_dir: str | Path, *, spec: TokenizerSpec | None = None) -> Path:
    """Train the BPE tokenizer and save it as a transformers `PreTrainedTokenizerFast` folder.

    The corpus seed is part of the spec, not the model seed: models built with different seeds share
    one vocabulary, so the weights of one can be loaded into an engine serving another.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = spec or TokenizerSpec()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.corpus_seed, spec.num_corpus_lines), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        model_max_length=spec.model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out
