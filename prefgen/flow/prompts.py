"""Build the prompt text of a record the way LLaMA-Factory's alpaca format trained the adapter."""

from __future__ import annotations

import logging

from prefgen.units import Record

log = logging.getLogger("prefgen")


def user_text(record: Record) -> str:
    """`instruction`, plus a newline and `input` when the input is not empty."""
    if record.input:
        return record.instruction + "\n" + record.input
    return record.instruction


def chat_messages(record: Record, system: str = "") -> list[dict]:
    """The conversation sent to the chat template: an optional system turn and one user turn."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_text(record)})
    return messages


def plain_prompt(record: Record, system: str = "") -> str:
    """The fallback for tokenizers without a chat template."""
    head = system + "\n\n" if system else ""
    return head + user_text(record) + "\n"


class PromptBuilder:
    """Renders records with a tokenizer's chat template (or the plain fallback, with a warning)."""

    def __init__(self, tokenizer, system: str = ""):
        self.tokenizer = tokenizer
        self.system = system
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if not self.has_template:
            log.warning("the tokenizer has no chat template: using plain-text prompts")

    def __call__(self, record: Record) -> str:
        if not self.has_template:
            return plain_prompt(record, self.system)
        return self.tokenizer.apply_chat_template(
            chat_messages(record, self.system), add_generation_prompt=True, tokenize=False
        )
