"""Engine registry: every runtime registers what it serves; `--engine auto` picks the fastest one measured here.

This package holds what serves, one module per runtime (eager, static_cache: the CUDA-graph GPU engine, ort:
ONNX Runtime fp32 and int8, ov: OpenVINO); building, exporting, quantising, the quality gate and the engine
store live apart in `serving/engine_build/`, which imports this package and never the other way round. A runtime
module registers each engine it serves once, at import time::

    register_engine("eager", factory, priority=0)
    register_built("onnxruntime", OnnxRuntimeEngine, runtime_version, preference=2)  # built.py: stored engines

`factory(model_dir, params) -> Engine` builds the engine for a resolved local checkpoint;
`probe(model_dir) -> None | str` says whether it can run here for that checkpoint (None) or why not
(a one-line reason: "not built for this version", "no GPU"); `speed(model_dir) -> dict | None` returns the
short benchmark recorded when the engine was built and checked on this host (`figures`: tokens/s per batch
size), None when it was never measured here.

`auto` ranks the available engines by class (`priority`: a GPU engine over the built CPU engines over eager),
then, within a class, by the measured figure `serve.auto_rank_by` (only engines that passed equivalence or
their quality gate are available at all), then by the fixed `preference` for engines without a measurement
(built before measurements were recorded). `eager` (priority 0, always available) is the reference and the
fallback. The choice and why are kept as an `EngineSelection` on the engine (`engine.selection`, and in its
`info()`, which the server shows on /ready), logged here and printed by `llmops serve` at start.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops.errors import LlmopsError
from serving.engines.base import Engine

if TYPE_CHECKING:
    from llmops.params import ServeParams

EngineFactory = Callable[[Path, "ServeParams"], Engine]
EngineProbe = Callable[[Path], "str | None"]
EngineSpeed = Callable[[Path], "dict[str, Any] | None"]

ENGINES: dict[str, EngineFactory] = {}
PRIORITY: dict[str, int] = {}
PREFERENCE: dict[str, int] = {}
PROBES: dict[str, EngineProbe] = {}
SPEEDS: dict[str, EngineSpeed] = {}
DEFAULT_RANK_BY = "batch1_tokens_per_s"
log = logging.getLogger("llmops.engines")

# Backend modules imported on first use, so registering costs nothing at import and a backend whose
# runtime is missing only disappears from the list (its import error becomes its "why not").
BACKEND_MODULES: list[str] = ["serving.engines.eager", "serving.engines.ort", "serving.engines.ov",
                               "serving.engines.static_cache"]
_IMPORT_ERRORS: dict[str, str] = {}
_loaded = False


def register_engine(name: str, factory: EngineFactory, *, priority: int = 10, probe: EngineProbe | None = None,
                    speed: EngineSpeed | None = None, preference: int = 0) -> None:
    """Make `name` loadable by `load_engine` and selectable by `auto`: a higher `priority` class wins; within a
    class the faster measured `speed`, then the higher `preference` (engines never measured)."""
    ENGINES[name] = factory
    PRIORITY[name] = priority
    PREFERENCE[name] = preference
    if probe is not None:
        PROBES[name] = probe
    if speed is not None:
        SPEEDS[name] = speed


def load_backends() -> None:
    """Import every runtime module once (each registers itself); a missing runtime only drops its engines."""
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
    benchmark: dict[str, Any] | None = None  # the short benchmark recorded on this host, if any
    preference: int = 0

    def speed(self, rank_by: str = DEFAULT_RANK_BY) -> float | None:
        """The measured figure `rank_by` (e.g. batch1_tokens_per_s), None when not measured here."""
        value = ((self.benchmark or {}).get("figures") or {}).get(rank_by)
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class EngineSelection:
    """Which engine serves and why: shown by the server (/ready, /v1/models, its start line and log)."""

    name: str
    requested: str  # auto or the name asked for
    reason: str  # one line, e.g. "onnxruntime-int8: fastest measured on this host, 61 tok/s vs onnxruntime 30"
    rank_by: str
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every engine: available, why not, speed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _speed_of(name: str, model_dir: Path) -> dict[str, Any] | None:
    measure = SPEEDS.get(name)
    if measure is None:
        return None
    try:
        return measure(model_dir)
    except Exception as exc:  # an unreadable record only loses the measurement, never the engine
        log.warning("engine %s: cannot read its recorded benchmark: %s", name, exc)
        return None


def available_engines(model_dir: Path | None = None, rank_by: str = DEFAULT_RANK_BY) -> list[EngineChoice]:
    """Every registered engine, best first (class, then measured speed here, then preference), with whether it
    can serve `model_dir` here and why not."""
    load_backends()
    out: list[EngineChoice] = []
    for name in ENGINES:
        reason, bench = None, None
        probe = PROBES.get(name)
        if probe is not None and model_dir is not None:
            try:
                reason = probe(Path(model_dir))
            except Exception as exc:  # a probe must never take the server down; it only rules the engine out
                reason = f"probe failed: {exc}"
        if reason is None and model_dir is not None:
            bench = _speed_of(name, Path(model_dir))
        out.append(EngineChoice(name, reason is None, reason, PRIORITY.get(name, 0), bench, PREFERENCE.get(name, 0)))

    def key(c: EngineChoice) -> tuple:
        speed = c.speed(rank_by)
        return (-c.priority, speed is None, -(speed or 0.0), -c.preference, c.name)

    return sorted(out, key=key)


def _fmt(speed: float) -> str:
    return f"{speed:.0f}" if speed >= 10 else f"{speed:.2g}"


def _why(best: EngineChoice, choices: list[EngineChoice], rank_by: str) -> str:
    """The one-line reason `auto` chose `best` among `choices` (all registered engines, ranked)."""
    unit = rank_by.removesuffix("_tokens_per_s").replace("batch", "batch ") + " tok/s"
    rivals = [c for c in choices if c.available and c.priority == best.priority and c.name != best.name]
    missing = [f"{c.name} {c.reason.split(' (')[0]}" if c.reason.startswith(("no ", "not ")) else
               f"{c.name}: {c.reason.split(' (')[0]}" for c in choices if not c.available and c.reason]
    speed = best.speed(rank_by)
    if best.name == "eager":
        why = "eager: no built engine can serve this model here (the reference engine is the fallback)"
    elif speed is not None:
        others = [f"{c.name} {_fmt(s)}" if (s := c.speed(rank_by)) is not None else f"{c.name} not measured here"
                  for c in rivals]
        why = f"{best.name}: fastest measured on this host, {_fmt(speed)} {unit}" + (
            f" vs {', '.join(others)}" if others else " (the only one built and passing its checks)")
    elif rivals:
        why = (f"{best.name}: no engine has a benchmark recorded on this host (built by an older version), so the "
               f"fixed preference decides over {', '.join(c.name for c in rivals)}; rebuild with `llmops engine "
               "build MODEL` to rank them by measured speed")
    else:
        why = f"{best.name}: the only engine of its class that can serve here (no benchmark recorded on this host)"
    return "; ".join([why, *missing])


def select_engine(kind: str, model_dir: Path, rank_by: str = DEFAULT_RANK_BY) -> EngineSelection:
    """Resolve `auto` to the fastest available engine measured here (see module doc), or check that an explicit
    name exists and can run; says why either way."""
    choices = available_engines(model_dir, rank_by)
    table = [{"name": c.name, "available": c.available, "why_not": c.reason, "priority": c.priority,
              rank_by: c.speed(rank_by),
              "measured_on": ((c.benchmark or {}).get("host") or {}).get("cpu")} for c in choices]
    if kind == "auto":
        for choice in choices:
            if choice.available:
                return EngineSelection(choice.name, kind, _why(choice, choices, rank_by), rank_by, table)
        raise LlmopsError("no engine can serve this model here", "build one with `llmops engine build` or use eager")
    by_name = {c.name: c for c in choices}
    if kind not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        raise LlmopsError(f"unknown engine {kind!r} (registered: {known})", "pass --engine auto, eager or one of those")
    if not by_name[kind].available:
        raise LlmopsError(f"engine {kind!r} cannot serve {model_dir}: {by_name[kind].reason}",
                          "build it with `llmops engine build MODEL` or pass --engine auto")
    return EngineSelection(kind, kind, f"{kind}: asked for by name (--engine / serve.engine)", rank_by, table)


def pick_engine(kind: str, model_dir: Path, rank_by: str = DEFAULT_RANK_BY) -> str:
    """The engine name `select_engine` resolves `kind` to."""
    return select_engine(kind, model_dir, rank_by).name


def load_engine(kind: str, model_dir: Path, params: ServeParams) -> Engine:
    """Build the engine `kind` (or the fastest available for `auto`) over the local checkpoint `model_dir`; the
    engine carries its `selection` (which and why), logged here."""
    rank_by = getattr(params, "auto_rank_by", DEFAULT_RANK_BY)
    selection = select_engine(kind, Path(model_dir), rank_by)
    log.info("engine selected: %s", selection.reason)
    engine = ENGINES[selection.name](Path(model_dir), params)
    engine.selection = selection
    info = engine.info  # every view of the engine's info (/ready, logs) says which engine and why
    engine.info = lambda: info() | {"selection": selection.to_json()}  # type: ignore[method-assign]
    return engine


__all__ = ["ENGINES", "Engine", "EngineChoice", "EngineSelection", "available_engines", "load_engine",
           "pick_engine", "register_engine", "select_engine"]
