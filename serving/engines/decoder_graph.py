"""Export a Llama-architecture checkpoint as one ONNX decoder-with-past graph that CPU runtimes execute.

Why our own graph rather than exporting the transformers module: the scheduler drives prefill and decode
steps with per-slot KV caches, so the graph must take the KV cache as an input and hand the grown cache
back. transformers 5's cache objects and mask builders do not trace cleanly; this module re-expresses the
same maths (RMSNorm, rotary embeddings, grouped-query attention, SwiGLU, tied head) from the checkpoint's
own weights in plain tensor ops that the exporter keeps exact. Equivalence with the transformers model is
checked token for token on every build (`serving.engine_store`), so a mismatch never ships.

Graph contract (all float32, KV packed in one tensor so a step has three inputs and two outputs):
    input_ids       int64 [B, T]
    position_ids    int64 [B, T]          absolute positions of the new tokens
    attention_mask  int64 [B, P + T]      1 = attend (left padding of shorter slots is 0)
    past            f32   [L, 2, B, Hkv, P, D]
    -> logits       f32   [B, V]          at the last new position only (prefill needs no more)
    -> present      f32   [L, 2, B, Hkv, P + T, D]
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

from llmops.errors import ModelError

OPSET = 17
GRAPH_FILE = "decoder.onnx"
SUPPORTED_MODEL_TYPES = ("llama",)


def _config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelError(f"no config.json in {model_dir}", "pass a Hugging Face checkpoint directory")
    return json.loads(path.read_text())


def check_supported(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's config when the graph can express it exactly; a clear error otherwise."""
    cfg = _config(model_dir)
    if cfg.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ModelError(f"the CPU engine graph supports {SUPPORTED_MODEL_TYPES}, not {cfg.get('model_type')!r}",
                         "serve this model with --engine eager")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ModelError(f"rope type {rope.get('rope_type')!r} is not supported by the CPU engine graph",
                         "serve this model with --engine eager")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ModelError("attention/MLP biases are not supported by the CPU engine graph",
                         "serve this model with --engine eager")
    return cfg


