"""Registers the built CPU engines (ONNX Runtime fp32 and int8, OpenVINO) with the engine registry.

An engine is available for a checkpoint only when `llmops engine build` (or the compile_engine step) has
built one for exactly these weights, this runtime version and this CPU; the probe says so otherwise. An int8
engine is offered only once its quality gate (serving/quality_gate.py) passed within params.yaml tolerances.
All built CPU engines are one class for `--engine auto`: it ranks them by the short benchmark the build
recorded on this host (engine_store.record_benchmark). PREFERENCE only orders engines built before that was
recorded; it follows benchmarks/README.md as measured on one AVX-512 host (int8, then fp32, then OpenVINO).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from serving.engines import register_engine

CPU_CLASS = 20  # built CPU engines: above eager (0), below a GPU engine (cuda-graph, 40)
# Fallback order for engines with no benchmark recorded on this host (benchmarks/README.md, AVX-512 host)
PREFERENCE = {"onnxruntime-int8": 3, "onnxruntime": 2, "openvino": 1}


@functools.lru_cache(maxsize=8)
def _digest(model_dir: str, mtime_ns: int) -> str:
    from llmops.modeling.hashing import weights_digest

    return weights_digest(Path(model_dir))


def find_built(model_dir: Path, name: str) -> dict[str, Any] | None:
    """The newest stored engine called `name` (runtime, or runtime-int8) built from these weights for this CPU
    and runtime version."""
    from llmops.settings import get_settings
    from serving import engine_store

    model_dir = Path(model_dir)
    digest = _digest(str(model_dir.resolve()), (model_dir / "config.json").stat().st_mtime_ns)
    runtime = name.split("-")[0]
    version = engine_store.runtime_version(runtime)
    hardware = engine_store.cpu_hardware()
    for m in engine_store.list_engines(get_settings(), digest):
        if m.get("engine_name", m["runtime"]) == name and m.get("runtime_version") == version \
                and m.get("hardware") == hardware:
            return m
    return None


def gate_failure(manifest: dict[str, Any]) -> str | None:
    """Why a quantised engine may not serve (no gate result, or a breached tolerance); None for fp32 or passed."""
    from serving.engines import int8

    if manifest.get("build_config", {}).get("dtype", "float32") == "float32":
        return None
    path = Path(manifest["engine_dir"]) / int8.QUALITY_FILE
    if not path.is_file():
        return "quality gate not run for this int8 engine (run `llmops engine build MODEL --kind cpu-int8`)"
    gate = json.loads(path.read_text())
    if not gate.get("passed"):
        return "int8 engine breached its quality tolerance: " + "; ".join(gate.get("breaches") or ["failed"])
    return None


def _probe(name: str):
    def probe(model_dir: Path) -> str | None:
        manifest = find_built(model_dir, name)
        if manifest is None:
            return f"no {name} engine built for these weights on this CPU (run `llmops engine build MODEL`)"
        return gate_failure(manifest)

    return probe


def _speed(name: str):
    def speed(model_dir: Path) -> dict[str, Any] | None:
        from serving import engine_store

        manifest = find_built(model_dir, name)
        bench = engine_store.recorded_benchmark(manifest) if manifest else None
        return bench if engine_store.measured_here(bench) else None

    return speed


def _factory(name: str):
    def factory(model_dir: Path, params):
        from llmops.errors import LlmopsError
        from serving import engine_store

        manifest = find_built(model_dir, name)
        if manifest is None:
            raise LlmopsError(f"no {name} engine built for {model_dir}", "run `llmops engine build MODEL`")
        if (why := gate_failure(manifest)) is not None:
            raise LlmopsError(f"{name} cannot serve {model_dir}: {why}", "serve with --engine auto or onnxruntime")
        return engine_store.load_engine(manifest, model_dir, max_slots=params.max_concurrent,
                                        max_len=params.max_len, threads=params.threads or None)

    return factory


for _name, _preference in PREFERENCE.items():
    register_engine(_name, _factory(_name), priority=CPU_CLASS, probe=_probe(_name), speed=_speed(_name),
                    preference=_preference)
