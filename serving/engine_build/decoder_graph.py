"""Export a decoder checkpoint (any family `graph_spec.py` reads) as one ONNX decoder-with-past graph.

Why our own graph rather than exporting the transformers module: the scheduler drives prefill and decode
steps with per-slot KV caches, so the graph must take the KV cache as an input and hand the grown cache
back. transformers 5's cache objects and mask builders do not trace cleanly; this module re-expresses the
same maths (RMSNorm, rotary embeddings, grouped-query attention, gated MLP, head, and each family's
differences: biases, q/k norms, Gemma's scaled embeddings, sandwich norms and soft-capping, sliding windows)
from the checkpoint's own weights in plain tensor ops that the exporter keeps exact. Equivalence with the
transformers model is checked token for token on every build (`serving.engine_build.checks`), so a mismatch never
ships.

Graph contract (all float32, KV packed in one tensor so a step has three inputs and two outputs):
    input_ids       int64 [B, T]
    position_ids    int64 [B, T]          absolute positions of the new tokens
    attention_mask  int64 [B, P + T]      1 = attend (left padding of shorter slots is 0)
    past            f32   [L, 2, B, Hkv, P, D]
    -> logits       f32   [B, V]          at the last new position only (prefill needs no more)
    -> present      f32   [L, 2, B, Hkv, P + T, D]
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from serving.engine_build import Builder, register_builder
from serving.engine_build.graph_spec import DecoderSpec, load_weights, read_spec

OPSET = 17
GRAPH_FILE = "decoder.onnx"


def check_supported(model_dir: Path) -> DecoderSpec:
    """The checkpoint's spec when the graphs can express it exactly; a ModelError naming the family otherwise."""
    return read_spec(model_dir)


def _mask_bias(attention_mask, p: int, t: int, window: int | None):
    """Additive mask [B, 1, T, P+T]: causal, left padding, and (when set) the sliding window. Rows are left
    padded, so index distances equal position distances and the window applies in index space."""
    import torch

    keys = torch.arange(p + t, device=attention_mask.device)
    queries = torch.arange(t, device=attention_mask.device) + p
    allowed = keys.unsqueeze(0) <= queries.unsqueeze(1)
    if window:
        allowed = allowed & (keys.unsqueeze(0) > queries.unsqueeze(1) - window)
    allowed = allowed.unsqueeze(0).unsqueeze(0) & attention_mask.bool().unsqueeze(1).unsqueeze(1)
    return torch.where(allowed, torch.zeros((), dtype=torch.float32),
                       torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32))


def build_module(model_dir: Path):
    """The decoder-with-past as a torch module holding the checkpoint's weights (fp32, eval mode)."""
    import torch

    spec = check_supported(model_dir)
    weights = load_weights(model_dir, spec)
    frozen = lambda x: torch.nn.Parameter(x, requires_grad=False)  # noqa: E731

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = frozen(weights["embed"])
            self.head = self.embed if weights["head"] is weights["embed"] else frozen(weights["head"])
            self.norm = frozen(weights["norm"])
            self.layers = torch.nn.ModuleList(torch.nn.ParameterDict(
                {k.split(".", 1)[1]: frozen(v) for k, v in weights.items() if k.startswith(f"{i}.")})
                for i in range(spec.layers))
            for lt, (inv, _scaling) in spec.rope.items():
                self.register_buffer(f"inv_freq_{lt}", inv, persistent=False)
            self.scaling = {lt: scaling for lt, (_inv, scaling) in spec.rope.items()}
            if spec.embed_scale is not None:  # an fp32 scalar, as transformers multiplies it
                self.register_buffer("embed_scale", torch.tensor(spec.embed_scale, dtype=torch.float32),
                                     persistent=False)

        forward = _forward

    module = Decoder().eval()
    module.spec = spec
    return module, spec.shapes()


def _rms(x, weight, eps: float):
    import torch

    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _proj(x, layer, name: str):
    import torch

    return torch.nn.functional.linear(x, layer[name], layer.get(f"{name}_bias"))


def _forward(self, input_ids, position_ids, attention_mask, past):
    """One prefill or decode step (see the module docstring for the contract); `self.spec` decides the family."""
    import torch

    spec: DecoderSpec = self.spec
    bsz, t, p = input_ids.shape[0], input_ids.shape[1], past.shape[4]
    h = self.embed[input_ids]
    if spec.embed_scale is not None:
        h = h * self.embed_scale
    rot = {}
    for lt in spec.rope:
        freqs = position_ids.unsqueeze(-1).float() * getattr(self, f"inv_freq_{lt}")  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)                          # [B, 1, T, D]
        rot[lt] = (emb.cos() * self.scaling[lt], emb.sin() * self.scaling[lt])
    biases = {w: _mask_bias(attention_mask, p, t, w) for w in set(spec.windows)}
    groups = spec.heads // spec.kv_heads
    presents = []
    for i, layer in enumerate(self.layers):
        x = _rms(h, layer["attn_in"], spec.eps)
        q = _proj(x, layer, "q").view(bsz, t, spec.heads, spec.head_dim)
        k = _proj(x, layer, "k").view(bsz, t, spec.kv_heads, spec.head_dim)
        v = _proj(x, layer, "v").view(bsz, t, spec.kv_heads, spec.head_dim).transpose(1, 2)
        if "q_norm" in layer:
            q, k = _rms(q, layer["q_norm"], spec.eps), _rms(k, layer["k_norm"], spec.eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = rot[spec.layer_types[i]]
        q = q * cos + _rotate(q) * sin
        k = k * cos + _rotate(k) * sin
        k = torch.cat((past[i, 0], k), dim=2)
        v = torch.cat((past[i, 1], v), dim=2)
        presents.append(torch.stack((k, v)))
        scores = (q @ k.repeat_interleave(groups, dim=1).transpose(2, 3)) * spec.scale
        if spec.attn_softcap:
            scores = torch.tanh(scores / spec.attn_softcap) * spec.attn_softcap
        attn = torch.softmax(scores + biases[spec.windows[i]], dim=-1) @ v.repeat_interleave(groups, dim=1)
        out = _proj(attn.transpose(1, 2).reshape(bsz, t, spec.heads * spec.head_dim), layer, "o")
        h = h + (_rms(out, layer["attn_out"], spec.eps) if "attn_out" in layer else out)
        x = _rms(h, layer["mlp_in"], spec.eps)
        gate = _proj(x, layer, "gate")
        gate = torch.nn.functional.silu(gate) if spec.activation == "silu" else \
            torch.nn.functional.gelu(gate, approximate="tanh")
        out = _proj(gate * _proj(x, layer, "up"), layer, "down")
        h = h + (_rms(out, layer["mlp_out"], spec.eps) if "mlp_out" in layer else out)
    logits = torch.nn.functional.linear(_rms(h[:, -1, :], self.norm, spec.eps), self.head)
    if spec.final_softcap:
        logits = torch.tanh(logits / spec.final_softcap) * spec.final_softcap
    return logits, torch.stack(presents)


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


register_builder(Builder("openvino", export_onnx, graph="llmops-decoder-graph/2", opset=OPSET))  # graph keys the cache
