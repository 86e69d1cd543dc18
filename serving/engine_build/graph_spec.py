"""What the CPU engine graphs need to know about a decoder checkpoint, read once for every family they run.

Both graphs (`decoder_graph.py` for OpenVINO, `gqa_graph.py` for ONNX Runtime) re-express a model's maths in
plain ops, so they must know exactly where each open family differs from Llama. The config is parsed by
transformers itself (`AutoConfig`: defaults, legacy keys and per-layer attention types resolved as the
reference model resolves them; the attention facts come from `serving.engines.checkpoint`, the one parse the
GPU engine shares), the rotary frequencies come from the family's own rotary module, and the
weights are renamed to one canonical per-layer set:

    llama, mistral  the base: RMSNorm, rotary, grouped-query attention, SwiGLU (Mistral: sliding window)
    qwen2           q/k/v biases (any `*_proj.bias` in the checkpoint is used, whatever the family)
    qwen3           per-head q/k RMSNorm before the rotary embedding, explicit head_dim
    gemma2          embeddings x sqrt(hidden), (1 + w) RMSNorm, GELU-tanh MLP, norms before and after attention
                    and MLP, query_pre_attn_scalar, attention and final logit soft-capping, alternating windows
    gemma3_text     gemma2 without soft-capping, plus q/k norms and a rotary base per layer type
    phi3            fused qkv_proj and gate_up_proj (split here), rotary scaled by longrope (short factors only)

Anything else (another family, partial rotary, bidirectional attention, a rope type whose frequencies change
with the sequence) raises ModelError naming the family and pointing at `--engine eager`: never a wrong answer.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import ModelError
from serving.engines.checkpoint import ENGINE_FIX, FAMILIES, attention, read_config

ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}
# Rope types whose frequencies are fixed for every position the engine serves (longrope: up to the original
# context, where the short factors apply; dynamic NTK: up to max_position_embeddings, where it is unscaled).
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def refuse(cfg: Any, what: str) -> ModelError:
    family = FAMILIES.get(getattr(cfg, "model_type", None), repr(getattr(cfg, "model_type", None)))
    return ModelError(f"the CPU engine graphs cannot run this {family} model: {what}", ENGINE_FIX)


@dataclass
class DecoderSpec:
    """Shapes and per-family switches of one checkpoint (all trace-time constants of the graphs)."""

    model_type: str
    layers: int
    heads: int
    kv_heads: int
    hidden: int
    head_dim: int
    intermediate: int
    vocab: int
    eps: float
    max_positions: int
    activation: str               # "silu" | "gelu_tanh"
    scale: float                  # attention score scale
    embed_scale: float | None     # Gemma: sqrt(hidden)
    attn_softcap: float | None
    final_softcap: float | None
    tied: bool
    layer_types: list[str]        # per layer: key of `rope` (and why a window applies)
    windows: list[int | None]     # per layer: sliding window (key visible iff query_pos - key_pos < window)
    rope: dict[str, tuple[Any, float]] = field(default_factory=dict)  # layer type -> (inv_freq, cos/sin scaling)

    def fingerprint(self) -> str:
        """A digest of everything the graphs take from the config (part of the engine cache key: the weights
        digest alone misses a changed window, soft-cap or rope setting)."""
        import hashlib
        import json

        fields = {k: v for k, v in vars(self).items() if k != "rope"}
        fields["rope"] = {lt: [inv.tolist(), scaling] for lt, (inv, scaling) in sorted(self.rope.items())}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def shapes(self) -> dict[str, Any]:
        """The facts an engine needs at load time (stored in the engine manifest)."""
        return {"layers": self.layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim, "vocab": self.vocab,
                "max_position_embeddings": self.max_positions, "model_type": self.model_type,
                "sliding_windows": sorted({w for w in self.windows if w})}


def _rope_params(cfg: Any, layer_type: str) -> dict[str, Any]:
    params = getattr(cfg, "rope_parameters", None) or {}
    if layer_type in params and isinstance(params[layer_type], dict):
        params = params[layer_type]
    return params


def _rope(cfg: Any, layer_types: list[str]) -> tuple[dict[str, tuple[Any, float]], int]:
    """Per layer type (inv_freq, attention scaling) from the family's own rotary module, and the longest
    sequence for which those stay what transformers uses."""
    module = importlib.import_module(type(cfg).__module__.replace(".configuration_", ".modeling_"))
    classes = [c for n, c in vars(module).items() if n.endswith("RotaryEmbedding") and isinstance(c, type)]
    if len(classes) != 1:
        raise refuse(cfg, "its rotary embedding module was not found")
    rotary = classes[0](cfg)
    limit = int(cfg.max_position_embeddings)
    out: dict[str, tuple[Any, float]] = {}
    for lt in sorted(set(layer_types)):
        params = _rope_params(cfg, lt)
        kind = params.get("rope_type", "default")
        if kind == "longrope":  # short factors up to the original context; beyond it transformers switches
            limit = min(limit, int(params.get("original_max_position_embeddings")
                                   or getattr(cfg, "original_max_position_embeddings", limit)))
        elif kind not in (*STATIC_ROPE, "dynamic"):
            raise refuse(cfg, f"rope type {kind!r}")
        if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
            raise refuse(cfg, f"partial rotary factor {params['partial_rotary_factor']}")
        inv = getattr(rotary, f"{lt}_inv_freq", None)
        scaling = getattr(rotary, f"{lt}_attention_scaling", None)
        if inv is None:
            inv, scaling = rotary.inv_freq, rotary.attention_scaling
        out[lt] = (inv.detach().float().clone(), float(scaling))
    return out, limit


def read_spec(model_dir: Path) -> DecoderSpec:
    """The checkpoint's spec when the graphs express its family exactly; ModelError (naming it) otherwise."""
    cfg = read_config(model_dir)
    if cfg.model_type not in FAMILIES:
        raise ModelError(f"the CPU engine graphs support {', '.join(FAMILIES.values())}; not model type "
                         f"{cfg.model_type!r}", ENGINE_FIX)
    if getattr(cfg, "use_bidirectional_attention", False):
        raise refuse(cfg, "bidirectional attention")
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
    if act not in ACTIVATIONS:
        raise refuse(cfg, f"activation {act!r}")
    att = attention(cfg)
    if any(lt not in ("full_attention", "sliding_attention") for lt in att.layer_types):
        raise refuse(cfg, f"attention layer types {sorted(set(att.layer_types))}")
    rope, limit = _rope(cfg, list(att.layer_types))
    gemma = cfg.model_type.startswith("gemma")
    pre_scalar = getattr(cfg, "query_pre_attn_scalar", None)
    return DecoderSpec(
        model_type=cfg.model_type, layers=att.layers, heads=att.heads, kv_heads=att.kv_heads, hidden=att.hidden,
        head_dim=att.head_dim, intermediate=int(cfg.intermediate_size), vocab=int(cfg.vocab_size),
        eps=float(getattr(cfg, "rms_norm_eps", 1e-6)), max_positions=limit, activation=ACTIVATIONS[act],
        scale=float(pre_scalar) ** -0.5 if pre_scalar else att.head_dim ** -0.5,
        embed_scale=float(cfg.hidden_size) ** 0.5 if gemma else None,
        attn_softcap=getattr(cfg, "attn_logit_softcapping", None) or None,
        final_softcap=getattr(cfg, "final_logit_softcapping", None) or None,
        tied=bool(getattr(cfg, "tie_word_embeddings", False)), layer_types=list(att.layer_types),
        windows=list(att.windows), rope=rope)