def _rope_theta(cfg: dict[str, Any]) -> float:
    rope = cfg.get("rope_parameters") or {}
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def build_module(model_dir: Path):
    """The decoder-with-past as a torch module holding the checkpoint's weights (fp32, eval mode)."""
    import torch
    from safetensors.torch import load_file

    cfg = check_supported(model_dir)
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if not weights:
        raise ModelError(f"no safetensors weights in {model_dir}", "save the model with safe_serialization=True")

    n_layers, n_heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads", n_heads))
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_heads)
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    theta = _rope_theta(cfg)

    def w(name: str) -> torch.Tensor:
        if name not in weights:
            raise ModelError(f"weight {name} missing from {model_dir}", "pass a complete (merged) checkpoint")
        return weights[name].float()

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Parameter(w("model.embed_tokens.weight"), requires_grad=False)
            head = weights.get("lm_head.weight")
            self.head = self.embed if head is None or cfg.get("tie_word_embeddings") else \
                torch.nn.Parameter(head.float(), requires_grad=False)
            self.norm = torch.nn.Parameter(w("model.norm.weight"), requires_grad=False)
            names = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                     "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                     "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
            self.layers = torch.nn.ParameterList(
                torch.nn.Parameter(w(f"model.layers.{i}.{n}"), requires_grad=False)
                for i in range(n_layers) for n in names)
            inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
            self.register_buffer("inv_freq", inv, persistent=False)

        @staticmethod
        def _rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            var = x.pow(2).mean(-1, keepdim=True)
            return weight * (x * torch.rsqrt(var + eps))

        @staticmethod
        def _rotate(x: torch.Tensor) -> torch.Tensor:
            half = x.shape[-1] // 2
            return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

        def forward(self, input_ids, position_ids, attention_mask, past):
            bsz, t = input_ids.shape[0], input_ids.shape[1]
            p = past.shape[4]
            h = self.embed[input_ids]
            freqs = position_ids.unsqueeze(-1).float() * self.inv_freq  # [B, T, D/2]
            emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)      # [B, 1, T, D]
            cos, sin = emb.cos(), emb.sin()
            keys = torch.arange(p + t, device=input_ids.device)
            queries = torch.arange(t, device=input_ids.device) + p
            allowed = (keys.unsqueeze(0) <= queries.unsqueeze(1)).unsqueeze(0).unsqueeze(0) \
                & attention_mask.bool().unsqueeze(1).unsqueeze(1)      # [B, 1, T, P+T]
            bias = torch.where(allowed, torch.zeros((), dtype=torch.float32),
                               torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32))
            scale = head_dim ** -0.5
            presents = []
            for i in range(n_layers):
                ln1, ln2, wq, wk, wv, wo, wg, wu, wd = self.layers[i * 9:(i + 1) * 9]
                x = self._rms(h, ln1)
                lin = torch.nn.functional.linear
                q = (lin(x, wq)).view(bsz, t, n_heads, head_dim).transpose(1, 2)
                k = (lin(x, wk)).view(bsz, t, n_kv, head_dim).transpose(1, 2)
                v = (lin(x, wv)).view(bsz, t, n_kv, head_dim).transpose(1, 2)
                q = q * cos + self._rotate(q) * sin
                k = k * cos + self._rotate(k) * sin
                k = torch.cat((past[i, 0], k), dim=2)
                v = torch.cat((past[i, 1], v), dim=2)
                presents.append(torch.stack((k, v)))
                groups = n_heads // n_kv
                kk = k.repeat_interleave(groups, dim=1)
                vv = v.repeat_interleave(groups, dim=1)
                scores = (q @ kk.transpose(2, 3)) * scale + bias
                attn = torch.softmax(scores, dim=-1) @ vv                # [B, H, T, D]
                h_attn = attn.transpose(1, 2).reshape(bsz, t, n_heads * head_dim)
                h = h + lin(h_attn, wo)
                x = self._rms(h, ln2)
                h = h + lin(torch.nn.functional.silu(lin(x, wg)) * lin(x, wu), wd)
            last = self._rms(h[:, -1, :], self.norm)
            return torch.nn.functional.linear(last, self.head), torch.stack(presents)

    return Decoder().eval(), {"layers": n_layers, "kv_heads": n_kv, "head_dim": head_dim,
                              "vocab": int(cfg["vocab_size"]), "max_position_embeddings":
                              int(cfg.get("max_position_embeddings", 2048))}


def export_onnx(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write `out_dir/decoder.onnx` (weights in `decoder.onnx.data`) and return the graph's shape facts."""
    import torch

    module, shapes = build_module(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_layers, n_kv, head_dim = shapes["layers"], shapes["kv_heads"], shapes["head_dim"]
    example = (
        torch.tensor([[1, 2, 3]], dtype=torch.int64),
        torch.tensor([[2, 3, 4]], dtype=torch.int64),
        torch.ones((1, 5), dtype=torch.int64),
        torch.zeros((n_layers, 2, 1, n_kv, 2, head_dim), dtype=torch.float32),
    )
    t0 = time.perf_counter()
    path = out_dir / GRAPH_FILE
    # The TorchScript exporter: it traces this plain-tensor module exactly (torch.export adds nothing here);
    # its deprecation warning is not actionable for users.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, example, str(path), dynamo=False, opset_version=OPSET,
            input_names=["input_ids", "position_ids", "attention_mask", "past"],
            output_names=["logits", "present"],
            dynamic_axes={"input_ids": {0: "batch", 1: "new"}, "position_ids": {0: "batch", 1: "new"},
                          "attention_mask": {0: "batch", 1: "total"}, "past": {2: "batch", 4: "past"},
                          "logits": {0: "batch"}, "present": {2: "batch", 4: "total"}},
            external_data=True,
        )
    return shapes | {"export_seconds": round(time.perf_counter() - t0, 2), "opset": OPSET}
