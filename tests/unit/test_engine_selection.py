"""`--engine auto` picks the fastest engine measured on this host (issue 16 part 2), and the int8 engine's
quantisation settings follow the host's ISA flags (7-bit weights on x86 without VNNI).

The ranking test builds real fp32 and int8 ONNX Runtime engines of the tiny model through the compile_engine
path (equivalence, quality gate, short benchmark recorded in each manifest); the figures are then rewritten
with store.record_benchmark, the product's own API, so each ranking case has known measurements."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llmops.settings import Settings
from serving.engine_build import quantize, store
from serving.engines import built

QUICK = ["engine.kinds=[cpu,cpu-int8]", "engine.quantized.records=2", "engine.quantized.new_tokens=4",
         "engine.quantized.max_perplexity_increase=100", "engine.quantized.max_rouge_l_drop=1",
         "engine.equivalence.prompts=2", "engine.equivalence.new_tokens=4",
         "engine.benchmark.batch_sizes=[1,2]", "engine.benchmark.new_tokens=3"]


@pytest.mark.parametrize(("flags", "machine", "weights"), [
    ({"avx2", "fma"}, "x86_64", "u8u8"),  # AVX2-only laptop / cloud CPU: u8s8 saturates, u8 weights cannot
    ({"avx2", "avx512f", "avx512bw"}, "x86_64", "u8u8"),  # Skylake-X: AVX-512 but no VNNI, same saturation
    ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "s8+q8"),  # Cascade Lake+, Zen 4+ (this host)
    ({"avx2", "avx_vnni"}, "x86_64", "s8+q8"),  # Alder Lake: VEX-encoded VNNI
    ({"avx2", "amx_int8", "amx_tile"}, "x86_64", "s8+q8"),
    ({"asimd", "asimddp"}, "aarch64", "s8"),  # Arm: int8 dot products accumulate in int32
])
def test_quantisation_settings_follow_the_host_flags(flags: set[str], machine: str, weights: str) -> None:
    got = quantize.settings_for(flags, machine)
    assert got["weights"] == weights and got["why"]
    assert got["weight_type"] == ("QUInt8" if weights == "u8u8" else "QInt8") and got["reduce_range"] is False
    assert {k: got[k] for k in ("per_channel", "op_types", "keep_float")} == \
        {k: quantize.CONFIG[k] for k in ("per_channel", "op_types", "keep_float")}  # the measured recipe is kept
    if weights == "s8+q8":  # then the projections s8 keeps float as 8-bit weight blocks
        assert got["then"]["method"] == quantize.NBITS["method"] and got["then"]["bits"] == {"*": 8}
    forced = quantize.settings_for(flags, machine, weights="s8-7bit")
    assert forced["reduce_range"] is True and "engine.quantized.weights" in forced["why"]
    from llmops.errors import LlmopsError

    with pytest.raises(LlmopsError, match="weights setting"):
        quantize.settings_for(flags, machine, weights="int4")


def test_the_settings_are_part_of_the_build_config_and_its_hash() -> None:
    avx2 = store.cpu_build_config("onnxruntime", "int8", quantize.settings_for({"avx2"}, "x86_64"))
    vnni = store.cpu_build_config("onnxruntime", "int8", quantize.settings_for({"avx512_vnni"}, "x86_64"))
    assert avx2["quantization"]["weight_type"] == "QUInt8" and vnni["quantization"]["weights"] == "s8+q8"
    assert store.short_hash(avx2) != store.short_hash(vnni)


def test_auto_rank_by_must_name_a_benchmark_figure(settings: Settings) -> None:
    from llmops.errors import LlmopsError

    assert settings.params(["serve.auto_rank_by=batch8_tokens_per_s"]).serve.auto_rank_by == "batch8_tokens_per_s"
    with pytest.raises(LlmopsError, match="auto_rank_by"):
        settings.params(["serve.auto_rank_by=fastest"])


def _figures(tps1: float, tps2: float) -> dict[str, float]:
    return {"batch1_tokens_per_s": tps1, "batch1_ttft_s": 0.01, "batch2_tokens_per_s": tps2, "batch2_ttft_s": 0.02}


def test_auto_picks_the_fastest_measured_engine_and_says_why(settings: Settings, tiny_model_dir: Path) -> None:
    from components.compile_engine.logic import build_engines
    from serving.engines import load_engine, select_engine

    result = build_engines(settings, settings.params(QUICK), tiny_model_dir)
    fp32, q8 = result["cpu"], result["cpu-int8"]
    assert not fp32.get("skipped") and not q8.get("skipped")
    for r, gate in ((fp32, "equivalence"), (q8, "quality gate")):  # the build recorded its speed, with the host
        bench = built.read_manifest(Path(r["engine_dir"]))["benchmark"]
        assert bench["passed"] == gate and bench["figures"]["batch1_tokens_per_s"] > 0
        assert bench["host"] == built.host_summary()
    fp32_dir, q8_dir = Path(fp32["engine_dir"]), Path(q8["engine_dir"])

    store.record_benchmark(q8_dir, _figures(61.0, 150.0), passed="quality gate")
    store.record_benchmark(fp32_dir, _figures(30.0, 170.0), passed="equivalence")
    sel = select_engine("auto", tiny_model_dir)
    assert sel.name == "onnxruntime-int8"
    assert sel.reason.startswith("onnxruntime-int8: fastest measured on this host, 61 batch 1 tok/s vs onnxruntime 30")
    assert "openvino no openvino engine built" in sel.reason
    # ranked by the figure serve.auto_rank_by names: at batch 2 fp32 is the faster here
    assert select_engine("auto", tiny_model_dir, "batch2_tokens_per_s").name == "onnxruntime"

    store.record_benchmark(q8_dir, _figures(20.0, 40.0), passed="quality gate")  # int8 slower on this host
    engine = load_engine("auto", tiny_model_dir, settings.params().serve)
    assert engine.name == "onnxruntime" and engine.info()["dtype"] == "float32"
    info = engine.info()
    assert info["selection"]["name"] == "onnxruntime" and "vs onnxruntime-int8 20" in info["selection"]["reason"]
    by_name = {c["name"]: c for c in info["selection"]["candidates"]}
    assert by_name["onnxruntime-int8"]["batch1_tokens_per_s"] == 20.0 and not by_name["openvino"]["available"]

    # Measured on another machine (a store shared between hosts): not a measurement here.
    manifest = built.read_manifest(fp32_dir)
    manifest["benchmark"]["host"] = {**manifest["benchmark"]["host"], "cpu": "Some Other CPU"}
    (fp32_dir / built.MANIFEST).write_text(json.dumps(manifest))
    sel = select_engine("auto", tiny_model_dir)
    assert sel.name == "onnxruntime-int8" and "onnxruntime not measured here" in sel.reason

    # Old manifests, no figures anywhere: the fixed preference decides, and the reason says so.
    for d in (fp32_dir, q8_dir):
        manifest = built.read_manifest(d)
        manifest.pop("benchmark")
        (d / built.MANIFEST).write_text(json.dumps(manifest))
        for name in (built.CHECKS_FILE, built.QUALITY_FILE):
            if (d / name).is_file():
                data = json.loads((d / name).read_text())
                data.pop("benchmark", None)
                (d / name).write_text(json.dumps(data))
    sel = select_engine("auto", tiny_model_dir)
    assert sel.name == "onnxruntime-int8" and "no engine has a benchmark recorded on this host" in sel.reason
    assert select_engine("onnxruntime", tiny_model_dir).reason.startswith("onnxruntime: asked for by name")


def test_eager_is_the_fallback_and_the_server_shows_the_choice(settings: Settings, tiny_model_dir: Path) -> None:
    from starlette.testclient import TestClient

    from serving.engines import load_engine
    from serving.model_source import ResolvedModel
    from serving.server import build_app

    params = settings.params(["serve.max_concurrent=1", "serve.max_len=64"]).serve
    engine = load_engine("auto", tiny_model_dir, params)  # a fresh store: nothing built for these weights
    assert engine.name == "eager"
    resolved = ResolvedModel(name="tiny", version="1", model_dir=tiny_model_dir, ref="tiny/1", source="local")
    with TestClient(build_app(engine, resolved, params)) as client:
        deadline = time.monotonic() + 60  # let warmup finish: the app's shutdown expects a started scheduler
        while (resp := client.get("/ready")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        reason = client.get("/v1/models").json()["data"][0]["engine_selection"]
        assert reason.startswith("eager: no built engine can serve this model here")
        selection = resp.json()["engine"]["selection"]
        assert selection["requested"] == "auto" and resp.json()["engine"]["kind"] == "eager"
        assert selection["reason"].startswith("eager: no built engine can serve this model here")
        assert "onnxruntime no onnxruntime engine built" in selection["reason"]


def test_engine_list_says_what_auto_would_pick(settings: Settings, tiny_model_dir: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["engine", "list", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["engines"] == [] and payload["auto"]["name"] == "eager"
    assert payload["auto"]["reason"].startswith("eager: no built engine can serve this model here")
    bad = CliRunner().invoke(app, ["engine", "build", str(tiny_model_dir), "--kind", "gpu-int4"])
    assert bad.exit_code != 0 and "cpu-int8" in bad.output  # the int8 engine can be built on its own
