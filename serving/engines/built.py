"""Engines served from a build: how a runtime registers them, and the read side of the engine store.

A CPU runtime module (`ort.py`, `ov.py`) registers each engine it serves once, with `register_built(name,
engine_class, runtime_version, preference=...)`. The engine is then available for a checkpoint only when
`llmops engine build` (or the compile_engine step, both in `serving/engine_build/`) stored one for exactly these
weights, this runtime version and this CPU; the probe says so otherwise. A quantised engine is offered only
once its quality gate passed (the gate's file beside the manifest). All built CPU engines are one class for
`--engine auto`: it ranks them by the short benchmark the build recorded in the manifest on this host;
`preference` only orders engines built before that was recorded.

This module is the store's contract as the runtime reads it (manifest file, where engines live, how a
measured benchmark and a gate result are recorded); `serving/engine_build/store.py` writes it. Builds import this,
never the other way round.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops.errors import LlmopsError
from serving.engines import register_engine

if TYPE_CHECKING:
    from llmops.settings import Settings

CPU_CLASS = 20  # built CPU engines: above eager (0), below a GPU engine (cuda-graph, 40)
MANIFEST = "manifest.json"  # written last by a build: a directory without one is an interrupted build
CHECKS_FILE = "checks.json"  # equivalence + benchmark of a full-precision engine (compile_engine), beside the manifest
QUALITY_FILE = "quality.json"  # the quality gate's result for a quantised engine, beside the manifest


@dataclass(frozen=True)
class Runtime:
    """A CPU runtime that serves stored engines: its engine class and installed version."""

    name: str
    engine: type
    version: Callable[[], str]


RUNTIMES: dict[str, Runtime] = {}


def register_built(name: str, engine: type, version: Callable[[], str], *, preference: int = 0) -> None:
    """Serve stored engines called `name` (`<runtime>` or `<runtime>-<dtype>`) with `engine`; once per name."""
    runtime = name.split("-")[0]
    RUNTIMES[runtime] = Runtime(runtime, engine, version)
    register_engine(name, _factory(name), priority=CPU_CLASS, probe=_probe(name), speed=_speed(name),
                    preference=preference)


def runtime(name: str) -> Runtime:
    """The registered runtime `name` (importing the backends first); a clear error when it is not here."""
    from serving import engines

    engines.load_backends()
    if name not in RUNTIMES:
        raise LlmopsError(f"CPU runtime {name!r} cannot run in this environment",
                          f"use one of {sorted(RUNTIMES) or 'none installed'} or --engine eager")
    return RUNTIMES[name]


def runtime_version(name: str) -> str:
    return runtime(name).version()


# -- the store as read by a server ---------------------------------------------------------------------

def read_manifest(engine_dir: Path) -> dict[str, Any] | None:
    path = Path(engine_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def list_engines(settings: Settings, weights: str | None = None) -> list[dict[str, Any]]:
    """Every complete engine in the store (optionally only those built from `weights`), newest first."""
    root = settings.engines_dir
    found = [m | {"engine_dir": str(d)} for d in sorted(root.glob("*")) if d.is_dir() and (m := read_manifest(d))]
    if weights:
        found = [m for m in found if m.get("weights_digest") == weights]
    return sorted(found, key=lambda m: m.get("created", ""), reverse=True)


@functools.lru_cache(maxsize=8)
def _digest(model_dir: str, mtime_ns: int) -> str:
    from llmops.modeling.hashing import weights_digest

    return weights_digest(Path(model_dir))


def find_built(model_dir: Path, name: str) -> dict[str, Any] | None:
    """The newest stored engine called `name` built from these weights for this CPU and runtime version."""
    from llmops import host
    from llmops.settings import get_settings

    model_dir = Path(model_dir)
    digest = _digest(str(model_dir.resolve()), (model_dir / "config.json").stat().st_mtime_ns)
    version = runtime_version(name.split("-")[0])
    hardware = host.cpu_hardware()
    for m in list_engines(get_settings(), digest):
        if m.get("engine_name", m["runtime"]) == name and m.get("runtime_version") == version \
                and m.get("hardware") == hardware:
            return m
    return None


def gate_failure(manifest: dict[str, Any]) -> str | None:
    """Why a quantised engine may not serve (no gate result, or a breached tolerance); None for fp32 or passed."""
    if manifest.get("build_config", {}).get("dtype", "float32") == "float32":
        return None
    path = Path(manifest["engine_dir"]) / QUALITY_FILE
    if not path.is_file():
        return "quality gate not run for this int8 engine (run `llmops engine build MODEL --kind cpu-int8`)"
    gate = json.loads(path.read_text())
    if not gate.get("passed"):
        return "int8 engine breached its quality tolerance: " + "; ".join(gate.get("breaches") or ["failed"])
    return None


def load_built(manifest: dict[str, Any], model_dir: Path | None = None, *, max_slots: int = 8,
               max_len: int = 2048, threads: int | None = None):
    """The engine object for a stored manifest (the tokenizer comes from `model_dir`)."""
    rt = runtime(manifest["runtime"])
    installed = rt.version()
    if installed != manifest.get("runtime_version"):
        raise LlmopsError(f"engine was built with {rt.name} {manifest.get('runtime_version')}, "
                          f"installed is {installed}", "rebuild it: llmops engine build MODEL")
    return rt.engine(Path(manifest["engine_dir"]), Path(model_dir or manifest["model_dir"]),
                     manifest=manifest, max_slots=max_slots, max_len=max_len, threads=threads)


# -- measured speed: what `--engine auto` ranks built engines by ---------------------------------------

def host_summary() -> dict[str, Any]:
    """The machine a timing came from: CPU model, ISA flags that change kernels, usable cores (llmops.host)."""
    from llmops import host

    fp = host.fingerprint()
    return {"cpu": fp["cpu"], "hardware": host.cpu_hardware(), "isa": host.isa_tag(fp), "cores": fp["cores"]}


def recorded_benchmark(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The short benchmark of a stored engine: the manifest's, else the figures an older build kept beside it
    (checks.json, quality.json; host not recorded then); None when it was never measured."""
    bench = manifest.get("benchmark")
    if isinstance(bench, dict) and bench.get("figures"):
        return bench
    for name in (CHECKS_FILE, QUALITY_FILE):
        path = Path(manifest.get("engine_dir") or ".") / name
        try:
            figures = json.loads(path.read_text()).get("benchmark") if path.is_file() else None
        except (OSError, ValueError):
            figures = None
        if figures:
            return {"figures": figures, "host": None, "source": name}
    return None


