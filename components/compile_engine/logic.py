"""compile_engine step: build the inference engine(s) for a registered model version and attach them.

For each kind in `engine.kinds` (params.yaml):
- `cpu`: the measured CPU engine (`engine.cpu_runtime`) is built or found in the engine cache, checked
  against eager transformers (greedy tokens on the fixed prompts, gated by `engine.equivalence`), timed
  (tokens/s and TTFT at `engine.benchmark.batch_sizes`), and attached to the version: engine files as
  MLflow artifacts of this step's run, figures as version tags `engine.cpu.*`. An engine that fails
  equivalence is removed from the cache (so no server can pick it) and fails the step.
- `cpu-int8`: the int8 ONNX Runtime engine, judged by its quality gate (agreement, held-out answer perplexity
  and ROUGE-L vs eager, tolerances in `engine.quantized`); a breach keeps it out of serving and is tagged.
- `tensorrt-llm`: its preflight runs; where it passes (the TRT-LLM image on a GPU node) the build runs in a
  subprocess of that image's Python, otherwise the version gets `engine.tensorrt-llm = skipped: <reason>`
  and nothing is written.
This module never imports KFP: the KFP wrapper imports it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llmops.errors import ModelError
from llmops.params import Params
from llmops.settings import Settings


def version_model_dir(settings: Settings, name: str, version: str) -> Path:
    """Local merged checkpoint (weights + config + tokenizer) of a registered version, downloaded once and keyed
    by the version's identity (see `serving.model_source`), so an engine is never built from another
    registry's `name/version`."""
    from serving.model_source import resolve_model

    return resolve_model(settings, f"{name}/{version}").model_dir


