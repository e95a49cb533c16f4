"""Prompt building: messages (pure) and rendering through a real tokenizer's chat template."""

from __future__ import annotations

import pytest

from cispo.data import (
    M1_SYSTEM_PROMPT,
    PromptConfig,
    PromptRow,
    build_messages,
    encode_prompt,
    encode_prompts,
    render_prompt,
)

MATH = PromptRow("What is 2 + 3?", "5", "math", "arithmetic", "a-0")
CODE = PromptRow("def f():", {"check": "", "entry_point": "f"}, "code", "humaneval", "h-0", "Complete:\n{prompt}")


def test_default_system_prompt_is_m1s():
    assert M1_SYSTEM_PROMPT == "Please reason step by step, and put your final answer within \\boxed{}."
    assert build_messages(MATH, PromptConfig()) == [
        {"role": "system", "content": M1_SYSTEM_PROMPT},
        {"role": "user", "content": "What is 2 + 3?"},
    ]


def test_code_rows_use_the_code_system_prompt_and_template():
    assert build_messages(CODE, PromptConfig()) == [{"role": "user", "content": "Complete:\ndef f():"}]
    cfg = PromptConfig(system_prompt=None, code_system_prompt="You write Python.")
    assert build_messages(CODE, cfg)[0] == {"role": "system", "content": "You write Python."}
    assert build_messages(MATH, cfg) == [{"role": "user", "content": "What is 2 + 3?"}]


def test_template_braces_are_literal():
    row = PromptRow("Find $\\{x\\}$.", "1", "math", "s", "0", "Answer in \\boxed{}: {prompt}")
    assert row.user_message == "Answer in \\boxed{}: Find $\\{x\\}$."


def test_plain_mode_without_chat_template():
    cfg = PromptConfig(system_prompt="S", use_chat_template=False)
    assert render_prompt(object(), MATH, cfg) == "S\n\nWhat is 2 + 3?"  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rollout.models import prepare_model

    return AutoTokenizer.from_pretrained(prepare_model("tiny"))


def test_render_with_a_real_chat_template(tokenizer):
    text = render_prompt(tokenizer, MATH, PromptConfig())
    assert text == (
        f"<|im_start|>system\n{M1_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_token_ids_match_apply_chat_template(tokenizer):
    cfg = PromptConfig()
    ids = encode_prompt(tokenizer, MATH, cfg)
    reference = tokenizer.apply_chat_template(build_messages(MATH, cfg), tokenize=True, add_generation_prompt=True)
    reference_ids = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert ids == list(reference_ids)
    assert tokenizer.decode(ids) == render_prompt(tokenizer, MATH, cfg)
    assert encode_prompts(tokenizer, [MATH, CODE], cfg)[0] == ids


def test_missing_chat_template_is_a_clear_error():
    class NoTemplate:
        chat_template = None
        name_or_path = "base-model"

    with pytest.raises(ValueError, match="'base-model' has no chat template.*use_chat_template=false"):
        render_prompt(NoTemplate(), MATH, PromptConfig())  # type: ignore[arg-type]
