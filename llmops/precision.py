"""Which precision training, evaluation and generation run in: chosen per device by measurement, not by flag.

`train.precision: auto` picks the fastest precision that is correct on the device at hand:
- CPU: bf16 autocast only where the hardware multiplies bf16 natively (avx512_bf16 or AMX-BF16 in the CPU
  flags) AND a short matmul probe (fp32 vs bf16 autocast, shapes like the model's, a few hundred ms)
  confirms it is faster; otherwise fp32. Without native bf16, oneDNN emulates it, several times slower than
  fp32 (benchmarks/README.md, `train.precision: auto`). The flag alone is not
  enough either (`ONEDNN_MAX_CPU_ISA=AVX2` keeps the flag but emulates). The probe's result is cached per
  host fingerprint (llmops.host) in the state dir, so it runs once per host.
- GPU: bf16 where `torch.cuda.is_bf16_supported()`, else fp16 autocast with a gradient scaler.
`fp32 | bf16 | fp16` are honoured as given. The choice carries its reason, printed by preflight and
recorded as the `train.precision` tag.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from llmops import host

Precision = Literal["fp32", "bf16", "fp16"]
Requested = Literal["auto", "fp32", "bf16", "fp16"]
# tokens of one worker's step (train.batch_size 2 x seq_len 512), hidden and MLP width of SmolLM2-135M (the
# default base); `probe_shape` reads the real ones from the params and the base model's config.json
PROBE_SHAPE = (1024, 576, 1536)
MAX_PROBE_TOKENS = 2048
PROBE_BUDGET_S = 0.3
MIN_SPEEDUP = 1.05  # bf16 must beat fp32 by this much; a wash keeps full precision
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a device runs in, what was asked for, and why (a sentence for logs and tags)."""

    precision: Precision
    requested: Requested
    device: str  # "cpu" | "cuda"
    reason: str
    probe: dict[str, Any] | None = None

    @property
    def grad_scaler(self) -> bool:
        """fp16 needs loss scaling (its 5-bit exponent underflows small gradients); bf16 and fp32 do not."""
        return self.precision == "fp16"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"grad_scaler": self.grad_scaler}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionChoice:
        return cls(d["precision"], d["requested"], d["device"], d["reason"], d.get("probe"))

    def line(self) -> str:
        scaler = " + gradient scaler" if self.grad_scaler else ""
        return f"precision {self.precision}{scaler} on {self.device} (train.precision={self.requested}): {self.reason}"


def choose(requested: str, device_type: str, *, flags: set[str] | None = None,
           probe: Callable[[], dict[str, Any]] | None = None, gpu_bf16: bool | None = None,
           gpu_name: str = "GPU") -> PrecisionChoice:
    """The decision alone, from given facts: CPU `flags`, a `probe` (called only when it can decide) and,
    on CUDA, whether the GPU supports bf16. Pure apart from calling `probe`: tested as a unit."""
    if requested != "auto":
        return PrecisionChoice(requested, requested, device_type, "set explicitly")  # type: ignore[arg-type]
    if device_type == "cuda":
        if gpu_bf16:
            return PrecisionChoice("bf16", "auto", "cuda", f"{gpu_name} supports bf16")
        return PrecisionChoice("fp16", "auto", "cuda", f"{gpu_name} has no bf16: fp16 with loss scaling")
    flags = set() if flags is None else flags
    if not host.native_bf16(flags):
        return PrecisionChoice("fp32", "auto", device_type,
                               "no native bf16 matmul on this CPU (neither avx512_bf16 nor amx_bf16): bf16 would "
                               "be emulated, several times slower")
    result = probe() if probe is not None else None
    if result is None:
        return PrecisionChoice("fp32", "auto", device_type, "native bf16 flag but no probe ran: fp32 to be safe")
    ratio = result["bf16_gflops"] / result["fp32_gflops"]
    measured = (f"probe bf16 {result['bf16_gflops']:.3g} vs fp32 {result['fp32_gflops']:.3g} GFLOP/s "
                f"({ratio:.2f}x, {result['threads']} thread(s))")
    if ratio >= MIN_SPEEDUP:
        return PrecisionChoice("bf16", "auto", device_type, f"native bf16 ({_bf16_flag(flags)}) and {measured}",
                               result)
    return PrecisionChoice("fp32", "auto", device_type,
                           f"native bf16 flag ({_bf16_flag(flags)}) but bf16 is not faster here: {measured}", result)


