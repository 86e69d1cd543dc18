"""The evaluation measures, each a plain function so it can be checked on hand-made examples.

Task metrics on generations: exact match and ROUGE-L F1 after the same normalisation (case, punctuation,
whitespace), and embedding cosine similarity (meaning, not wording). Likelihood: perplexity on the answer
tokens only (the prompt is given, not predicted; the same masking as training via `encode_example`), and
perplexity on general English (GENERAL_TEXT) to catch forgetting. Speed: per-example latency percentiles
and generated tokens per second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from llmops.modeling.text_metrics import (  # noqa: F401  (re-exported: one definition)
    embedding_similarity,
    exact_match,
    lcs_length,
    normalize_text,
    rouge_l_f1,
    tokens,
)


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation, as numpy); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def latency_summary(latencies_ms: Sequence[float], new_tokens: Sequence[int], seconds: float) -> dict[str, float]:
    """p50/p95 latency per example (ms) and generated tokens per second over the whole generation time."""
    return {
        "latency_p50_ms": percentile(latencies_ms, 50),
        "latency_p95_ms": percentile(latencies_ms, 95),
        "tokens_per_s": float(sum(new_tokens) / seconds) if seconds > 0 else float("nan"),
    }


def answer_perplexity(model, tokenizer, records: Sequence[Mapping[str, Any]], batch_size: int = 8,
                      max_length: int = 1024) -> tuple[float, int]:
    """(perplexity, answer tokens scored): token-weighted, on the answer tokens only.

    Each record is encoded exactly as training encodes it (`encode_example`: chat-template prompt masked
    with -100, answer + end-of-turn as labels), right-padded in batches, truncated to `max_length` tokens.
    """
    import torch

    from llmops.modeling.prompts import encode_example

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [encode_example(tokenizer, r) for r in records]
    encoded = [(ids[:max_length], labels[:max_length]) for ids, labels in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start:start + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, (ids, lab) in enumerate(batch):
                input_ids[j, : len(ids)] = torch.tensor(ids)
                labels[j, : len(lab)] = torch.tensor(lab)
                mask[j, : len(ids)] = 1
            # position t predicts token t+1: keep only positions whose next token is an answer token, so
            # the vocabulary projection (the largest matmul) skips the prompt (most of each example)
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100
            targets = labels[:, 1:][keep[:, :-1]].to(device)
            logits = _answer_logits(model, input_ids.to(device), mask.to(device), keep.to(device))
            nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            total_nll += float(nll.item())
            total_tokens += int(targets.numel())
    if total_tokens == 0:
        return float("nan"), 0
    return math.exp(total_nll / total_tokens), total_tokens


def _answer_logits(model, input_ids, attention_mask, keep):
    """Logits at the `keep` positions, flattened to (n, vocab). Uses transformers' `logits_to_keep` with a
    boolean mask where the model supports it, else slices the full logits (same numbers, more compute)."""
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    except TypeError:  # a model class without logits_to_keep
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.dim() == 3 and logits.shape[:2] == keep.shape:  # the model ignored the mask: full logits
        return logits[keep]
    return logits.reshape(-1, logits.shape[-1])


def general_perplexity(model, tokenizer) -> float:
    """Perplexity on plain English paragraphs (GENERAL_TEXT): rises when fine-tuning causes forgetting."""
    from llmops.modeling.general_text import GENERAL_TEXT
    from llmops.modeling.scoring import perplexity

    return perplexity(model, tokenizer, list(GENERAL_TEXT))