def _cpu_engine(settings: Settings, params: Params, model_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from serving.engine_build import checks, store
    from serving.engines import built

    cfg = params.engine
    manifest = store.build_cpu_engine(
        settings, model_dir, cfg.cpu_runtime,
        progress=lambda m: print(f"[compile_engine] {m}", file=sys.stderr, flush=True))  # stdout: --json
    checks_path = Path(manifest["engine_dir"]) / built.CHECKS_FILE
    wanted = {"equivalence": cfg.equivalence.model_dump(), "benchmark": cfg.benchmark.model_dump(),
              "prompts": cfg.prompts}
    if manifest["cache_hit"] and checks_path.is_file():
        stored = json.loads(checks_path.read_text())
        if stored.get("config") == wanted:
            if not (manifest.get("benchmark") or {}).get("figures"):  # built before the manifest kept it
                store.record_benchmark(manifest["engine_dir"], stored["benchmark"], passed="equivalence")
            return manifest | {"equivalence": stored["equivalence"], "benchmark": stored["benchmark"],
                               "checks_reused": True}
    slots = max([*cfg.benchmark.batch_sizes, cfg.equivalence.prompts or len(cfg.prompts), 1])
    engine = built.load_built(manifest, model_dir, max_slots=slots)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    equivalence = checks.check_equivalence(engine, model, engine.tokenizer, cfg)
    del model
    if not equivalence["passed"]:
        # Rejected, not attached: removed from the store so no server can pick it (they fall back to eager).
        # The version records why; the pipeline goes on (like a TensorRT-LLM skip), the model itself is fine.
        shutil.rmtree(manifest["engine_dir"], ignore_errors=True)
        reason = (f"{manifest['runtime']} engine failed equivalence: {equivalence['identical']}/"
                  f"{equivalence['prompts']} prompts identical over {equivalence['new_tokens']} greedy tokens "
                  f"(need {equivalence['min_identical_rate']:.0%}); engine removed, serve with eager")
        return {"kind": "cpu", "skipped": True, "rejected": True, "reason": reason,
                "record": f"engine=cpu rejected: {reason}", "equivalence": equivalence}
    benchmark = checks.short_benchmark(engine, engine.tokenizer, cfg)
    benchmark["eager_batch1_tokens_per_s"] = round(equivalence["eager_batch1_tokens_per_s"], 2)
    checks_path.write_text(json.dumps({"config": wanted, "equivalence": equivalence, "benchmark": benchmark},
                                      indent=2))
    # in the manifest, with the host: what `--engine auto` ranks the built engines by on this machine
    store.record_benchmark(manifest["engine_dir"], benchmark, passed="equivalence")
    return manifest | {"equivalence": equivalence, "benchmark": benchmark, "checks_reused": False}


def _cpu_int8_engine(settings: Settings, params: Params, model_dir: Path) -> dict[str, Any]:
    """The int8 ONNX Runtime engine, gated on held-out quality vs eager (serving/engine_build/gate.py). A breach keeps
    the engine on disk with its figures but out of serving (the registry's probe reads the gate's file)."""
    import torch
    from transformers import AutoModelForCausalLM

    from serving.engine_build import checks, gate, quantize, store
    from serving.engines import built

    cfg = params.engine
    manifest = store.build_cpu_engine(
        settings, model_dir, quantize.RUNTIME, dtype=quantize.DTYPE, int8_weights=cfg.quantized.weights,
        progress=lambda m: print(f"[compile_engine] {m}", file=sys.stderr, flush=True))
    gate_path = Path(manifest["engine_dir"]) / built.QUALITY_FILE
    wanted = {"quantized": cfg.quantized.model_dump(), "benchmark": cfg.benchmark.model_dump(),
              "prompts": cfg.prompts}
    result = json.loads(gate_path.read_text()) if gate_path.is_file() else {}
    if result.get("config") != wanted:
        slots = max([*cfg.benchmark.batch_sizes, 8])
        engine = built.load_built(manifest, model_dir, max_slots=slots)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        records = gate.heldout_records(settings.project_dir, cfg.quantized)
        eos = set(engine.eos_token_ids) | set(checks.model_eos_ids(model))
        quality = gate.quality_gate(engine, model, engine.tokenizer, records, cfg.quantized, eos)
        del model
        benchmark = checks.short_benchmark(engine, engine.tokenizer, cfg)
        result = {"config": wanted, **quality, "benchmark": benchmark}
        gate_path.write_text(json.dumps(result, indent=2))
    quality = {k: v for k, v in result.items() if k not in ("config", "benchmark")}
    if not result["passed"]:
        reason = (f"{manifest['engine_name']} engine breached its quality tolerance "
                  f"({'; '.join(result['breaches'])}); kept out of serving")
        return {"kind": "cpu-int8", "skipped": True, "rejected": True, "reason": reason,
                "record": f"engine=cpu-int8 rejected: {reason}", "quality": quality,
                "quantization": manifest["build_config"].get("quantization")}
    recorded = manifest.get("benchmark") or {}
    if recorded.get("figures") != result["benchmark"]:  # passed: its speed here ranks it for `--engine auto`
        store.record_benchmark(manifest["engine_dir"], result["benchmark"], passed="quality gate")
    return manifest | {"quality": quality, "benchmark": result["benchmark"]}


def _trtllm_engine(settings: Settings, params: Params, model_dir: Path) -> dict[str, Any]:
    from llmops.modeling.hashing import weights_digest
    from serving.engine_build import trtllm as trt

    cfg = params.engine.trtllm
    pf = trt.preflight(cfg.min_compute_capability)
    if not pf.ok:
        return {"kind": trt.KIND, "skipped": True, "reason": "; ".join(pf.reasons), "record": pf.skip_record()}
    config = trt.TrtllmBuildConfig.from_params(cfg)
    digest = weights_digest(model_dir)
    key = trt.cache_key(digest, pf.trtllm_version or "?", pf.capability or (0, 0), config)
    out = settings.engines_dir / f"{trt.KIND}-{key}"
    if (out / trt.MANIFEST).is_file():
        return json.loads((out / trt.MANIFEST).read_text()) | {"cache_hit": True, "engine_dir": str(out)}
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "serving.engine_build.trtllm", "build", "--model-dir", str(model_dir),
           "--out", str(out), "--weights-digest", digest, "--config", json.dumps(config.to_dict()),
           "--min-compute-capability", str(cfg.min_compute_capability)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=settings.project_dir)
    if done.returncode != 0:
        raise ModelError(f"TensorRT-LLM build failed: {done.stderr.strip().splitlines()[-1:]}",
                         f"rerun `{' '.join(cmd)}` in the TRT-LLM image to see the whole log")
    return json.loads(done.stdout) | {"cache_hit": False, "engine_dir": str(out)}


def _unsupported(kind: str, model_dir: Path) -> dict[str, Any] | None:
    """A skip record when the CPU graphs cannot express this model (another family, partial rotary...): the
    model itself is fine and serves with the eager engine, so the step goes on, as a TensorRT-LLM skip does."""
    if kind not in ("cpu", "cpu-int8"):
        return None
    from serving.engine_build.graph_spec import read_spec

    try:
        read_spec(model_dir)
    except ModelError as exc:
        reason = str(exc)
        return {"kind": kind, "skipped": True, "reason": reason, "record": f"engine={kind} skipped: {reason}"}
    return None


