"""Build the ONNX Runtime decoder graph: a decoder family's maths (`graph_spec.py`) on ORT's fused
GroupQueryAttention, KV cache updated in place.

Why a second graph next to `decoder_graph.py` (which OpenVINO runs): that graph takes the whole past and
returns past + new as a fresh tensor, so every decode step copies the entire KV cache of the batch
(concatenation, GQA head repetition, output copy: a measured share of node time that grows with context;
benchmarks/README.md).
ORT's `com.microsoft.GroupQueryAttention` kernel reads a right-padded cache with per-row lengths (`seqlens_k`),
applies the rotary embedding itself and, when a step's `past_key` and `present_key` are the same buffer (IO
binding), writes only the new token's K/V into it. The graph is written node by node with `onnx.helper` from
the checkpoint's safetensors (no tracing), so every weight is a MatMul initializer in [in, out] layout —
which ONNX Runtime's int8 quantiser rewrites as-is — and the tied embedding is stored once: the head is a
`Gemm(transB=1)` over the embedding table itself (the traced graph stored it twice). The families' differences
map onto the kernel's own attributes where it has them (sliding window: `local_window_size`, which counts the
current token as transformers' window does; Gemma's `softcap`; a rotary table per layer type) and onto plain
nodes otherwise (biases, per-head q/k norms -- the CPU kernel has no q/k-norm prologue --, Gemma's sandwich
norms, embedding scale and final soft-capping).

Why not onnxruntime-genai's model builder, which writes GroupQueryAttention graphs for most of these families: its
runtime (`og.Generator`) owns the loop, sampling and KV cache of a batch fixed at creation, so it cannot serve
the scheduler's per-slot prefill/decode (requests joining and leaving, logit masks for structured output);
its graph alone returns logits for every prompt position, derives lengths from an attention mask and keeps
window-sized caches for sliding layers, so driving it would be a second engine plus a dependency pinned to
ONNX Runtime, with OpenVINO still needing our portable graph. Its greedy tokens matched ours on SmolLM2 (0.18,
2026-12); whether its graph runs faster is not settled (a busy shared host gave no conclusive timing).

Graph contract (per layer i: `past_key.i`/`past_value.i` in, `present_key.i`/`present_value.i` out):
    input_ids              int64 [B, T]
    seqlens_k              int32 [B]       tokens in each row's cache after this step, minus one
    total_sequence_length  int32 []        max over rows of (seqlens_k + 1)
    past_key.i, past_value.i   f32 [B, Hkv, S, D]   S = buffer capacity (0 for a fresh prefill)
    -> logits              f32 [B, V]      at the last new position
    -> present_key.i, present_value.i   f32 [B, Hkv, max(S, total), D]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from serving.engine_build import Builder, register_builder
from serving.engine_build.graph_spec import DecoderSpec, load_weights, read_spec

GRAPH_FILE = "decoder.onnx"
OPSET = 17
MS_OPSET = 1


class _Builder:
    """Collects initializers and nodes; `init`/`node` return the names they define."""

    def __init__(self) -> None:
        self.inits: list[Any] = []
        self.nodes: list[Any] = []

    def init(self, name: str, array) -> str:
        import numpy as np
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", outputs: list[str] | None = None,
             **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs or [output], name=f"{op}_{len(self.nodes)}",
                                           domain=domain, **attrs))
        return output

    def rms(self, x: str, weight, name: str, eps: float) -> str:
        return self.node("SimplifiedLayerNormalization", [x, self.init(name, weight)], f"{name}_out",
                         axis=-1, epsilon=eps, stash_type=1)

    def linear(self, x: str, name: str, weight, bias=None) -> str:
        """x @ weight.T (+ bias); the initializer is `name` (int8 keeps some of them float by this name)."""
        out = self.node("MatMul", [x, self.init(name, weight.T)], f"{name}_out")
        if bias is not None:
            out = self.node("Add", [out, self.init(f"{name}_bias", bias)], f"{name}_biased")
        return out


def _rope_tables(b: _Builder, spec: DecoderSpec) -> dict[str, tuple[str, str]]:
    """cos/sin [max_positions, D/2] per layer type, computed as transformers does (fp32 outer product, scaled)."""
    import torch

    out = {}
    for lt, (inv, scaling) in spec.rope.items():
        freqs = torch.outer(torch.arange(spec.max_positions, dtype=torch.int64).float(), inv)
        out[lt] = (b.init(f"cos_cache.{lt}", (freqs.cos() * scaling).numpy()),
                   b.init(f"sin_cache.{lt}", (freqs.sin() * scaling).numpy()))
    return out


def _concat_bias(layer: dict[str, Any], names: tuple[str, ...], sizes: list[int]):
    """One bias for a fused projection (zeros for the parts without one); None when no part has one."""
    import torch

    if not any(f"{n}_bias" in layer for n in names):
        return None
    return torch.cat([layer.get(f"{n}_bias", torch.zeros(size)) for n, size in zip(names, sizes, strict=True)]).numpy()


def _layer(b: _Builder, spec: DecoderSpec, i: int, layer: dict[str, Any], h: str, rope: tuple[str, str]) -> str:
    """One decoder layer on hidden state `h`; returns the new hidden state's name."""
    import numpy as np

    q_out, kv_out = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    x = b.rms(h, layer["attn_in"], f"ln1.{i}", spec.eps)
    qkv_w = np.concatenate([layer["q"].numpy(), layer["k"].numpy(), layer["v"].numpy()], axis=0)
    qkv = b.linear(x, f"qkv.{i}", qkv_w, _concat_bias(layer, ("q", "k", "v"), [q_out, kv_out, kv_out]))
    attrs: dict[str, Any] = {}
    query = [qkv, "", ""]  # packed QKV, unless the q/k norms need the heads apart
    if "q_norm" in layer:  # Qwen3, Gemma 3: RMSNorm per head before the rotary embedding (ORT's CPU kernel
        query = _qk_norm(b, spec, i, layer, qkv)  # has no q/k-norm prologue, so plain nodes do it)
    if spec.windows[i]:
        # ORT and transformers alike: key visible iff q_pos - k_pos < window (checked against eager in tests)
        attrs["local_window_size"] = spec.windows[i]
    if spec.attn_softcap:
        attrs["softcap"] = float(spec.attn_softcap)
    b.node("GroupQueryAttention",
           [*query, f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_sequence_length", *rope],
           f"attn.{i}", domain="com.microsoft", outputs=[f"attn.{i}", f"present_key.{i}", f"present_value.{i}"],
           num_heads=spec.heads, kv_num_heads=spec.kv_heads, do_rotary=1, rotary_interleaved=0,
           scale=spec.scale, **attrs)
    out = b.linear(f"attn.{i}", f"o.{i}", layer["o"].numpy(), _bias(layer, "o"))
    if "attn_out" in layer:
        out = b.rms(out, layer["attn_out"], f"ln1_post.{i}", spec.eps)
    h = b.node("Add", [h, out], f"h_attn.{i}")
    x = b.rms(h, layer["mlp_in"], f"ln2.{i}", spec.eps)
    gu_w = np.concatenate([layer["gate"].numpy(), layer["up"].numpy()], axis=0)
    gu = b.linear(x, f"gate_up.{i}", gu_w, _concat_bias(layer, ("gate", "up"), [spec.intermediate] * 2))
    b.node("Split", [gu, "mlp_split"], "", outputs=[f"gate.{i}", f"up.{i}"], axis=-1)
    if spec.activation == "silu":
        act = b.node("Mul", [f"gate.{i}", b.node("Sigmoid", [f"gate.{i}"], f"sig.{i}")], f"silu.{i}")
    else:  # gelu_tanh: ORT's FastGelu is exactly the tanh approximation
        act = b.node("FastGelu", [f"gate.{i}"], f"gelu.{i}", domain="com.microsoft")
    act = b.node("Mul", [act, f"up.{i}"], f"act.{i}")
    out = b.linear(act, f"down.{i}", layer["down"].numpy(), _bias(layer, "down"))
    if "mlp_out" in layer:
        out = b.rms(out, layer["mlp_out"], f"ln2_post.{i}", spec.eps)
    return b.node("Add", [h, out], f"h.{i}")


def _qk_norm(b: _Builder, spec: DecoderSpec, i: int, layer: dict[str, Any], qkv: str) -> list[str]:
    """Split packed QKV, RMS-normalise each head of q and k over head_dim; returns [query, key, value]."""
    import numpy as np

    q_out, kv_out = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    split = b.init(f"qkv_split.{i}", np.array([q_out, kv_out, kv_out], dtype=np.int64))
    b.node("Split", [qkv, split], "", outputs=[f"q.{i}", f"k.{i}", f"v.{i}"], axis=-1)
    out = []
    for name, heads, width in (("q", spec.heads, q_out), ("k", spec.kv_heads, kv_out)):
        per_head = b.init(f"{name}_heads_shape.{i}", np.array([0, 0, heads, spec.head_dim], dtype=np.int64))
        flat = b.init(f"{name}_flat_shape.{i}", np.array([0, 0, width], dtype=np.int64))
        x = b.node("Reshape", [f"{name}.{i}", per_head], f"{name}_heads.{i}")
        x = b.rms(x, layer[f"{name}_norm"].numpy(), f"{name}_norm.{i}", spec.eps)
        out.append(b.node("Reshape", [x, flat], f"{name}_normed.{i}"))
    return [*out, f"v.{i}"]


def _bias(layer: dict[str, Any], name: str):
    bias = layer.get(f"{name}_bias")
    return None if bias is None else bias.numpy()


def _head(b: _Builder, spec: DecoderSpec, weights: dict[str, Any], h: str, embed: str) -> None:
    """Last position -> final norm -> logits (the tied head reads the embedding table) -> soft-capping."""
    import numpy as np

    b.init("last_start", np.array([-1], dtype=np.int64))
    b.init("last_end", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    b.init("one_axis", np.array([1], dtype=np.int64))
    b.init("flat_shape", np.array([0, spec.hidden], dtype=np.int64))
    b.node("Slice", [h, "last_start", "last_end", "one_axis"], "h_last")
    x = b.node("Reshape", [b.rms("h_last", weights["norm"].numpy(), "norm", spec.eps), "flat_shape"], "h_flat")
    head = embed if weights["head"] is weights["embed"] else b.init("lm_head", weights["head"].numpy())
    if not spec.final_softcap:
        b.node("Gemm", [x, head], "logits", transB=1)
        return
    cap = b.init("final_softcap", np.array(spec.final_softcap, dtype=np.float32))
    raw = b.node("Gemm", [x, head], "raw_logits", transB=1)
    tanh = b.node("Tanh", [b.node("Div", [raw, cap], "capped")], "capped_tanh")
    b.node("Mul", [tanh, cap], "logits")


def build_graph(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write `out_dir/decoder.onnx` (+ `.data`) for the checkpoint; returns the graph's shape facts."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    t0 = time.perf_counter()
    spec = read_spec(model_dir)
    weights = load_weights(model_dir, spec)
    b = _Builder()
    rope = _rope_tables(b, spec)
    embed = b.init("embed", weights["embed"].numpy())
    b.init("mlp_split", np.array([spec.intermediate, spec.intermediate], dtype=np.int64))
    h = b.node("Gather", [embed, "input_ids"], "h0")
    if spec.embed_scale is not None:  # Gemma: the scale as an fp32 scalar, as transformers multiplies it
        h = b.node("Mul", [h, b.init("embed_scale", np.array(spec.embed_scale, dtype=np.float32))], "h0_scaled")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", spec.vocab])]
    for i in range(spec.layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT,
                                                        ["batch", spec.kv_heads, "past", spec.head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}.{i}", TensorProto.FLOAT,
                                                         ["batch", spec.kv_heads, "present", spec.head_dim]))
        layer = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"{i}.")}
        h = _layer(b, spec, i, layer, h, rope[spec.layer_types[i]])
    _head(b, spec, weights, h, embed)

    graph = helper.make_graph(b.nodes, "llmops-decoder-gqa", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", MS_OPSET)],
                              producer_name="llmops")
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out_dir / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=GRAPH_FILE + ".data", size_threshold=1024)
    return spec.shapes() | {"export_seconds": round(time.perf_counter() - t0, 2), "opset": OPSET,
                            "tied_head_stored_once": weights["head"] is weights["embed"]}


def _tune(engine_dir: Path, model_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    from serving.engine_build import threads

    return threads.measure(engine_dir, model_dir, manifest)


# bump graph when the graph changes, tuning when the thread measurement does: both key the cache
register_builder(Builder("onnxruntime", build_graph, graph="llmops-gqa-graph/2", opset=OPSET,
                         dtypes=("float32", "int8"), tune=_tune, tuning="threads/2"))
