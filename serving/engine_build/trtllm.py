"""TensorRT-LLM engine builds: build configuration, cache key, preflight, and the build itself.

TensorRT-LLM pins its own torch, numpy and transformers, so it never runs in the main environment: the
build runs in the TRT-LLM image (`infra/docker/trtllm/Dockerfile`, FROM NVIDIA's release image) as
`python -m serving.engine_build.trtllm build --model-dir ... --out ... --config '<json>'`. This module
therefore imports only the standard library at module level; `tensorrt_llm` and torch are imported inside
the functions that need them, and the preflight checks for them without importing the main pins.

Where the preflight fails (no `tensorrt_llm` package, no CUDA GPU, compute capability too low) the caller
records `engine=tensorrt-llm skipped: <reason>` and no engine directory is written: never a fake engine.
The build uses TensorRT-LLM's LLM API on its TensorRT backend (`tensorrt_llm._tensorrt_engine.LLM` with a
`BuildConfig`, then `llm.save(dir)`), which runs the same conversion and `trtllm-build` steps.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KIND = "tensorrt-llm"
MANIFEST = "manifest.json"
GRAPH_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")  # converters TRT-LLM ships


@dataclass(frozen=True)
class TrtllmBuildConfig:
    """Everything besides weights, TRT-LLM version and GPU that decides the engine's bytes."""

    dtype: str = "bfloat16"
    max_batch_size: int = 8
    max_input_len: int = 1536
    max_seq_len: int = 2048
    max_beam_width: int = 1
    kv_cache: str = "paged"
    plugins: dict[str, str] = field(default_factory=lambda: {"gpt_attention_plugin": "auto",
                                                              "gemm_plugin": "auto"})

    def __post_init__(self) -> None:
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: use bfloat16, float16 or float32")
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(f"max_input_len ({self.max_input_len}) must be below max_seq_len ({self.max_seq_len})")
        if min(self.max_batch_size, self.max_input_len, self.max_beam_width) < 1:
            raise ValueError("max_batch_size, max_input_len and max_beam_width must be >= 1")

    @classmethod
    def from_params(cls, trtllm: Any) -> TrtllmBuildConfig:
        """From params.yaml `engine.trtllm` (a pydantic model or a dict)."""
        d = trtllm if isinstance(trtllm, dict) else trtllm.model_dump()
        return cls(dtype=d["dtype"], max_batch_size=d["max_batch_size"], max_input_len=d["max_input_len"],
                   max_seq_len=d["max_seq_len"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def llm_api_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `tensorrt_llm.BuildConfig` (current LLM API names)."""
        return {"max_batch_size": self.max_batch_size, "max_input_len": self.max_input_len,
                "max_seq_len": self.max_seq_len, "max_beam_width": self.max_beam_width}


def gpu_arch(capability: tuple[int, int]) -> str:
    """`sm90` for (9, 0): the name TensorRT kernels are compiled for."""
    return f"sm{capability[0]}{capability[1]}"


def cache_key(weights_digest: str, trtllm_version: str, capability: tuple[int, int],
              config: TrtllmBuildConfig) -> str:
    """(weights, TRT-LLM version, GPU SM, build config) -> key; an engine only runs on the SM it was built for."""
    blob = json.dumps({"weights": weights_digest, "runtime": KIND, "runtime_version": trtllm_version,
                       "hardware": gpu_arch(capability), "build_config": config.digest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Preflight:
    ok: bool
    reasons: list[str]
    trtllm_version: str | None = None
    gpu: str | None = None
    capability: tuple[int, int] | None = None

    def skip_record(self) -> str:
        return f"engine={KIND} skipped: {'; '.join(self.reasons)}"


def _nvidia_smi() -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of GPU 0 from nvidia-smi, without importing torch or CUDA libraries."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, cap = out[0].rpartition(",")
    major, _, minor = cap.strip().partition(".")
    try:
        return name.strip(), (int(major), int(minor or 0))
    except ValueError:
        return None


def preflight(min_compute_capability: float = 8.0, *, find_spec=importlib.util.find_spec, gpu_probe=_nvidia_smi,
              version_of=None) -> Preflight:
    """What a TensorRT-LLM build needs and what is missing here, each reason naming its fix. Injected probes
    let tests check every branch; the defaults look at this machine."""
    reasons: list[str] = []
    version = None
    if find_spec("tensorrt_llm") is None:
        reasons.append("tensorrt_llm package not installed (it runs in the TRT-LLM image: infra/docker/trtllm)")
    else:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _version

        try:
            version = (version_of or _version)("tensorrt_llm")
        except PackageNotFoundError:
            reasons.append("tensorrt_llm is importable but has no package metadata (broken install)")
    gpu = gpu_probe()
    if gpu is None:
        reasons.append("no NVIDIA GPU (nvidia-smi not found or reports no device)")
        name, capability = None, None
    else:
        name, capability = gpu
        if capability[0] + capability[1] / 10 < min_compute_capability:
            reasons.append(f"GPU {name} has compute capability {capability[0]}.{capability[1]}, "
                           f"below {min_compute_capability} (engine.trtllm.min_compute_capability)")
    return Preflight(ok=not reasons, reasons=reasons, trtllm_version=version, gpu=name, capability=capability)


def check_model(model_dir: Path) -> None:
    """Refuse, naming the family, a checkpoint whose architecture has no converter wired here (before any GPU
    time is spent): Qwen3, Gemma and Phi-3 are served by the eager or CPU engines instead."""
    from llmops.errors import ModelError  # standard library only (see the module docstring)

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if not set(archs) & set(GRAPH_ARCHS):
        raise ModelError(f"the TensorRT-LLM engine has no converter wired here for the {cfg.get('model_type')!r} "
                         f"family (architectures {archs}; supported {', '.join(GRAPH_ARCHS)})",
                         "serve with --engine eager (or build a CPU engine: llmops engine build MODEL)")


def build(model_dir: Path, out_dir: Path, config: TrtllmBuildConfig, *, weights_digest: str,
          min_compute_capability: float = 8.0) -> dict[str, Any]:
    """Build the engine into `out_dir` (manifest written last) or raise with the preflight's reasons.
    Runs inside the TRT-LLM image only."""
    pf = preflight(min_compute_capability)
    if not pf.ok:
        raise RuntimeError(pf.skip_record())
    check_model(model_dir)
    from tensorrt_llm import BuildConfig
    from tensorrt_llm._tensorrt_engine import LLM

    key = cache_key(weights_digest, pf.trtllm_version or "?", pf.capability or (0, 0), config)
    t0 = time.perf_counter()
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    llm = LLM(model=str(model_dir), dtype=config.dtype, build_config=BuildConfig(**config.llm_api_kwargs()))
    llm.save(str(staging))
    llm.shutdown()
    manifest = {"name": f"{KIND}-{key}", "kind": KIND, "runtime": KIND, "runtime_version": pf.trtllm_version,
                "hardware": gpu_arch(pf.capability or (0, 0)), "gpu": pf.gpu, "build_config": config.to_dict(),
                "build_config_hash": config.digest(), "weights_digest": weights_digest, "cache_key": key,
                "model_dir": str(model_dir), "build_seconds": round(time.perf_counter() - t0, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.engine_build.trtllm {preflight,build}`: the TRT-LLM image's entry point."""
    ap = argparse.ArgumentParser(prog="python -m serving.engine_build.trtllm", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preflight", help="print what a build needs and what is missing (JSON)")
    p.add_argument("--min-compute-capability", type=float, default=8.0)
    b = sub.add_parser("build", help="build an engine for a merged checkpoint")
    b.add_argument("--model-dir", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--weights-digest", required=True, help="llmops.modeling.hashing.weights_digest of the model")
    b.add_argument("--config", default="{}", help="TrtllmBuildConfig fields as JSON")
    b.add_argument("--min-compute-capability", type=float, default=8.0)
    args = ap.parse_args(argv)
    if args.cmd == "preflight":
        pf = preflight(args.min_compute_capability)
        print(json.dumps(asdict(pf), indent=2))
        return 0 if pf.ok else 3
    config = TrtllmBuildConfig(**json.loads(args.config))
    try:
        manifest = build(args.model_dir, args.out, config, weights_digest=args.weights_digest,
                         min_compute_capability=args.min_compute_capability)
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 3
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
