"""Engine builds, apart from the runtimes that serve them (`serving/engines/`).

    graph_spec.py     what the CPU graphs need from a checkpoint (on `serving.engines.checkpoint`'s config parse)
    gqa_graph.py      the ONNX Runtime graph (GroupQueryAttention, KV cache in place)   registers "onnxruntime"
    decoder_graph.py  the portable traced graph OpenVINO runs                           registers "openvino"
    quantize.py       quantisation of the ONNX Runtime graph (weight-only blocks or dynamic int8), per host
    threads.py        the ONNX Runtime engine's thread settings, timed on the host that builds it
    store.py          build, key and cache a CPU engine; record its measured speed in the manifest
    checks.py         equivalence against eager and the short benchmark
    gate.py           the quality gate of a quantised engine
    trtllm.py         TensorRT-LLM builds (run in the TRT-LLM image)

Each graph builder registers itself once (`register_builder`), as each runtime does with the engine registry;
the store asks for `builder(runtime)` instead of switching on runtime names. Imports run one way: builds use
the runtime contracts (`serving.engines.base`, `serving.engines.built`: the engine classes, the manifest a
server reads), and nothing in `serving/engines/` imports from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError

# Builder modules, imported on first use (their heavy imports stay inside the functions)
BUILDER_MODULES = ["serving.engine_build.gqa_graph", "serving.engine_build.decoder_graph"]


@dataclass(frozen=True)
class Builder:
    """How to build the graph a CPU runtime serves."""

    runtime: str                                      # the runtime registered in serving.engines.built
    export: Callable[[Path, Path], dict[str, Any]]    # (model_dir, out_dir) -> the graph's shape facts
    graph: str                                        # graph version: bump when the graph changes (cache key)
    opset: int
    dtypes: tuple[str, ...] = ("float32",)            # the dtypes it can build (int8: quantize.py)
    # (engine_dir, model_dir, manifest) -> settings measured on the built engine, stored in the manifest under
    # `threads` (ONNX Runtime: threads.py); `tuning` names that recipe in the build config (bump it to rebuild)
    tune: Callable[[Path, Path, dict[str, Any]], dict[str, Any]] | None = None
    tuning: str = ""


BUILDERS: dict[str, Builder] = {}


def register_builder(builder: Builder) -> None:
    """Make `builder.runtime` buildable by `serving.engine_build.store.build_cpu_engine`."""
    BUILDERS[builder.runtime] = builder


def _load() -> None:
    for module in BUILDER_MODULES:
        importlib.import_module(module)


def runtimes() -> tuple[str, ...]:
    """Every CPU runtime a graph can be built for, in registration order."""
    _load()
    return tuple(BUILDERS)


def builder(runtime: str, dtype: str = "float32") -> Builder:
    """The registered builder of `runtime` that can build `dtype`; a clear error otherwise."""
    _load()
    if runtime not in BUILDERS:
        raise LlmopsError(f"unknown CPU runtime {runtime!r}", f"use one of {sorted(BUILDERS)}")
    found = BUILDERS[runtime]
    if dtype not in found.dtypes:
        able = [b.runtime for b in BUILDERS.values() if dtype in b.dtypes]
        raise LlmopsError(f"no {dtype} engine for {runtime}", f"build {dtype} with {' or '.join(able) or 'none'}")
    return found
