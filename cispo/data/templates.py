"""Prompt building: a row -> chat messages -> the text (or token ids) the policy is sampled from.

Token ids are made by tokenising the rendered text with `add_special_tokens=False`, which is what
`apply_chat_template(tokenize=True)` does itself: the chat template already holds any BOS token, and
text and ids then always agree.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from cispo.config.data import PromptConfig
from cispo.data.types import PromptRow

Message = dict[str, str]


class ChatTokenizer(Protocol):
    """The part of an HF tokenizer used here."""

    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...


def system_prompt_for(row: PromptRow, cfg: PromptConfig) -> str | None:
    """The code system prompt for code rows, the math one (M1's by default) otherwise."""
    prompt = cfg.code_system_prompt if row.reward_kind == "code" else cfg.system_prompt
    return prompt or None


def build_messages(row: PromptRow, cfg: PromptConfig) -> list[Message]:
    """`[system?, user]`; the user message is the row's instruction template applied to its problem."""
    messages: list[Message] = []
    system = system_prompt_for(row, cfg)
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": row.user_message})
    return messages


def render_prompt(tokenizer: ChatTokenizer, row: PromptRow, cfg: PromptConfig) -> str:
    """The prompt text, ending where the assistant's answer starts."""
    messages = build_messages(row, cfg)
    if not cfg.use_chat_template:
        return cfg.plain_separator.join(message["content"] for message in messages)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat "
            "template; use a chat model or set prompt.use_chat_template=false"
        )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str")
    return text


def encode_prompt(tokenizer: ChatTokenizer, row: PromptRow, cfg: PromptConfig) -> list[int]:
    """Token ids of `render_prompt` (plain-text mode lets the tokenizer add its BOS, as a base model expects)."""
    text = render_prompt(tokenizer, row, cfg)
    encoded = tokenizer(text, add_special_tokens=not cfg.use_chat_template)
    return list(encoded["input_ids"])


def render_prompts(tokenizer: ChatTokenizer, rows: Sequence[PromptRow], cfg: PromptConfig) -> list[str]:
    return [render_prompt(tokenizer, row, cfg) for row in rows]


def encode_prompts(tokenizer: ChatTokenizer, rows: Sequence[PromptRow], cfg: PromptConfig) -> list[list[int]]:
    return [encode_prompt(tokenizer, row, cfg) for row in rows]
