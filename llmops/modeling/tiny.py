"""Tiny randomly initialised models of the open model families (Llama, Qwen2, Qwen3, Mistral, Gemma 2,
Gemma 3, Phi-3), each with SmolLM2's tokenizer and the family's own chat template: every code path of
training, evaluation, registration and serving runs on them in seconds, with no model hub.

Each family keeps what makes it different from Llama, so a code path that assumes Llama fails on it:
Qwen2's q/k/v biases, Qwen3's q/k norms and explicit head_dim, Mistral's sliding window, Gemma's scaled
embeddings, (1 + w) RMSNorm, GELU-tanh MLP, soft-capping and sandwich norms, Phi-3's fused qkv/gate_up
projections, and the turn markers as single special tokens that end generation (Gemma's <end_of_turn>,
Phi-3's <|end|>) beside the tokenizer's eos, so code that stops only at `tokenizer.eos_token_id` fails too.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")

# Chat templates in each family's own turn format (shortened from the families' published templates).
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}"
    "{% else %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
)
_PHI3 = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# `special`: the family's turn markers, added to the tokenizer as single special tokens as the real
# tokenizers have them; `stop`: the end-of-turn token that also ends generation (generation_config's
# eos_token_id, beside the tokenizer's eos), as in the published Gemma and Phi-3 checkpoints.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"config": "LlamaConfig", "model": "LlamaForCausalLM", "template": None, "extra": {}},
    "qwen2": {"config": "Qwen2Config", "model": "Qwen2ForCausalLM", "template": _CHATML, "extra": {}},
    "qwen3": {"config": "Qwen3Config", "model": "Qwen3ForCausalLM", "template": _CHATML,
              "extra": {"head_dim": 32}},
    "mistral": {"config": "MistralConfig", "model": "MistralForCausalLM", "template": _MISTRAL,
                "extra": {"sliding_window": 4096, "tie_word_embeddings": False},
                "special": ["[INST]", "[/INST]"]},
    "gemma2": {"config": "Gemma2Config", "model": "Gemma2ForCausalLM", "template": _GEMMA,
               "extra": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 4096,
                         "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
               "special": ["<start_of_turn>", "<end_of_turn>"], "stop": "<end_of_turn>"},
    "gemma3": {"config": "Gemma3TextConfig", "model": "Gemma3ForCausalLM", "template": _GEMMA,
               "extra": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 4096,
                         "layer_types": ["sliding_attention", "full_attention"]},
               "special": ["<start_of_turn>", "<end_of_turn>"], "stop": "<end_of_turn>"},
    "phi3": {"config": "Phi3Config", "model": "Phi3ForCausalLM", "template": _PHI3,
             "extra": {"tie_word_embeddings": False},
             "special": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "stop": "<|end|>"},
}


def build_tiny_model(out_dir: Path, tokenizer_dir: Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                     family: str = "llama", overrides: dict[str, Any] | None = None) -> Path:
    """Write a tiny `family` causal LM (safetensors) and the base tokenizer to `out_dir`; returns `out_dir`.
    `overrides` replace config fields (e.g. a short `sliding_window` to exercise the window)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}: one of {sorted(FAMILIES)}")
    spec = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if spec.get("special"):
        tokenizer.add_special_tokens({"additional_special_tokens": spec["special"]})
    fields: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    fields.update(spec["extra"])
    fields.update(overrides or {})
    config = getattr(transformers, spec["config"])(**fields)
    torch.manual_seed(seed)
    model = getattr(transformers, spec["model"])(config)
    if family == "qwen2":  # random biases (initialised to zero) so a graph that drops them is caught
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0.0, 0.02)
    if spec.get("stop"):
        model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                                tokenizer.convert_tokens_to_ids(spec["stop"])]
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if spec.get("special"):
        tokenizer.save_pretrained(out_dir)
    else:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, out_dir / name)
    if spec["template"] is not None:
        (out_dir / "chat_template.jinja").write_text(spec["template"])
    return out_dir
