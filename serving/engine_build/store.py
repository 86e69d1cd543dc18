"""Build, key and cache CPU inference engines for a merged checkpoint; record their measured speed.

An engine is named by what it was built from: (weights digest, runtime + version, hardware, build-config
hash) hashed into a cache key; it lives in `settings.engines_dir / <name>-<key>` with a `manifest.json`
written last, so a directory without a manifest is an interrupted build and never loads. Building the same
thing twice is a cache hit (recorded as such). How a runtime's graph is built is its registered `Builder`
(`serving/engine_build/__init__.py`); the engine that loads it, the manifest format and the read side of the store
are the runtime's (`serving/engines/built.py`), which this module writes for.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmops import host
from llmops.settings import Settings
from serving.engine_build import builder, runtimes
from serving.engines.built import MANIFEST, host_summary, read_manifest, runtime, runtime_version


def short_hash(payload: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:n]


def cpu_build_config(runtime: str, dtype: str = "float32", quantization: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """What decides the bytes of a CPU engine (besides weights, runtime version and hardware); a quantised
    dtype records its settings (`quantization`, default: quantize.settings_for this CPU)."""
    found = builder(runtime, dtype)
    config = {"runtime": runtime, "graph": found.graph, "opset": found.opset, "dtype": dtype}
    if found.tuning:
        config["tuning"] = found.tuning
    if dtype != "float32":
        from serving.engine_build import quantize

        config["quantization"] = quantization or quantize.settings_for(host.cpu_flags(), platform.machine())
    return config


def engine_name(runtime: str, dtype: str = "float32") -> str:
    """What the engine registry and `--engine` call it: the runtime, suffixed by a quantised dtype."""
    return runtime if dtype == "float32" else f"{runtime}-{dtype}"


def cache_key(weights: str, runtime: str, runtime_version: str, hardware: str, config_hash: str) -> str:
    return short_hash({"weights": weights, "runtime": runtime, "runtime_version": runtime_version,
                       "hardware": hardware, "build_config": config_hash}, 20)


def build_cpu_engine(settings: Settings, model_dir: Path, runtime_name: str,
                     progress: Callable[[str], None] | None = None, dtype: str = "float32",
                     int8_weights: str = "auto", quantization: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Build (or find in the cache) the CPU engine for `model_dir` on `runtime_name` (`dtype` int8: weights
    quantised with the settings for this CPU, see serving/engine_build/quantize.py `settings_for`; `int8_weights`
    overrides its choice, `quantization` replaces the settings altogether: benchmarks); returns its manifest
    plus `cache_hit` and `engine_dir`."""
    from llmops.modeling.hashing import weights_digest
    from serving.engine_build.graph_spec import read_spec

    found = builder(runtime_name, dtype)
    version = runtime_version(runtime_name)
    say = progress or (lambda _msg: None)
    model_dir = Path(model_dir)
    architecture = read_spec(model_dir).fingerprint()  # config settings the weights digest misses
    weights = weights_digest(model_dir)
    hardware = host.cpu_hardware()
    if dtype != "float32" and quantization is None:
        from serving.engine_build import quantize

        quantization = quantize.settings_for(host.cpu_flags(), platform.machine(), int8_weights)
    config = cpu_build_config(runtime_name, dtype, quantization) | {"architecture": architecture}
    config_hash = short_hash(config)
    key = cache_key(weights, runtime_name, version, hardware, config_hash)
    name = engine_name(runtime_name, dtype)
    engine_dir = settings.engines_dir / f"{name}-{key}"
    if (manifest := read_manifest(engine_dir)) is not None and manifest.get("cache_key") == key:
        say(f"cache hit: {engine_dir}")
        return manifest | {"cache_hit": True, "engine_dir": str(engine_dir)}

    say(f"building {name} engine (key {key})")
    t0 = time.perf_counter()
    staging = settings.engines_dir / f".{name}-{key}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if dtype == "float32":
            graph = found.export(model_dir, staging)
        else:
            from serving.engine_build import quantize

            graph = found.export(model_dir, staging / "float32")
            graph |= quantize.quantize(staging / "float32", staging, settings=config["quantization"])
            shutil.rmtree(staging / "float32")
        manifest = {
            "name": f"{name}-{key}", "engine_name": name, "kind": "cpu", "runtime": runtime_name,
            "runtime_version": version, "hardware": hardware, "build_config": config,
            "build_config_hash": config_hash, "weights_digest": weights, "cache_key": key, "graph": graph,
            "graph_file": "decoder.onnx", "model_dir": str(model_dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # Load once in the runtime so a graph it cannot compile fails the build, not the first request.
        engine = runtime(runtime_name).engine(staging, model_dir, manifest=manifest, max_slots=1)
        engine.prefill(0, [1, 2])
        del engine
        if found.tune is not None:
            say("timing thread settings on this host")
            manifest["threads"] = found.tune(staging, model_dir, manifest)
        manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(engine_dir, ignore_errors=True)
        staging.rename(engine_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"built in {manifest['build_seconds']} s: {engine_dir}")
    return manifest | {"cache_hit": False, "engine_dir": str(engine_dir)}


def record_benchmark(engine_dir: Path, figures: dict[str, float], *, passed: str) -> dict[str, Any]:
    """Store the short benchmark in the engine's manifest (atomic replace) with the host it ran on and the check
    the engine passed (`equivalence`, `quality gate`), so a server ranks the built engines by speed here."""
    path = Path(engine_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["benchmark"] = {"figures": dict(figures), "host": host_summary(), "passed": passed,
                             "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return manifest["benchmark"]


__all__ = ["build_cpu_engine", "cache_key", "cpu_build_config", "engine_name", "record_benchmark", "runtimes",
           "short_hash"]
