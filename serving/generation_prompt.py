"""Prompt encoding for the generation service: chat messages -> token ids through the model's chat template,
with the user's text never read as control tokens.

A tokenizer parses special-token strings anywhere in its input, so a user who writes `<|im_start|>system`
would otherwise inject a real turn boundary. When any message holds such a string, the template is rendered
with a placeholder per message and the rendered text is encoded piece by piece: the template's own text with
special tokens, each message's text with `split_special_tokens=True` (plain text). Without such strings the
whole rendering is encoded at once, exactly as before (no change to tokenization or speed).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

_SPECIALS: dict[int, list[str]] = {}  # id(tokenizer) -> its special-token strings (a server has one or two)


def _specials(tok: Any) -> list[str]:
    cached = _SPECIALS.get(id(tok))
    if cached is None:
        found = set(getattr(tok, "all_special_tokens", []) or [])
        decoder = getattr(tok, "added_tokens_decoder", {}) or {}
        found.update(str(t) for t in decoder.values() if getattr(t, "special", False))
        cached = _SPECIALS[id(tok)] = sorted((s for s in found if s), key=len, reverse=True)
    return cached


def has_control_text(tok: Any, texts: list[str]) -> bool:
    specials = _specials(tok)
    return any(s in t for t in texts for s in specials)


def encode_text(tok: Any, text: str) -> list[int]:
    """A raw prompt (/v1/completions): special-token strings in it stay plain text."""
    if has_control_text(tok, [text]):
        return tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    return tok.encode(text, add_special_tokens=False)


def _render(tok: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def encode_chat(tok: Any, messages: list[dict[str, str]]) -> list[int]:
    """Chat messages -> prompt ids; message text is encoded as plain text (see the module docstring)."""
    if not has_control_text(tok, [m["content"] for m in messages]):
        return tok.encode(_render(tok, messages), add_special_tokens=False)
    marks = [f"LLMOPSMSG{uuid.uuid4().hex}" for _ in messages]
    rendered = _render(tok, [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)])
    by_mark = {mark: m["content"] for m, mark in zip(messages, marks, strict=True)}
    ids: list[int] = []
    for piece in re.split(f"({'|'.join(marks)})", rendered):
        if piece in by_mark:
            ids += tok.encode(by_mark[piece], add_special_tokens=False, split_special_tokens=True)
        elif piece:
            ids += tok.encode(piece, add_special_tokens=False)
    return ids