def build_engines(settings: Settings, params: Params, model_dir: Path) -> dict[str, dict[str, Any]]:
    """{kind: result} for every kind in `engine.kinds`: a checked CPU engine, a TRT-LLM engine or its skip."""
    builders = {"cpu": _cpu_engine, "cpu-int8": _cpu_int8_engine, "tensorrt-llm": _trtllm_engine}
    return {kind: _unsupported(kind, model_dir) or builders[kind](settings, params, model_dir)
            for kind in params.engine.kinds}


def version_tags(results: dict[str, dict[str, Any]], artifact_uris: dict[str, str]) -> dict[str, str]:
    """The tags a model version carries for its engines (what `llmops engine list` and the server read)."""
    tags: dict[str, str] = {}
    for kind, r in results.items():
        p = f"engine.{kind}"
        quality = r.get("quality") or {}
        if quality:
            for key in ("perplexity_eager", "perplexity_engine", "perplexity_increase", "rouge_l_eager",
                        "rouge_l_engine", "rouge_l_drop"):
                tags[f"{p}.quality.{key}"] = f"{quality[key]:.4g}"
            tags[f"{p}.quality.agreement.identical_rate"] = f"{quality['agreement']['identical_rate']:.4g}"
            tags[f"{p}.quality.passed"] = str(bool(quality["passed"])).lower()
        quant = r.get("quantization") or (r.get("build_config") or {}).get("quantization")
        if quant:  # the per-host settings it was quantised with (serving/engine_build/quantize.py settings_for)
            tags[f"{p}.quantization.weights"] = str(quant.get("weights") or quant.get("weight_type"))
            tags[f"{p}.quantization.reduce_range"] = str(bool(quant.get("reduce_range"))).lower()
        if r.get("skipped"):
            tags[p] = f"{'rejected' if r.get('rejected') else 'skipped'}: {r['reason']}"
            if r.get("equivalence"):
                tags[f"{p}.equivalence.identical"] = f"{r['equivalence']['identical']}/{r['equivalence']['prompts']}"
            continue
        tags[p] = r["name"]
        for key in ("runtime", "runtime_version", "hardware", "build_config_hash", "cache_key", "build_seconds",
                    "weights_digest"):
            if r.get(key) is not None:
                tags[f"{p}.{key}"] = str(r[key])
        tags[f"{p}.cache_hit"] = str(bool(r.get("cache_hit"))).lower()
        eq = r.get("equivalence") or {}
        if eq:
            tags[f"{p}.equivalence.identical_rate"] = f"{eq['identical_rate']:.4g}"
            tags[f"{p}.equivalence.identical"] = f"{eq['identical']}/{eq['prompts']}"
            tags[f"{p}.equivalence.new_tokens"] = str(eq["new_tokens"])
        for key, value in (r.get("benchmark") or {}).items():
            tags[f"{p}.bench.{key}"] = f"{value:.4g}"
        if kind in artifact_uris:
            tags[f"{p}.artifact_uri"] = artifact_uris[kind]
    return tags


def compile_engines(settings: Settings, params: Params, *, name: str, version: str,
                    parent_run_id: str | None = None, model_dir: Path | None = None) -> dict[str, Any]:
    """Build every configured engine kind for `name/version`; returns {kind: result} plus `run_id`, `tags`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from llmops.tracking import step_run

    t0 = time.perf_counter()
    model_dir = Path(model_dir) if model_dir else version_model_dir(settings, name, version)
    artifact_uris: dict[str, str] = {}
    with step_run(settings, parent_run_id, "compile_engine") as run_id:
        mlflow.set_tags({"model.name": name, "model.version": str(version)})
        results = build_engines(settings, params, model_dir)
        for kind, r in results.items():
            if r.get("skipped"):
                print(f"[compile_engine] {r['record']}", file=sys.stderr, flush=True)
                continue
            if params.engine.log_artifacts:
                path = f"engines/{r['name']}"
                mlflow.log_artifacts(r["engine_dir"], artifact_path=path)
                artifact_uris[kind] = f"runs:/{run_id}/{path}"
        tags = version_tags(results, artifact_uris)
        mlflow.set_tags(tags)
        metrics = {f"{kind}.{k}": float(v) for kind, r in results.items()
                   for k, v in (r.get("benchmark") or {}).items()}
        metrics |= {f"{kind}.build_seconds": float(r["build_seconds"]) for kind, r in results.items()
                    if r.get("build_seconds") is not None}
        if metrics:
            mlflow.log_metrics(metrics)
    client = MlflowClient(settings.tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return {"name": name, "version": str(version), "run_id": run_id, "engines": results, "tags": tags,
            "model_dir": str(model_dir), "seconds": round(time.perf_counter() - t0, 2)}
