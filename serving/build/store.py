"""Build, cache, check and time inference engines for a merged checkpoint.

An engine is named by what it was built from: (weights digest, runtime + version, hardware, build-config
hash) hashed into a cache key; it lives in `settings.engines_dir / <runtime>-<key>` with a `manifest.json`
written last, so a directory without a manifest is an interrupted build and never loads. Building the same
thing twice is a cache hit (recorded as such). Equivalence is checked against eager transformers (fp32, KV
cache, greedy) on the fixed prompts from params.yaml; the short benchmark times the engine at the
configured batch sizes through the same prefill/decode interface the scheduler uses.
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

from llmops.errors import LlmopsError
from llmops.params import EngineParams
from llmops.settings import Settings

MANIFEST = "manifest.json"
# bump when the graph a runtime runs changes (serving/engines/gqa_graph.py, decoder_graph.py)
GRAPH_VERSIONS = {"onnxruntime": "llmops-gqa-graph/2", "openvino": "llmops-decoder-graph/2"}
CHECKS_FILE = "checks.json"  # equivalence + benchmark of a full-precision engine (compile_engine), beside the manifest


def _runtimes() -> dict[str, tuple[type, Callable[[], str]]]:
    from serving.engines import ort, ov

    return {ort.RUNTIME: (ort.OnnxRuntimeEngine, ort.runtime_version),
            ov.RUNTIME: (ov.OpenVinoEngine, ov.runtime_version)}


def _exporter(runtime: str) -> Callable[[Path, Path], dict[str, Any]]:
    """ONNX Runtime runs the GroupQueryAttention graph (in-place KV); OpenVINO the portable traced graph."""
    if runtime == "onnxruntime":
        from serving.engines.gqa_graph import build_graph

        return build_graph
    from serving.engines.decoder_graph import export_onnx

    return export_onnx


CPU_RUNTIMES = ("onnxruntime", "openvino")


def runtime_version(runtime: str) -> str:
    runtimes = _runtimes()
    if runtime not in runtimes:
        raise LlmopsError(f"unknown CPU runtime {runtime!r}", f"use one of {sorted(runtimes)}")
    return runtimes[runtime][1]()


def short_hash(payload: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:n]


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (llmops.host: the one parser)."""
    from llmops import host

    return host.cpu_flags(cpuinfo)


def cpu_hardware(cpuinfo: str | None = None) -> str:
    """`cpu-<arch>-<ISA flags that change kernels>`, e.g. cpu-x86_64-avx2+avx512f+avx512_bf16 (llmops.host)."""
    from llmops import host

    return host.cpu_hardware(cpuinfo)


