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
    assert manifest["dtype"] == "int8" and manifest["quantization"]["weight_type"] in ("QInt8", "QUInt8")  # per host
    graph = (Path(r["engine_dir"]) / "decoder.onnx").read_bytes()
    assert b"MatMulInteger" in graph or b"DynamicQuantizeMatMul" in graph  # really quantised
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
