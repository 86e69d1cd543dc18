"""`llmops engine ...`: build inference engines for a model and list the ones built.

MODEL is a registry reference (`NAME@ALIAS`, `NAME/VERSION`, `NAME` = latest) or a local checkpoint
directory. For a registry reference the engine is attached to the version (artifacts + `engine.*` tags),
exactly as the pipeline's compile_engine step does; for a directory it is built and checked only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli._common import JSON_OPTION, console, emit, handle_errors

app = typer.Typer(no_args_is_help=True)

MODEL_ARG = typer.Argument(..., help="NAME@ALIAS, NAME/VERSION, NAME (latest version) or a local model dir.")
SET_OPTION = typer.Option([], "--set", help="Override a parameter, e.g. engine.cpu_runtime=onnxruntime.")


def _resolve(settings, model: str) -> tuple[Path, tuple[str, str] | None]:
    """(local checkpoint dir, (name, version) or None for a plain directory)."""
    from components.compile_engine.logic import version_model_dir
    from llmops.registry import Registry

    if Path(model).is_dir():
        return Path(model).resolve(), None
    name, version = Registry(settings).resolve(model)
    with console.status(f"fetching {name}/{version} from the registry..."):
        return version_model_dir(settings, name, version), (name, version)


def _human_build(result: dict[str, Any]) -> None:
    for kind, r in result["engines"].items():
        if r.get("skipped"):
            console.print(f"[yellow]{kind}[/]: {'rejected' if r.get('rejected') else 'skipped'}: {r['reason']}")
            continue
        eq, bench = r.get("equivalence") or {}, r.get("benchmark") or {}
        hit = " (cache hit)" if r.get("cache_hit") else f" (built in {r.get('build_seconds')} s)"
        console.print(f"[green]{kind}[/]: {r['name']}{hit}  {r['runtime']} {r['runtime_version']}  {r['hardware']}")
        if eq:
            console.print(f"  equivalence: {eq['identical']}/{eq['prompts']} prompts identical over "
                          f"{eq['new_tokens']} greedy tokens")
        if bench:
            console.print("  benchmark: " + ", ".join(f"{k}={v}" for k, v in bench.items()))


@app.command("build")
@handle_errors
def build(
    model: str = MODEL_ARG,
    kind: str = typer.Option("all", "--kind", help="cpu, cpu-int8, tensorrt-llm, or all (params.yaml engine.kinds)."),
    overrides: list[str] = SET_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Build (or find in the cache) the engine(s) for MODEL, check equivalence with eager, time it, attach it.
    Exits 1 when an engine fails equivalence (it is then removed, never attached)."""
    from components.compile_engine.logic import compile_engines
    from llmops.errors import LlmopsError
    from llmops.settings import get_settings

    if kind not in ("all", "cpu", "cpu-int8", "tensorrt-llm"):
        raise LlmopsError(f"unknown engine kind {kind!r}", "use --kind cpu, cpu-int8, tensorrt-llm or all")
    settings = get_settings()
    extra = [] if kind == "all" else [f"engine.kinds=[{kind}]"]
    params = settings.params([*overrides, *extra])
    model_dir, ref = _resolve(settings, model)
    with console.status("building and checking engines (export, equivalence vs eager, short benchmark)..."):
        if ref is not None:
            result = compile_engines(settings, params, name=ref[0], version=ref[1], model_dir=model_dir)
        else:
            result = _build_local(settings, params, model_dir)
    emit(result, as_json, _human_build)
    if any(r.get("rejected") for r in result["engines"].values()):
        raise typer.Exit(1)  # an engine failed equivalence: scripts must not take it for a success


def _build_local(settings, params, model_dir: Path) -> dict[str, Any]:
    from components.compile_engine.logic import build_engines

    return {"model_dir": str(model_dir), "engines": build_engines(settings, params, model_dir)}


@app.command("list")
@handle_errors
def list_engines(model: str = MODEL_ARG, as_json: bool = JSON_OPTION) -> None:
    """Engines built for MODEL's weights on this machine's store (with the speed measured here), the engine
    `--engine auto` would pick and why, and the engine tags on its version."""
    from llmops.modeling.hashing import weights_digest
    from llmops.settings import get_settings
    from serving.engines import built

    settings = get_settings()
    model_dir, ref = _resolve(settings, model)
    digest = weights_digest(model_dir)
    rows = [{k: m.get(k) for k in ("name", "kind", "runtime", "runtime_version", "hardware", "build_config_hash",
                                    "build_seconds", "created", "engine_dir")}
            | {"benchmark": (built.recorded_benchmark(m) or {}).get("figures")}
            for m in built.list_engines(settings, digest)]
    tags: dict[str, str] = {}
    if ref is not None:
        from llmops.registry import Registry

        mv = Registry(settings).client.get_model_version(ref[0], ref[1])
        tags = {k: v for k, v in sorted(mv.tags.items()) if k.startswith("engine.")}
    from serving.engines import select_engine

    auto = select_engine("auto", model_dir, settings.params().serve.auto_rank_by)
    payload = {"model": model, "weights_digest": digest, "engines": rows, "version_tags": tags,
               "auto": {"name": auto.name, "reason": auto.reason}}

    def human(p: dict[str, Any]) -> None:
        from rich.console import Console

        out = Console()
        if not p["engines"]:
            out.print(f"no engines built for {model} here (run `llmops engine build {model}`)")
        for r in p["engines"]:
            out.print(f"[bold]{r['name']}[/]  {r['runtime']} {r['runtime_version']}  {r['hardware']}\n"
                      f"  built {r['created']} in {r['build_seconds']} s  config {r['build_config_hash']}\n"
                      f"  {r['engine_dir']}")
            if r["benchmark"]:
                out.print("  measured here: " + ", ".join(f"{k}={v}" for k, v in r["benchmark"].items()))
        out.print(f"--engine auto: {p['auto']['reason']}")
        for k, v in p["version_tags"].items():
            out.print(f"  {k} = {v}")

    emit(payload, as_json, human)
