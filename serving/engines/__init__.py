"""Engine registry: every backend registers one factory; `--engine auto` picks the best one available.

A backend module registers itself with one line at import time::

    register_engine("onnxruntime", factory, priority=20, probe=probe)

`factory(model_dir, params) -> Engine` builds the engine for a resolved local checkpoint;
`probe(model_dir) -> None | str` says whether it can run here for that checkpoint (None) or why not
(a one-line reason: "not built for this version", "no GPU"). `auto` takes the highest-priority engine
whose probe passes; `eager` (priority 0, always available) is the reference and the fallback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmops.errors import LlmopsError
from serving.engines.base import Engine

if TYPE_CHECKING:
    from llmops.params import ServeParams

EngineFactory = Callable[[Path, "ServeParams"], Engine]
EngineProbe = Callable[[Path], "str | None"]

ENGINES: dict[str, EngineFactory] = {}
PRIORITY: dict[str, int] = {}
PROBES: dict[str, EngineProbe] = {}

# Backend modules imported on first use, so registering costs nothing at import and a backend whose
# runtime is missing only disappears from the list (its import error becomes its "why not").
BACKEND_MODULES: list[str] = ["serving.engines.eager", "serving.engines.cpu", "serving.engines.static_cache"]
_IMPORT_ERRORS: dict[str, str] = {}
_loaded = False


def register_engine(name: str, factory: EngineFactory, *, priority: int = 10, probe: EngineProbe | None = None) -> None:
    """Make `name` loadable by `load_engine` and selectable by `auto` (higher priority wins)."""
    ENGINES[name] = factory
    PRIORITY[name] = priority
    if probe is not None:
        PROBES[name] = probe


def _load_backends() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BACKEND_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # a runtime not installed here: the engine is just unavailable
            _IMPORT_ERRORS[module] = f"{module}: {exc}"


@dataclass(frozen=True)
class EngineChoice:
    name: str
    available: bool
    reason: str | None  # why not, when unavailable
    priority: int


def available_engines(model_dir: Path | None = None) -> list[EngineChoice]:
    """Every registered engine, best first, with whether it can serve `model_dir` here and why not."""
    _load_backends()
    out: list[EngineChoice] = []
    for name in ENGINES:
        reason = None
        probe = PROBES.get(name)
        if probe is not None and model_dir is not None:
            try:
                reason = probe(Path(model_dir))
            except Exception as exc:  # a probe must never take the server down; it only rules the engine out
                reason = f"probe failed: {exc}"
        out.append(EngineChoice(name, reason is None, reason, PRIORITY.get(name, 0)))
    return sorted(out, key=lambda c: (-c.priority, c.name))


def pick_engine(kind: str, model_dir: Path) -> str:
    """Resolve `auto` to the best available engine; check an explicit name exists and can run."""
    choices = available_engines(model_dir)
    if kind == "auto":
        for choice in choices:
            if choice.available:
                return choice.name
        raise LlmopsError("no engine can serve this model here", "build one with `llmops engine build` or use eager")
    by_name = {c.name: c for c in choices}
    if kind not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        raise LlmopsError(f"unknown engine {kind!r} (registered: {known})", "pass --engine auto, eager or one of those")
    if not by_name[kind].available:
        raise LlmopsError(f"engine {kind!r} cannot serve {model_dir}: {by_name[kind].reason}",
                          "build it with `llmops engine build MODEL` or pass --engine auto")
    return kind


def load_engine(kind: str, model_dir: Path, params: ServeParams) -> Engine:
    """Build the engine `kind` (or the best available for `auto`) over the local checkpoint `model_dir`."""
    name = pick_engine(kind, Path(model_dir))
    return ENGINES[name](Path(model_dir), params)


__all__ = ["ENGINES", "Engine", "EngineChoice", "available_engines", "load_engine", "pick_engine", "register_engine"]
