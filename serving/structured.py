"""Constrained decoding for structured outputs through llguidance (JSON schema -> token mask per step).

Picked by measurement on our tokenizer (SmolLM2, 49,152 tokens; figures in benchmarks/README.md, measurements
cited by the code): llguidance computes a mask per token far below a decode step; its first matcher in a process
pays a one-time setup of seconds, which the server's warmup takes. It installs as one small wheel with no
dependencies; xgrammar was not measured (its install pulls triton and apache-tvm-ffi into a CPU environment).
The constraint masks logits before sampling and advances with each chosen token, so even a tiny random model
returns schema-valid JSON.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Any

import numpy as np

from llmops.errors import LlmopsError
from serving.sampling import as_array

_TOKENIZERS: dict[int, Any] = {}
_LOCK = threading.Lock()


def ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a transformers tokenizer (built once per tokenizer: about a second)."""
    import llguidance.hf

    key = id(tokenizer)
    with _LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer)
        return _TOKENIZERS[key]


MAX_SCHEMA_BYTES = 65536  # a schema bigger than this (serialised) is refused before compiling it
_GRAMMARS: collections.OrderedDict[str, str] = collections.OrderedDict()  # schema JSON -> compiled grammar
_GRAMMAR_CACHE = 256


def compile_schema(schema: Any) -> str:
    """A request's JSON schema -> llguidance grammar, validated once and cached by its JSON text, so a
    schema is compiled once (not once to check and again to build), and repeated schemas not at all. A bad
    or oversized schema is the client's error (LlmopsError -> 400), never a 500 mid-generation."""
    import llguidance

    if not isinstance(schema, dict):
        raise LlmopsError("json_schema.schema must be an object", "pass a JSON Schema object")
    try:
        key = json.dumps(schema, separators=(",", ":"))  # key order kept: it orders the output
    except (ValueError, TypeError, RecursionError) as exc:
        raise LlmopsError(f"unsupported JSON schema: {type(exc).__name__}", "pass plain JSON") from None
    if len(key) > MAX_SCHEMA_BYTES:
        raise LlmopsError(f"JSON schema of {len(key)} bytes is over the {MAX_SCHEMA_BYTES}-byte limit",
                          "simplify the schema")
    with _LOCK:
        if key in _GRAMMARS:
            _GRAMMARS.move_to_end(key)
            return _GRAMMARS[key]
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(key, defaults={"whitespace_flexible": False})
        error = llguidance.LLMatcher.validate_grammar(grammar)  # "" when the grammar compiles
    except (ValueError, TypeError, RecursionError) as exc:
        error = str(exc) or type(exc).__name__
    if error:
        raise LlmopsError(f"unsupported JSON schema: {str(error).splitlines()[0]}", "simplify the schema")
    with _LOCK:
        _GRAMMARS[key] = grammar
        while len(_GRAMMARS) > _GRAMMAR_CACHE:
            _GRAMMARS.popitem(last=False)
    return grammar


class Constraint:
    """A grammar the next tokens must follow; `mask` before sampling, `advance` after. The mask is applied
    with numpy on the scheduler thread (llguidance's torch helper is a torch.compile'd kernel: a compile on
    first use and torch's thread pool on every step; see serving/sampling.py)."""

    def __init__(self, tokenizer: Any, grammar: str, vocab: int) -> None:
        import llguidance
        import llguidance.numpy as ln

        self._ln = ln
        self.matcher = llguidance.LLMatcher(ll_tokenizer(tokenizer), grammar)
        if self.matcher.is_error():
            raise LlmopsError(f"bad grammar: {self.matcher.get_error()}", "check the response_format schema")
        self._bitmask = ln.allocate_token_bitmask(1, ll_tokenizer(tokenizer).vocab_size)
        self.vocab = vocab

    @classmethod
    def json_schema(cls, tokenizer: Any, schema: dict[str, Any], vocab: int) -> Constraint:
        return cls(tokenizer, compile_schema(schema), vocab)

    @classmethod
    def json_object(cls, tokenizer: Any, vocab: int) -> Constraint:
        return cls.json_schema(tokenizer, {"type": "object"}, vocab)

    def mask(self, logits: Any) -> np.ndarray:
        """Set every token the grammar forbids to -inf (in place on a [vocab] array, or a CPU tensor's memory)."""
        row = as_array(logits)
        self._ln.fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        words = self._bitmask[0].astype("<i4", copy=False)  # little-endian words: bit i of the bytes = token i
        allowed = np.unpackbits(words.view(np.uint8), bitorder="little")
        width = min(row.shape[-1], allowed.size)
        row[:width][allowed[:width] == 0] = -np.inf
        row[width:] = -np.inf  # padded vocab rows the tokenizer never produces
        return row

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise LlmopsError(f"constrained decoding rejected token {token}: {self.matcher.get_error()}",
                              "this is a bug in the constraint path")

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more (the answer ends here)."""
        return self.matcher.is_stopped()