def measured_here(bench: dict[str, Any] | None, host: dict[str, Any] | None = None) -> bool:
    """Whether a recorded benchmark was taken on this host (same CPU model and cores; an older record without
    a host counts, since the store is keyed by this CPU's ISA flags and lives on this machine)."""
    if not bench:
        return False
    if not bench.get("host"):
        return True
    here = host or host_summary()
    return all(bench["host"].get(k) == here.get(k) for k in ("cpu", "cores"))


# -- what the registry asks of a built engine ----------------------------------------------------------

def _probe(name: str):
    def probe(model_dir: Path) -> str | None:
        manifest = find_built(model_dir, name)
        if manifest is None:
            return f"no {name} engine built for these weights on this CPU (run `llmops engine build MODEL`)"
        return gate_failure(manifest)

    return probe


def _speed(name: str):
    def speed(model_dir: Path) -> dict[str, Any] | None:
        manifest = find_built(model_dir, name)
        bench = recorded_benchmark(manifest) if manifest else None
        return bench if measured_here(bench) else None

    return speed


def _factory(name: str):
    def factory(model_dir: Path, params):
        manifest = find_built(model_dir, name)
        if manifest is None:
            raise LlmopsError(f"no {name} engine built for {model_dir}", "run `llmops engine build MODEL`")
        if (why := gate_failure(manifest)) is not None:
            raise LlmopsError(f"{name} cannot serve {model_dir}: {why}", "serve with --engine auto or onnxruntime")
        return load_built(manifest, model_dir, max_slots=params.max_concurrent, max_len=params.max_len,
                          threads=params.threads or None)

    return factory
