"""What every engine reads from a decoder checkpoint's config, parsed once (transformers' own `AutoConfig`).

The GPU engine (`static_cache.py`) and the CPU graph builders (`serving/engine_build/graph_spec.py`) both re-express a
model's attention in their own ops, so both need the same facts: heads, KV heads, head size, per-layer
attention types and sliding windows, the longest position. One parse here means the two can never disagree
on, say, Mistral's window or Qwen3's explicit head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.errors import ModelError

# model_type -> the family name users know
FAMILIES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma 2",
            "gemma3_text": "Gemma 3 (text)", "phi3": "Phi-3"}
ENGINE_FIX = "serve with --engine eager"


def read_config(model_dir: Path):
    """The checkpoint's transformers config (defaults and legacy keys resolved as the reference model does)."""
    from transformers import AutoConfig

    if not (Path(model_dir) / "config.json").is_file():
        raise ModelError(f"no config.json in {model_dir}", "pass a Hugging Face checkpoint directory")
    try:
        return AutoConfig.from_pretrained(str(model_dir))
    except (ValueError, KeyError, OSError) as exc:
        raise ModelError(f"cannot read the config of {model_dir}: {exc}", ENGINE_FIX) from exc


@dataclass(frozen=True)
class Attention:
    """The attention shape of a decoder: what a KV cache and an attention step are sized by."""

    model_type: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    max_positions: int
    layer_types: tuple[str, ...]       # per layer: full_attention | sliding_attention
    windows: tuple[int | None, ...]    # per layer: sliding window (key visible iff q_pos - k_pos < window)
    per_layer_types: bool              # the config lists layer_types (Gemma, Qwen3...) vs one window for all


def attention(cfg: Any) -> Attention:
    """The attention facts of `cfg` (a transformers config of any Llama-like family)."""
    n_layers, heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    listed = getattr(cfg, "layer_types", None)
    layer_types = tuple(listed or ["full_attention"] * n_layers)
    window = getattr(cfg, "sliding_window", None)
    if listed is None:  # Llama, Mistral, Phi-3: one window (or none) for every layer
        windows = [window] * n_layers
    else:
        windows = [window if lt == "sliding_attention" else None for lt in layer_types]
    return Attention(
        model_type=cfg.model_type, layers=n_layers, heads=heads,
        kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
        head_dim=int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads), hidden=int(cfg.hidden_size),
        max_positions=int(getattr(cfg, "max_position_embeddings", 0) or 0), layer_types=layer_types,
        windows=tuple(int(w) if w else None for w in windows), per_layer_types=listed is not None)
