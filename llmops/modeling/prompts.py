"""The one place a record becomes model text, shared by training, evaluation and serving so they match.

A record's prompt is the checkpoint's own chat template over one user turn (instruction, plus the input
after a blank line when present) with the generation prompt appended. The target is whatever that
template writes for the assistant's turn after the prompt: the answer, the family's end-of-turn marker
(ChatML's <|im_end|>, Gemma's <end_of_turn>, Phi-3's <|end|>, Mistral's </s>...) and what follows it, so a
trained model learns to stop the way its family stops. No turn format is assumed anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmops.errors import ModelError

# Rendered as an assistant answer to find the text a template writes after one (the end-of-turn marker).
_PROBE = "llmopsanswerprobe"


def user_message(record: Mapping[str, Any]) -> str:
    instruction = str(record["instruction"]).strip()
    extra = str(record.get("input") or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def _render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat template",
                         "use an instruct checkpoint or put its family's chat_template.jinja in the model directory")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def format_prompt(tokenizer, record: Mapping[str, Any]) -> str:
    """Prompt text up to where the assistant's answer starts."""
    return _render(tokenizer, [{"role": "user", "content": user_message(record)}], True)


def _assistant_turn(tokenizer, record: Mapping[str, Any], answer: str) -> tuple[str, str]:
    """(prompt, text the template writes after the prompt when the assistant answers `answer`)."""
    prompt = format_prompt(tokenizer, record)
    full = _render(tokenizer, [{"role": "user", "content": user_message(record)},
                               {"role": "assistant", "content": answer}], False)
    if not full.startswith(prompt):
        raise ModelError("the chat template renders a conversation that does not start with its own "
                         "generation prompt, so the answer cannot be separated from the prompt",
                         "use the family's published chat template (chat_template.jinja)")
    return prompt, full[len(prompt):]


def format_target(tokenizer, record: Mapping[str, Any]) -> str:
    """Answer text the model is trained (and scored) on: the template's assistant turn after the prompt
    (output + end-of-turn marker + whatever the template writes after it)."""
    return _assistant_turn(tokenizer, record, str(record["output"]).strip())[1]


def turn_end(tokenizer) -> str:
    """What the chat template writes right after an assistant's answer (e.g. '<|im_end|>\\n')."""
    record = {"instruction": "Say hi."}
    after = _assistant_turn(tokenizer, record, _PROBE)[1]
    return after.split(_PROBE, 1)[1] if _PROBE in after else ""


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Tokens that end an answer: the tokenizer's eos, the generation config's eos ids (Gemma, Phi-3 and
    Llama 3 list their end-of-turn token there) and the template's end-of-turn marker when it is one token."""
    ids: list[int] = []

    def add(value) -> None:
        for i in value if isinstance(value, list | tuple | set) else [value]:
            if isinstance(i, int) and i >= 0 and i not in ids:
                ids.append(i)

    add(getattr(tokenizer, "eos_token_id", None))
    add(getattr(generation_config, "eos_token_id", None))
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            end = turn_end(tokenizer)
        except (ModelError, TemplateError, ValueError, TypeError):  # a template refusing the probe turn
            end = ""
        first = tokenizer(end, add_special_tokens=False)["input_ids"][:1] if end.strip() else []
        if first and tokenizer.convert_ids_to_tokens(first[0]) in set(tokenizer.all_special_tokens):
            add(first[0])
    return ids


def encode_example(tokenizer, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """Token ids of prompt+target and labels with every prompt token masked (-100): loss on the answer only."""
    prompt, target = _assistant_turn(tokenizer, record, str(record["output"]).strip())
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids


def prompt_text(prompt: Any) -> str:
    """The user's text of a logged prompt: a plain string as is; chat messages (a list, or its JSON) -> the
    last user turn, which is what the training reference holds (`user_message` of a record)."""
    if isinstance(prompt, str):
        stripped = prompt.lstrip()
        if not stripped.startswith("["):
            return prompt
        try:
            prompt = json.loads(stripped)
        except json.JSONDecodeError:
            return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, Mapping) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # OpenAI content parts
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
                return str(content or "")
        return ""
    return str(prompt)
