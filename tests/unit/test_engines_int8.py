"""The int8 CPU engine and its quality gate on the tiny model: quantised from the fp32 graph, judged against
eager on held-out records (agreement, answer perplexity, ROUGE-L), and offered by `--engine auto` only when
within params.yaml `engine.quantized` tolerances."""

from __future__ import annotations

import json
from pathlib import Path

from llmops.settings import Settings

QUICK = ["engine.kinds=[cpu-int8]", "engine.quantized.records=4", "engine.quantized.new_tokens=8",
         "engine.benchmark.batch_sizes=[1]", "engine.benchmark.new_tokens=4"]


def _choices(model_dir: Path) -> dict[str, str | None]:
    from serving.engines import available_engines

    return {c.name: c.reason for c in available_engines(model_dir)}


def test_int8_engine_gated_then_offered_and_a_breach_keeps_it_out(settings: Settings, tiny_model_dir: Path) -> None:
    from components.compile_engine.logic import build_engines, version_tags
    from serving.engines import load_engine, pick_engine

    assert "no onnxruntime-int8 engine built" in (_choices(tiny_model_dir)["onnxruntime-int8"] or "")
    # Generous tolerances: the gate passes, the engine is int8 and auto picks it (it is the fastest CPU engine).
    result = build_engines(settings, settings.params([*QUICK, "engine.quantized.max_perplexity_increase=100",
                                                      "engine.quantized.max_rouge_l_drop=1"]), tiny_model_dir)
    r = result["cpu-int8"]
    assert not r.get("skipped") and r["engine_name"] == "onnxruntime-int8"
    q = r["quality"]
    assert q["passed"] and q["records"] == 4 and q["answer_tokens"] > 0
    assert q["perplexity_eager"] > 1 and q["perplexity_engine"] > 1 and 0 <= q["agreement"]["identical_rate"] <= 1
    assert abs(q["perplexity_increase"] - (q["perplexity_engine"] / q["perplexity_eager"] - 1)) < 1e-9
    manifest = r["build_config"]
    assert manifest["dtype"] == "int8" and manifest["quantization"]["weights"] in ("s8+q8", "s8", "u8u8")  # per host
    graph = (Path(r["engine_dir"]) / "decoder.onnx").read_bytes()
    assert b"MatMulInteger" in graph or b"DynamicQuantizeMatMul" in graph  # really quantised
    assert r["threads"]["intra_op"] >= 1 and r["threads"]["ms_per_token"]  # timed on this host at build
    tags = version_tags(result, {})
    assert tags["engine.cpu-int8.quality.passed"] == "true" and "engine.cpu-int8.quality.rouge_l_drop" in tags
    assert _choices(tiny_model_dir)["onnxruntime-int8"] is None
    assert pick_engine("auto", tiny_model_dir) == "onnxruntime-int8"
    engine = load_engine("auto", tiny_model_dir, settings.params().serve)
    assert engine.info()["dtype"] == "int8"
    engine.warmup()

    # A tolerance the engine cannot meet: the gate re-runs (its config changed), records the breach, and the
    # engine is no longer offered, by auto or by name.
    result = build_engines(settings, settings.params([*QUICK, "engine.quantized.max_perplexity_increase=-0.5"]),
                           tiny_model_dir)
    r = result["cpu-int8"]
    assert r["skipped"] and r["rejected"] and "answer perplexity" in r["reason"]
    assert version_tags(result, {})["engine.cpu-int8"].startswith("rejected:")
    gate = json.loads((engine.engine_dir / "quality.json").read_text())
    assert gate["passed"] is False
    assert "breached its quality tolerance" in (_choices(tiny_model_dir)["onnxruntime-int8"] or "")
    assert pick_engine("auto", tiny_model_dir) != "onnxruntime-int8"


def test_weight_only_recipe_quantises_each_projection_and_the_head_to_its_width(tmp_path: Path,
                                                                                tiny_model_dir: Path) -> None:
    """q4-mlp: gate/up as 4-bit MatMulNBits, every other projection and the untied head 8-bit, the embedding's
    Gather fp32; the engine serves it through the slot API, close to the fp32 engine; recipes key the cache."""
    import numpy as np
    import onnx

    from serving.engine_build import quantize, store
    from serving.engines import built

    state = Settings(state_dir=tmp_path / "state")
    q4 = quantize.settings_for(set(), "x86_64", weights="q4-mlp")
    r = store.build_cpu_engine(state, tiny_model_dir, "onnxruntime", dtype="int8", quantization=q4)
    graph = onnx.load(str(Path(r["engine_dir"]) / "decoder.onnx"), load_external_data=False).graph
    bits = {n.input[1].rsplit("_Q", 1)[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in graph.node if n.op_type == "MatMulNBits"}
    assert bits and not any(n.op_type in ("MatMul", "Gemm") for n in graph.node)  # nothing left in fp32
    assert {w for w, b in bits.items() if b == 4} == {w for w in bits if w.startswith("gate_up.")}
    assert bits["lm_head"] == 8 and any(n.op_type == "Gather" and n.input[0] == "embed" for n in graph.node)
    fp32 = store.build_cpu_engine(state, tiny_model_dir, "onnxruntime")
    assert r["cache_key"] != fp32["cache_key"] and r["threads"]["intra_op"] >= 1
    q8 = store.cpu_build_config("onnxruntime", "int8", quantize.settings_for(set(), "x86_64", weights="q8"))
    assert store.short_hash(q8) != store.short_hash(r["build_config"])
    engines = [built.load_built(m, tiny_model_dir, max_slots=2) for m in (fp32, r)]
    prompt = [1, 200, 300, 400, 500]
    first = [np.asarray(e.prefill(0, prompt)) for e in engines]
    assert np.corrcoef(*first)[0, 1] > 0.95
    step = [np.asarray(e.decode([0], [int(first[0].argmax())])[0]) for e in engines]
    assert np.isfinite(step[1]).all() and np.corrcoef(*step)[0, 1] > 0.95