def _bf16_flag(flags: set[str]) -> str:
    return "+".join(f for f in host.NATIVE_BF16_FLAGS if f in flags)


def matmul_probe(shape: tuple[int, int, int] = PROBE_SHAPE, budget_s: float = PROBE_BUDGET_S) -> dict[str, Any]:
    """GFLOP/s of an MLP-like pair of linears (fp32 weights, as in LoRA training) in fp32 and under bf16
    autocast, on this process's torch threads. Sides alternate and the best time of each counts, so a
    noisy neighbour hurts both alike; at least 3 runs each, then as many as fit in `budget_s`."""
    import torch
    import torch.nn.functional as F

    tokens, hidden, inter = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=gen)
    w1 = torch.randn(inter, hidden, generator=gen) / hidden**0.5
    w2 = torch.randn(hidden, inter, generator=gen) / inter**0.5
    flops = 2 * 2 * tokens * hidden * inter

    def run(precision: str) -> float:
        t0 = time.perf_counter()
        with torch.no_grad(), autocast("cpu", precision):
            F.linear(F.linear(x, w1), w2)
        return time.perf_counter() - t0

    best = {"fp32": run("fp32"), "bf16": run("bf16")}  # warm-up (oneDNN primitive creation)
    best = {k: float("inf") for k in best}
    start, n = time.perf_counter(), 0
    while n < 3 or time.perf_counter() - start < budget_s:
        for side in best:
            best[side] = min(best[side], run(side))
        n += 1
    return {"fp32_gflops": round(flops / best["fp32"] / 1e9, 2), "bf16_gflops": round(flops / best["bf16"] / 1e9, 2),
            "runs": n, "threads": torch.get_num_threads(), "shape": list(shape)}


def resolve(requested: str, device_type: str = "cpu", cache_dir: Path | None = None,
            shape: tuple[int, int, int] = PROBE_SHAPE) -> PrecisionChoice:
    """The choice for this process's device: reads the CPU flags, runs the probe at most once per host
    fingerprint and shape (cached under `cache_dir`), asks CUDA about bf16."""
    if requested != "auto":
        return choose(requested, device_type)
    if device_type == "cuda":
        import torch

        return choose("auto", "cuda", gpu_bf16=torch.cuda.is_bf16_supported(),
                      gpu_name=torch.cuda.get_device_name())
    fp = host.fingerprint()
    name = "precision_probe:" + "x".join(map(str, shape))
    return choose("auto", device_type, flags=host.cpu_flags(),
                  probe=lambda: host.cached(cache_dir, fp, name, lambda: matmul_probe(shape)))


def probe_shape(batch_size: int, seq_len: int, model_dir: Path | None) -> tuple[int, int, int]:
    """(tokens of one worker's step, hidden size, MLP width) of the model trained; PROBE_SHAPE's widths where
    the config does not say (a family without `intermediate_size`)."""
    import json

    tokens = max(64, min(batch_size * seq_len, MAX_PROBE_TOKENS))
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text()) if model_dir else {}
    except (OSError, ValueError):
        cfg = {}
    cfg = cfg.get("text_config", cfg)  # multimodal wrappers (gemma3) keep the decoder's sizes here
    hidden, inter = cfg.get("hidden_size"), cfg.get("intermediate_size")
    if not isinstance(hidden, int) or not isinstance(inter, int):
        return (tokens, *PROBE_SHAPE[1:])
    return (tokens, hidden, inter)


def local_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(device_type: str, precision: str):
    """The autocast context for `precision` (fp32: none)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, DTYPES[precision]))


def grad_scaler(device_type: str, precision: str, distributed: bool = False):
    """A gradient scaler, enabled for fp16 only (disabled, its calls pass straight through). Distributed:
    the sharded one, which all-reduces the inf check so every rank skips the same steps under FSDP."""
    import torch

    if distributed:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device_type, enabled=precision == "fp16")
    return torch.amp.GradScaler(device_type, enabled=precision == "fp16")