def cpu_build_config(runtime: str, dtype: str = "float32", quantization: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """What decides the bytes of a CPU engine (besides weights, runtime version and hardware); a quantised
    dtype records its settings (`quantization`, default: int8.settings_for this CPU)."""
    from serving.engines.decoder_graph import OPSET

    config = {"runtime": runtime, "graph": GRAPH_VERSIONS[runtime], "opset": OPSET, "dtype": dtype}
    if dtype != "float32":
        from serving.engines import int8

        if runtime != int8.RUNTIME:
            raise LlmopsError(f"no {dtype} engine for {runtime}", f"build {dtype} with {int8.RUNTIME}")
        config["quantization"] = quantization or int8.settings_for(cpu_flags(), platform.machine())
    return config


def engine_name(runtime: str, dtype: str = "float32") -> str:
    """What the engine registry and `--engine` call it: the runtime, suffixed by a quantised dtype."""
    return runtime if dtype == "float32" else f"{runtime}-{dtype}"


def cache_key(weights: str, runtime: str, runtime_version: str, hardware: str, config_hash: str) -> str:
    return short_hash({"weights": weights, "runtime": runtime, "runtime_version": runtime_version,
                       "hardware": hardware, "build_config": config_hash}, 20)


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


def build_cpu_engine(settings: Settings, model_dir: Path, runtime: str,
                     progress: Callable[[str], None] | None = None, dtype: str = "float32",
                     int8_weights: str = "auto", quantization: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Build (or find in the cache) the CPU engine for `model_dir` on `runtime` (`dtype` int8: weights
    quantised with the settings for this CPU, see serving/engines/int8.py `settings_for`; `int8_weights`
    overrides its choice, `quantization` replaces the settings altogether: benchmarks); returns its manifest
    plus `cache_hit` and `engine_dir`."""
    from llmops.modeling.hashing import weights_digest
    from serving.engines.decoder_graph import check_supported

    runtimes = _runtimes()
    version = runtime_version(runtime)
    say = progress or (lambda _msg: None)
    model_dir = Path(model_dir)
    architecture = check_supported(model_dir).fingerprint()  # config settings the weights digest misses
    weights = weights_digest(model_dir)
    hardware = cpu_hardware()
    if dtype != "float32" and quantization is None:
        from serving.engines import int8

        quantization = int8.settings_for(cpu_flags(), platform.machine(), int8_weights)
    config = cpu_build_config(runtime, dtype, quantization) | {"architecture": architecture}
    config_hash = short_hash(config)
    key = cache_key(weights, runtime, version, hardware, config_hash)
    name = engine_name(runtime, dtype)
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
            graph = _exporter(runtime)(model_dir, staging)
        else:
            from serving.engines import int8

            graph = _exporter(runtime)(model_dir, staging / "float32")
            graph |= int8.quantize(staging / "float32", staging, settings=config["quantization"])
            shutil.rmtree(staging / "float32")
        manifest = {
            "name": f"{name}-{key}", "engine_name": name, "kind": "cpu", "runtime": runtime, "runtime_version": version,
            "hardware": hardware, "build_config": config, "build_config_hash": config_hash,
            "weights_digest": weights, "cache_key": key, "graph": graph, "graph_file": "decoder.onnx",
            "model_dir": str(model_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # Load once in the runtime so a graph it cannot compile fails the build, not the first request.
        engine = runtimes[runtime][0](staging, model_dir, manifest=manifest, max_slots=1)
        engine.prefill(0, [1, 2])
        del engine
        manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(engine_dir, ignore_errors=True)
        staging.rename(engine_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"built in {manifest['build_seconds']} s: {engine_dir}")
    return manifest | {"cache_hit": False, "engine_dir": str(engine_dir)}


def load_engine(manifest: dict[str, Any], model_dir: Path | None = None, *, max_slots: int = 8,
                max_len: int = 2048, threads: int | None = None):
    """The engine object for a stored manifest (the tokenizer comes from `model_dir`)."""
    runtimes = _runtimes()
    runtime = manifest["runtime"]
    if runtime not in runtimes:
        raise LlmopsError(f"engine runtime {runtime!r} cannot run in this environment",
                          f"use one of {sorted(runtimes)} or --engine eager")
    installed = runtimes[runtime][1]()
    if installed != manifest.get("runtime_version"):
        raise LlmopsError(f"engine was built with {runtime} {manifest.get('runtime_version')}, "
                          f"installed is {installed}", "rebuild it: llmops engine build MODEL")
    return runtimes[runtime][0](Path(manifest["engine_dir"]), Path(model_dir or manifest["model_dir"]),
                                manifest=manifest, max_slots=max_slots, max_len=max_len, threads=threads)


# -- measured speed: what `--engine auto` ranks built engines by ---------------------------------------

def host_summary() -> dict[str, Any]:
    """The machine a timing came from: CPU model, ISA flags that change kernels, usable cores (llmops.host)."""
    from llmops import host

    fp = host.fingerprint()
    return {"cpu": fp["cpu"], "hardware": cpu_hardware(), "isa": host.isa_tag(fp), "cores": fp["cores"]}


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


def recorded_benchmark(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The short benchmark of a stored engine: the manifest's, else the figures an older build kept beside it
    (checks.json, quality.json; host not recorded then); None when it was never measured."""
    bench = manifest.get("benchmark")
    if isinstance(bench, dict) and bench.get("figures"):
        return bench
    for name in (CHECKS_FILE, "quality.json"):
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


# -- equivalence and benchmark -------------------------------------------------------------------------

def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Chat-formatted prompt token ids (what the server sends to an engine)."""
    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
        out.append(list(ids))
    return out


def eager_greedy(model, prompt_ids: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float]:
    """The reference: transformers fp32 with KV cache, greedy, one prompt at a time (no padding), up to
    `new_tokens` tokens or the model's end-of-sequence token (never suppressed: `min_new_tokens` would mask
    EOS in eager only and make an engine that rightly ends look wrong); returns (tokens per prompt, seconds)."""
    import torch

    out, t0 = [], time.perf_counter()
    with torch.no_grad():
        for ids in prompt_ids:
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                               max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=model.config.eos_token_id)
            out.append(g[0, len(ids):].tolist())
    return out, time.perf_counter() - t0


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """`tokens` up to and including the first end-of-sequence token (what a server would send)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def engine_greedy(engine, prompt_ids: list[list[int]], new_tokens: int) -> dict[str, Any]:
    """Greedy decode of all prompts as one batch through prefill/decode (slot i = prompt i), as the
    scheduler would run them; returns tokens, seconds, TTFT (all prompts prefilled) and tokens/s."""
    slots = list(range(len(prompt_ids)))
    t0 = time.perf_counter()
    last = [int(engine.prefill(s, ids).argmax()) for s, ids in zip(slots, prompt_ids, strict=True)]
    ttft = time.perf_counter() - t0
    tokens = [[t] for t in last]
    for _ in range(new_tokens - 1):
        last = engine.decode(slots, last).argmax(-1).tolist()
        for row, t in zip(tokens, last, strict=True):
            row.append(int(t))
    seconds = time.perf_counter() - t0
    for s in slots:
        engine.release(s)
    return {"tokens": tokens, "seconds": seconds, "ttft_s": ttft,
            "tokens_per_s": len(slots) * new_tokens / seconds}


def agreement(reference: list[list[int]], got: list[list[int]]) -> dict[str, Any]:
    """Share of prompts whose tokens are identical, and the mean share of identical leading tokens."""
    same = [a == b for a, b in zip(reference, got, strict=True)]

    def prefix(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    lead = [prefix(a, b) / max(len(a), 1) for a, b in zip(reference, got, strict=True)]
    return {"prompts": len(same), "identical": sum(same), "identical_rate": sum(same) / max(len(same), 1),
            "mean_leading_agreement": sum(lead) / max(len(lead), 1)}


def eager_reference(model, tokenizer, cfg: EngineParams) -> tuple[list[list[int]], float]:
    """Eager's greedy tokens on the equivalence prompts and its batch-1 tokens/s (computed once, reusable)."""
    eq = cfg.equivalence
    prompts = encode_prompts(tokenizer, cfg.prompts[: eq.prompts] if eq.prompts else cfg.prompts)
    reference, seconds = eager_greedy(model, prompts, eq.new_tokens)
    return reference, sum(len(r) for r in reference) / seconds


def model_eos_ids(model) -> set[int]:
    """The model config's end-of-sequence id(s)."""
    eos = model.config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def check_equivalence(engine, model, tokenizer, cfg: EngineParams,
                      reference: tuple[list[list[int]], float] | None = None) -> dict[str, Any]:
    """Greedy tokens of the engine (batched) vs eager (one at a time) on the fixed prompts; `passed` when the
    identical rate reaches `cfg.equivalence.min_identical_rate`. Also returns eager's batch-1 tokens/s."""
    eq = cfg.equivalence
    prompts = encode_prompts(tokenizer, cfg.prompts[: eq.prompts] if eq.prompts else cfg.prompts)
    tokens, eager_tps = reference or eager_reference(model, tokenizer, cfg)
    got = engine_greedy(engine, prompts, eq.new_tokens)
    eos = set(engine.eos_token_ids) | model_eos_ids(model)
    result = agreement([until_eos(t, eos) for t in tokens], [until_eos(t, eos) for t in got["tokens"]])
    return result | {"new_tokens": eq.new_tokens, "min_identical_rate": eq.min_identical_rate,
                     "passed": result["identical_rate"] >= eq.min_identical_rate,
                     "eager_batch1_tokens_per_s": eager_tps}


def short_benchmark(engine, tokenizer, cfg: EngineParams) -> dict[str, float]:
    """Engine tokens/s and TTFT at each configured batch size (prompts cycled to fill the batch)."""
    bench = cfg.benchmark
    base = encode_prompts(tokenizer, cfg.prompts)
    out: dict[str, float] = {}
    engine_greedy(engine, base[:1], 2)  # warm-up: first-run allocations are not the engine's speed
    for bs in bench.batch_sizes:
        prompts = [base[i % len(base)] for i in range(bs)]
        r = engine_greedy(engine, prompts, bench.new_tokens)
        out[f"batch{bs}_tokens_per_s"] = round(r["tokens_per_s"], 2)
        out[f"batch{bs}_ttft_s"] = round(r["ttft_s"], 4)
    return out
