"""Registers the built CPU engines (OpenVINO, ONNX Runtime) with the engine registry.

An engine is available for a checkpoint only when `llmops engine build` (or the compile_engine step) has
built one for exactly these weights, this runtime version and this CPU; the probe says so otherwise.
Priorities follow the measurement in benchmarks/README.md (ONNX Runtime fastest here, then OpenVINO).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from serving.engines import register_engine

PRIORITY = {"onnxruntime": 20, "openvino": 15}


@functools.lru_cache(maxsize=8)
def _digest(model_dir: str, mtime_ns: int) -> str:
    from llmops.modeling.hashing import weights_digest

    return weights_digest(Path(model_dir))


def find_built(model_dir: Path, runtime: str) -> dict[str, Any] | None:
    """The newest stored engine of `runtime` built from these weights for this CPU and runtime version."""
    from llmops.settings import get_settings
    from serving import engine_store

    model_dir = Path(model_dir)
    digest = _digest(str(model_dir.resolve()), (model_dir / "config.json").stat().st_mtime_ns)
    version = engine_store.runtime_version(runtime)
    hardware = engine_store.cpu_hardware()
    for m in engine_store.list_engines(get_settings(), digest):
        if m["runtime"] == runtime and m.get("runtime_version") == version and m.get("hardware") == hardware:
            return m
    return None


def _probe(runtime: str):
    def probe(model_dir: Path) -> str | None:
        if find_built(model_dir, runtime) is None:
            return f"no {runtime} engine built for these weights on this CPU (run `llmops engine build MODEL`)"
        return None

    return probe


def _factory(runtime: str):
    def factory(model_dir: Path, params):
        from serving import engine_store

        manifest = find_built(model_dir, runtime)
        if manifest is None:
            from llmops.errors import LlmopsError

            raise LlmopsError(f"no {runtime} engine built for {model_dir}", "run `llmops engine build MODEL`")
        return engine_store.load_engine(manifest, model_dir, max_slots=params.max_concurrent,
                                        max_len=params.max_len, threads=params.threads or None)

    return factory


for _runtime, _priority in PRIORITY.items():
    register_engine(_runtime, _factory(_runtime), priority=_priority, probe=_probe(_runtime))
