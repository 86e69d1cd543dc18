"""Honest FLOP count of one LoRA training step, from the batch layout each side really ran.

Per real (non-padding) token, with N_lin = the decoder's linear weights (q, k, v, o, gate, up, down; no
embedding, no LM head) and N_lora = the LoRA weights (r * (d_in + d_out) per adapted linear):

    frozen base forward              2 * N_lin
    frozen base backward             2 * N_lin   (activation gradients only: frozen weights get no weight grad)
    LoRA forward + backward          6 * N_lora  (2 forward, 2 activation grad, 2 weight grad)

per logit row actually computed (LM head, d x V, tied and frozen): 4 * d * V (forward + activation grad);
ours computes logits only at answer positions, the Hugging Face sides at every position;

per (real query token, key) pair the attention kernel scores, per layer: 12 * n_heads * head_dim
(QK^T and PV forward = 4 * n_heads * head_dim, backward twice that). SDPA on CPU skips nothing when it gets an
explicit mask (packed rows, padded rows): every real query is charged the full row width. Only a row that is
one unpadded sequence runs the causal fast path (is_causal, no mask), charged l * (l + 1) / 2 pairs. Ours runs
its packed attention (llmops/training/attention.py: each example through SDPA with is_causal, grouped with
examples of similar length): charged l * (l + 1) / 2 pairs per example; the padding inside its groups is waste,
not credited.

Layer 0's q/k/v read the embeddings, which need no gradient, so their input gradients are not computed and
not counted (base: 2 * (q + k + v weights), LoRA: 2 * r * d_in per adapted one of them, per token).
Not credited: work on padding positions (it is waste), norms, softmax, activations, RoPE, the optimizer.
tests/unit/test_bench_flops.py checks the count against torch's FlopCounterMode on a tiny model.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LINEAR_SHAPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a decoder-only model and its LoRA config."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    lora_r: int
    lora_targets: tuple[str, ...]

    @classmethod
    def from_config(cls, config, lora_r: int, lora_targets: Iterable[str]) -> ModelShape:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                   getattr(config, "num_key_value_heads", None) or config.num_attention_heads, head_dim,
                   config.intermediate_size, config.vocab_size, lora_r, tuple(lora_targets))

    def linear_io(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear in one decoder layer."""
        d, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}

    @property
    def n_linear(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_io().values())

    @property
    def n_lora(self) -> int:
        io = self.linear_io()
        unknown = [t for t in self.lora_targets if t not in io]
        if unknown:
            raise ValueError(f"LoRA targets {unknown} are not decoder linears ({', '.join(LINEAR_SHAPES)})")
        return self.layers * sum(self.lora_r * sum(io[t]) for t in self.lora_targets)

    @property
    def first_layer_skipped(self) -> int:
        """Input-gradient FLOPs per token that layer 0's q/k/v never compute (their input needs no grad)."""
        io = self.linear_io()
        qkv = ("q_proj", "k_proj", "v_proj")
        return sum(2 * io[t][0] * io[t][1] for t in qkv) + sum(
            2 * self.lora_r * io[t][0] for t in self.lora_targets if t in qkv)

    @property
    def per_token(self) -> int:
        return 4 * self.n_linear + 6 * self.n_lora - self.first_layer_skipped

    @property
    def per_logit(self) -> int:
        return 4 * self.hidden * self.vocab

    @property
    def per_pair(self) -> int:
        return 12 * self.layers * self.heads * self.head_dim


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward as the kernels saw it: per row, the lengths of its sequences; the padded width."""

    rows: tuple[tuple[int, ...], ...]
    width: int
    logits: int  # logit rows computed at real positions
    per_example: bool = False  # the kernel runs each sequence on its own, causal (ours' packed attention)

    @property
    def real_tokens(self) -> int:
        return sum(sum(row) for row in self.rows)

    @property
    def padded_tokens(self) -> int:
        return len(self.rows) * self.width

    @property
    def masked(self) -> bool:
        """True when attention gets an explicit mask (any packed or padded row), so nothing is skipped."""
        return not self.per_example and any(len(row) > 1 or sum(row) < self.width for row in self.rows)

    @property
    def attention_pairs(self) -> int:
        if self.masked:
            return self.real_tokens * self.width
        return sum(n * (n + 1) // 2 for row in self.rows for n in row)


def segment_lengths(position_ids: Sequence[int]) -> tuple[int, ...]:
    """Lengths of the sequences in one packed row: each starts where the position id restarts at 0."""
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return tuple(b - a for a, b in itertools.pairwise(starts))


def micro_batch(rows: Sequence[Sequence[int]], width: int | None = None, logits: int | None = None,
                per_example: bool = False) -> MicroBatch:
    """A MicroBatch; width defaults to the longest row, logits to every real position."""
    rows_t = tuple(tuple(int(n) for n in row) for row in rows)
    width = width if width is not None else max(sum(row) for row in rows_t)
    real = sum(sum(row) for row in rows_t)
    return MicroBatch(rows_t, int(width), real if logits is None else int(logits), per_example)


def step_flops(shape: ModelShape, batches: Iterable[MicroBatch]) -> dict[str, int]:
    """FLOPs of one optimizer step (all its micro-batches), by term, and the total."""
    batches = list(batches)
    tokens = sum(b.real_tokens for b in batches)
    logits = sum(b.logits for b in batches)
    pairs = sum(b.attention_pairs for b in batches)
    out = {
        "base_and_lora": shape.per_token * tokens,
        "lm_head": shape.per_logit * logits,
        "attention": shape.per_pair * pairs,
    }
    out["total"] = sum(out.values())
    return out


FORMULA = ("FLOPs/step = real tokens * (4*N_lin + 6*N_lora - layer-0 q/k/v input grads) + logit rows computed "
           "* 4*d*V + attention (query, key) pairs scored * 12*L*n_heads*head_dim (ours: l(l+1)/2 per example)")