# -- weights in one canonical layout ----------------------------------------------------------------------

def load_weights(model_dir: Path, spec: DecoderSpec) -> dict[str, Any]:
    """fp32 torch tensors: `embed`, `head`, `norm` and per layer i `{i}.<name>` with names q k v o gate up down
    (weights [out, in]), optional `<proj>_bias`, q_norm k_norm, and the norms attn_in, attn_out (Gemma),
    mlp_in, mlp_out (Gemma). RMSNorm weights are stored as the factor they multiply by ((1 + w) for Gemma)."""
    from safetensors.torch import load_file

    raw: dict[str, Any] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        raw.update(load_file(str(f)))
    if not raw:
        raise ModelError(f"no safetensors weights in {model_dir}", "save the model with safe_serialization=True")

    def w(name: str):
        if name not in raw:
            raise ModelError(f"weight {name} missing from {model_dir}", "pass a complete (merged) checkpoint")
        return raw[name].float()

    def norm(name: str):
        return 1.0 + w(name) if spec.model_type.startswith("gemma") else w(name)

    out: dict[str, Any] = {"embed": w("model.embed_tokens.weight"), "norm": norm("model.norm.weight")}
    out["head"] = out["embed"] if spec.tied or "lm_head.weight" not in raw else w("lm_head.weight")
    for i in range(spec.layers):
        out.update({f"{i}.{k}": v for k, v in _layer(raw, f"model.layers.{i}.", spec, w, norm).items()})
    return out


def _layer(raw: dict[str, Any], p: str, spec: DecoderSpec, w, norm) -> dict[str, Any]:
    q_out, kv_out = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    layer: dict[str, Any] = {"o": w(p + "self_attn.o_proj.weight"), "down": w(p + "mlp.down_proj.weight")}
    if p + "self_attn.qkv_proj.weight" in raw:  # Phi-3: [q; k; v] rows
        layer["q"], layer["k"], layer["v"] = w(p + "self_attn.qkv_proj.weight").split([q_out, kv_out, kv_out])
    else:
        layer.update({x: w(f"{p}self_attn.{x}_proj.weight") for x in "qkv"})
    if p + "mlp.gate_up_proj.weight" in raw:  # Phi-3: [gate; up] rows
        layer["gate"], layer["up"] = w(p + "mlp.gate_up_proj.weight").chunk(2, dim=0)
    else:
        layer["gate"], layer["up"] = w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")
    for name, key in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                      ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                      ("down", "mlp.down_proj")):
        if f"{p}{key}.bias" in raw:
            layer[f"{name}_bias"] = w(f"{p}{key}.bias")
    if p + "self_attn.qkv_proj.bias" in raw or p + "mlp.gate_up_proj.bias" in raw:
        raise ModelError("fused projection biases are not supported by the CPU engine graphs", ENGINE_FIX)
    for x in ("q_norm", "k_norm"):
        if f"{p}self_attn.{x}.weight" in raw:
            layer[x] = norm(f"{p}self_attn.{x}.weight")
    layer["attn_in"] = norm(p + "input_layernorm.weight")
    if p + "pre_feedforward_layernorm.weight" in raw:  # Gemma's sandwich: post_attention norms the attn output
        layer["attn_out"] = norm(p + "post_attention_layernorm.weight")
        layer["mlp_in"] = norm(p + "pre_feedforward_layernorm.weight")
        layer["mlp_out"] = norm(p + "post_feedforward_layernorm.weight")
    else:
        layer["mlp_in"] = norm(p + "post_attention_layernorm.weight")
    return layer
