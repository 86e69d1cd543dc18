"""The one place a record becomes model text, shared by training, evaluation and serving so they match.

A record's prompt is the chat template over one user turn (instruction, plus the input after a blank line
when present) with the generation prompt appended; the target is the output followed by the template's
end-of-turn marker, so a trained model learns to stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

END_OF_TURN = "<|im_end|>"


def user_message(record: Mapping[str, Any]) -> str:
    instruction = str(record["instruction"]).strip()
    extra = str(record.get("input") or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def format_prompt(tokenizer, record: Mapping[str, Any]) -> str:
    """Prompt text up to where the assistant's answer starts."""
    messages = [{"role": "user", "content": user_message(record)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_target(tokenizer, record: Mapping[str, Any]) -> str:
    """Answer text the model is trained (and scored) on: output + end-of-turn (+ newline as the template has)."""
    end = END_OF_TURN if END_OF_TURN in (tokenizer.chat_template or "") else (tokenizer.eos_token or "")
    return f"{str(record['output']).strip()}{end}\n"


def encode_example(tokenizer, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Token ids of prompt+target and labels with every prompt token masked (-100): loss on the answer only."""
    prompt_ids = tokenizer(format_prompt(tokenizer, record), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(format_target(tokenizer, record), add_special_tokens=False)["input_ids"]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids
