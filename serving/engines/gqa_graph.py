"""Build the ONNX Runtime decoder graph: Llama maths on ORT's fused GroupQueryAttention, KV cache updated in place.

Why a second graph next to `decoder_graph.py` (which OpenVINO runs): that graph takes the whole past and
returns past + new as a fresh tensor, so every decode step copies the entire KV cache of the batch
(concatenation, GQA head repetition, output copy: measured 16% of node time at batch 8, growing with context).
ORT's `com.microsoft.GroupQueryAttention` kernel reads a right-padded cache with per-row lengths (`seqlens_k`),
applies the rotary embedding itself and, when a step's `past_key` and `present_key` are the same buffer (IO
binding), writes only the new token's K/V into it. The graph is written node by node with `onnx.helper` from
the checkpoint's safetensors (no tracing), so every weight is a MatMul initializer in [in, out] layout —
which ONNX Runtime's int8 quantiser rewrites as-is — and the tied embedding is stored once: the head is a
`Gemm(transB=1)` over the embedding table itself (the traced graph stored it twice).

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

from serving.engines.decoder_graph import _rope_theta, check_supported

GRAPH_FILE = "decoder.onnx"
OPSET = 17
MS_OPSET = 1


def _weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from llmops.errors import ModelError

    weights: dict[str, Any] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(str(f)))
    if not weights:
        raise ModelError(f"no safetensors weights in {model_dir}", "save the model with safe_serialization=True")
    return weights


def build_graph(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write `out_dir/decoder.onnx` (+ `.data`) for the checkpoint; returns the graph's shape facts."""
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from llmops.errors import ModelError

    t0 = time.perf_counter()
    cfg = check_supported(model_dir)
    raw = _weights(model_dir)
    n_layers, n_heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads", n_heads))
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_heads)
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    max_pos = int(cfg.get("max_position_embeddings", 2048))
    vocab = int(cfg["vocab_size"])

    def w(name: str) -> np.ndarray:
        if name not in raw:  # loaded through torch: numpy has no bfloat16
            raise ModelError(f"weight {name} missing from {model_dir}", "pass a complete (merged) checkpoint")
        return np.ascontiguousarray(raw[name].float().numpy())

    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{op}_{len(nodes)}", domain=domain, **attrs))

    # Rotary tables exactly as the reference computes them (fp32 inv_freq, fp32 outer product).
    inv = 1.0 / (_rope_theta(cfg) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.int64).float(), inv)
    init("cos_cache", freqs.cos().numpy())
    init("sin_cache", freqs.sin().numpy())
    embed = init("embed", w("model.embed_tokens.weight"))
    tied = "lm_head.weight" not in raw or bool(cfg.get("tie_word_embeddings"))
    head = embed if tied else init("lm_head", w("lm_head.weight"))
    init("last_start", np.array([-1], dtype=np.int64))
    init("last_end", np.array([np.iinfo(np.int64).max], dtype=np.int64))
    init("one_axis", np.array([1], dtype=np.int64))
    init("flat_shape", np.array([0, hidden], dtype=np.int64))
    inter = int(cfg["intermediate_size"])
    init("mlp_split", np.array([inter, inter], dtype=np.int64))

    node("Gather", [embed, "input_ids"], ["h0"])
    h = "h0"
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "new"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", vocab])]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT,
                                                        ["batch", n_kv, "past", head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}.{i}", TensorProto.FLOAT,
                                                         ["batch", n_kv, "present", head_dim]))
        ln1 = init(f"ln1.{i}", w(p + "input_layernorm.weight"))
        node("SimplifiedLayerNormalization", [h, ln1], [f"x1.{i}"], axis=-1, epsilon=eps, stash_type=1)
        qkv_w = np.concatenate([w(p + "self_attn.q_proj.weight"), w(p + "self_attn.k_proj.weight"),
                                w(p + "self_attn.v_proj.weight")], axis=0).T
        node("MatMul", [f"x1.{i}", init(f"qkv.{i}", qkv_w)], [f"qkv_out.{i}"])
        node("GroupQueryAttention",
             [f"qkv_out.{i}", "", "", f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_sequence_length",
              "cos_cache", "sin_cache"],
             [f"attn.{i}", f"present_key.{i}", f"present_value.{i}"], domain="com.microsoft",
             num_heads=n_heads, kv_num_heads=n_kv, do_rotary=1, rotary_interleaved=0, scale=head_dim ** -0.5)
        node("MatMul", [f"attn.{i}", init(f"o.{i}", w(p + "self_attn.o_proj.weight").T)], [f"o_out.{i}"])
        node("Add", [h, f"o_out.{i}"], [f"h_attn.{i}"])
        ln2 = init(f"ln2.{i}", w(p + "post_attention_layernorm.weight"))
        node("SimplifiedLayerNormalization", [f"h_attn.{i}", ln2], [f"x2.{i}"], axis=-1, epsilon=eps, stash_type=1)
        gu_w = np.concatenate([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")], axis=0).T
        node("MatMul", [f"x2.{i}", init(f"gate_up.{i}", gu_w)], [f"gu.{i}"])
        node("Split", [f"gu.{i}", "mlp_split"], [f"gate.{i}", f"up.{i}"], axis=-1)
        node("Sigmoid", [f"gate.{i}"], [f"sig.{i}"])
        node("Mul", [f"gate.{i}", f"sig.{i}"], [f"silu.{i}"])
        node("Mul", [f"silu.{i}", f"up.{i}"], [f"act.{i}"])
        node("MatMul", [f"act.{i}", init(f"down.{i}", w(p + "mlp.down_proj.weight").T)], [f"down_out.{i}"])
        node("Add", [f"h_attn.{i}", f"down_out.{i}"], [f"h.{i}"])
        h = f"h.{i}"
    node("Slice", [h, "last_start", "last_end", "one_axis"], ["h_last"])
    node("SimplifiedLayerNormalization", ["h_last", init("norm", w("model.norm.weight"))], ["h_norm"],
         axis=-1, epsilon=eps, stash_type=1)
    node("Reshape", ["h_norm", "flat_shape"], ["h_flat"])
    node("Gemm", ["h_flat", head], ["logits"], transB=1)

    graph = helper.make_graph(nodes, "llmops-decoder-gqa", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", MS_OPSET)],
                              producer_name="llmops")
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out_dir / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=GRAPH_FILE + ".data", size_threshold=1024)
    return {"layers": n_layers, "kv_heads": n_kv, "head_dim": head_dim, "vocab": vocab,
            "max_position_embeddings": max_pos, "export_seconds": round(time.perf_counter() - t0, 2),
            "opset": OPSET, "tied_head_stored_once": tied}
