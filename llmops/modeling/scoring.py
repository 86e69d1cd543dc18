"""Perplexity: the one measure used to check a pulled model, to evaluate, and to gate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], max_length: int = 512, batch_size: int = 8) -> float:
    """Token-weighted perplexity of `texts` (each scored on its own, truncated to `max_length` tokens)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in chunk]
        width = max(len(ids) for ids in batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        target_mask = mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_nll += nll[target_mask].sum().item()
        total_tokens += int(target_mask.sum().item())
    return math.exp(total_nll / max(total_tokens, 1))
