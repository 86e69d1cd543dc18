"""Packed-sequence attention that scores only pairs inside one example ("packed_sdpa").

Why: a packed 512-token block of ~57-token examples given to SDPA as a block-diagonal mask makes the CPU
kernel score all 512 x 512 pairs, of which only a few percent are inside an example, and attention was the largest
share of our step's time (benchmarks/README.md, packed attention).
Here the examples of a batch (segments: they start wherever a row's position id does not follow the
previous one, the same rule transformers uses to build its packed mask) are gathered into a few padded
mini-batches of examples of similar length and run through SDPA with `is_causal=True`. Right padding
with a causal mask cannot leak: a real query at position i sees keys 0..i of its own example only, and the
padded query rows are dropped on the way back. So the result is the block-diagonal causal attention,
computed on about sum(l^2)/2 pairs instead of 512^2.

On CPU the kernel runs in fp32 even under bf16 autocast: torch 2.13's CPU flash-attention backward in bf16
costs about as much for many short sequences as for a few long ones, in fp32 it is several times cheaper
(benchmarks/README.md, measurements cited by the code); the output is cast back to the autocast dtype. In
fp32 the result equals the masked SDPA (tests/unit/test_train_attention.py); under bf16 autocast it is the same
attention with fp32 rounding inside.

Registered with transformers' AttentionInterface and its mask interface: the mask function returns no mask
for the packed case (no 2D attention mask, no KV cache; it would be ignored), and any other call (a padding
mask, a cache during generation, a decode step) goes to transformers' own SDPA path with the usual mask.
A sliding window (Mistral, Gemma) narrows the causal mask to a band inside each example; soft-capped
logits (Gemma 2) cannot be computed here, so `unsupported` sends such families to eager attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NAME = "packed_sdpa"
# Call overhead of one SDPA call + gathers, in attention pairs per head (measured on CPU, SmolLM2-135M
# shapes): a new padded group pays off only when it saves more scored pairs than this.
GROUP_OVERHEAD_PAIRS = 2048


@dataclass(frozen=True)
class Plan:
    """Where each token of the flattened (batch * seq) layout goes in the padded groups, and back."""

    gather: tuple[tuple[torch.Tensor, int, int], ...]  # per group: (flat token index (n*width,), n, width)
    scatter: torch.Tensor  # (batch * seq,) row of each token in the concatenated padded group outputs


def segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """True where a new sequence begins: a row's first token, or a position id that does not follow on."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = torch.diff(position_ids, dim=-1) != 1
    return starts


def group_lengths(lengths: list[int], overhead: int = GROUP_OVERHEAD_PAIRS) -> list[tuple[int, int]]:
    """Split segments, sorted by length descending, into contiguous groups minimising padded pairs + overhead.

    Returns (count, width) per group. Exact dynamic programme over the sorted lengths (a few dozen).
    """
    ls = sorted(lengths, reverse=True)
    n = len(ls)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j segments
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # group = ls[i:j], padded to ls[i]
            cost = best[i] + (j - i) * ls[i] * (ls[i] + 1) / 2 + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        groups.append((j - cut[j], ls[cut[j]]))
        j = cut[j]
    return groups[::-1]


def make_plan(position_ids: torch.Tensor, overhead: int = GROUP_OVERHEAD_PAIRS) -> Plan:
    starts = segment_starts(position_ids).reshape(-1).cpu()
    total = starts.numel()
    begin = torch.nonzero(starts).flatten()
    lengths = torch.diff(begin, append=torch.tensor([total]))
    order = torch.argsort(lengths, descending=True, stable=True)
    device = position_ids.device
    scatter = torch.empty(total, dtype=torch.long)
    gather = []
    row0, k = 0, 0
    for count, width in group_lengths(lengths.tolist(), overhead):
        segs = order[k : k + count]
        k += count
        offs = torch.arange(width)
        idx = begin[segs, None] + offs[None, :]  # (count, width); past a segment's end: padding
        valid = offs[None, :] < lengths[segs, None]
        flat = torch.where(valid, idx, torch.zeros_like(idx))  # padding reads token 0: finite, never seen
        slots = row0 + torch.arange(count * width).reshape(count, width)
        scatter[idx[valid]] = slots[valid]
        gather.append((flat.reshape(-1).to(device), count, width))
        row0 += count * width
    return Plan(tuple(gather), scatter.to(device))


_cache: list = [None, -1, None]  # (position_ids tensor, its version, plan): one plan serves every layer


def plan_for(position_ids: torch.Tensor) -> Plan:
    if _cache[0] is not position_ids or _cache[1] != position_ids._version:
        _cache[:] = [position_ids, position_ids._version, make_plan(position_ids)]
    return _cache[2]


def unsupported(config) -> str | None:
    """Why this kernel cannot compute a family's attention (None when it can): it has no soft-capping."""
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return f"{config.model_type} soft-caps attention logits"
    return None


def _sliding_mask(width: int, window: int, device) -> torch.Tensor:
    """Causal band [width, width]: query i sees keys i - window < j <= i (transformers' sliding rule)."""
    i = torch.arange(width, device=device)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                        scaling: float | None = None, position_ids: torch.Tensor | None = None, **kwargs):
    """AttentionInterface signature: q (B, H, T, D), k/v (B, KV, S, D) -> (B, T, H, D), None."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, t, d = query.shape
    if attention_mask is not None or position_ids is None or key.shape[2] != t or t == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, position_ids=position_ids, **kwargs)
    kv = key.shape[1]
    plan = plan_for(position_ids.expand(b, -1) if position_ids.shape[0] != b else position_ids)
    dtype = torch.float32 if query.device.type == "cpu" else query.dtype
    q_flat = query.transpose(1, 2).reshape(b * t, h, d).to(dtype)
    k_flat = key.transpose(1, 2).reshape(b * t, kv, key.shape[-1]).to(dtype)
    v_flat = value.transpose(1, 2).reshape(b * t, kv, value.shape[-1]).to(dtype)
    window = kwargs.get("sliding_window")  # Mistral, Gemma: a query sees only the last `window` keys
    outs = []
    with torch.autocast(query.device.type, enabled=False):
        for index, count, width in plan.gather:
            q = q_flat.index_select(0, index).view(count, width, h, d).transpose(1, 2)
            k = k_flat.index_select(0, index).view(count, width, kv, -1).transpose(1, 2)
            v = v_flat.index_select(0, index).view(count, width, kv, -1).transpose(1, 2)
            band = _sliding_mask(width, window, q.device) if window and width > window else None
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=band, dropout_p=dropout, scale=scaling, is_causal=width > 1 and band is None,
                enable_gqa=kv != h)
            outs.append(out.transpose(1, 2).reshape(count * width, h * value.shape[-1]))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.index_select(0, plan.scatter).view(b, t, h, value.shape[-1]).to(query.dtype), None


def packed_sdpa_mask(*args, attention_mask=None, q_offset=0, kv_offset=0, q_length=None, kv_length=None,
                     use_vmap: bool = False, **kwargs):
    """No mask for packed training (the attention derives it from position ids); transformers' otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and not use_vmap and q_length == kv_length and not q_offset and not kv_offset:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_offset=q_offset, kv_offset=kv_offset,
                     q_length=q_length, kv_length=kv_length, use_vmap=use_vmap, **kwargs)


def register() -> str:
    """Make `attn_implementation="packed_sdpa"` available to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, packed_sdpa_forward)
    AttentionMaskInterface.register(NAME, packed_sdpa_mask)
    return NAME
