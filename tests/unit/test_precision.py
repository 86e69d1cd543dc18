"""train.precision: the choice per device from given CPU flags and probe results, the probe's per-host cache,
and the fp16 gradient-scaler path of the training step (on the CPU, where no GPU is present)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmops import host, precision
from llmops.precision import choose
from llmops.training.optim import optimizer_step

AVX2_ONLY = {"fpu", "sse2", "avx2", "fma"}
ZEN4 = AVX2_ONLY | {"avx512f", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


def _probe(fp32: float, bf16: float):
    calls: list[int] = []

    def run() -> dict:
        calls.append(1)
        return {"fp32_gflops": fp32, "bf16_gflops": bf16, "threads": 2, "runs": 3, "shape": [1024, 576, 1536]}

    return run, calls


def test_cpu_without_native_bf16_picks_fp32_without_probing() -> None:
    probe, calls = _probe(100, 400)  # even a (wrong) fast probe cannot override missing hardware
    choice = choose("auto", "cpu", flags=AVX2_ONLY, probe=probe)
    assert choice.precision == "fp32" and not choice.grad_scaler
    assert "no native bf16" in choice.reason and not calls


def test_native_bf16_flag_but_slow_probe_picks_fp32() -> None:
    """ONEDNN_MAX_CPU_ISA=AVX2 on a Zen 4: the flag is there, the kernels emulate (27 vs 173 GFLOP/s measured)."""
    probe, calls = _probe(173, 27)
    choice = choose("auto", "cpu", flags=ZEN4, probe=probe)
    assert choice.precision == "fp32" and calls == [1]
    assert "not faster" in choice.reason and "27 vs fp32 173" in choice.reason
    assert choice.probe["bf16_gflops"] == 27


@pytest.mark.parametrize("flags", [ZEN4, SAPPHIRE_RAPIDS])
def test_native_bf16_and_fast_probe_picks_bf16(flags: set[str]) -> None:
    probe, _ = _probe(170, 340)
    choice = choose("auto", "cpu", flags=flags, probe=probe)
    assert choice.precision == "bf16" and "2.00x" in choice.reason


def test_a_wash_keeps_full_precision() -> None:
    probe, _ = _probe(100, 101)
    assert choose("auto", "cpu", flags=ZEN4, probe=probe).precision == "fp32"


def test_gpu_with_and_without_bf16() -> None:
    assert choose("auto", "cuda", gpu_bf16=True).precision == "bf16"
    old = choose("auto", "cuda", gpu_bf16=False, gpu_name="Tesla T4")
    assert old.precision == "fp16" and old.grad_scaler and "Tesla T4" in old.reason


@pytest.mark.parametrize("value", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_explicit_values_are_honoured(value: str, device: str) -> None:
    probe, calls = _probe(100, 1)
    choice = choose(value, device, flags=AVX2_ONLY, probe=probe, gpu_bf16=False)
    assert (choice.precision, choice.requested, choice.reason) == (value, value, "set explicitly")
    assert choice.grad_scaler == (value == "fp16") and not calls
    assert precision.PrecisionChoice.from_dict(choice.to_dict()) == choice


def test_probe_result_is_cached_per_host_fingerprint(tmp_path: Path) -> None:
    fp = host.fingerprint()
    runs: list[int] = []

    def measure() -> dict:
        runs.append(1)
        return {"fp32_gflops": 1.0, "bf16_gflops": 2.0}

    assert host.cached(tmp_path, fp, "precision_probe:1x2x3", measure) == {"fp32_gflops": 1.0, "bf16_gflops": 2.0}
    assert host.cached(tmp_path, fp, "precision_probe:1x2x3", measure)["bf16_gflops"] == 2.0
    assert runs == [1]
    assert host.cache_path(tmp_path, fp).is_file()
    other = host.fingerprint(env={"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    assert other["key"] != fp["key"]  # the same silicon capped to AVX2 is another host for timings
    host.cached(tmp_path, other, "precision_probe:1x2x3", measure)
    assert runs == [1, 1]


def test_real_probe_measures_both_sides() -> None:
    result = precision.matmul_probe((256, 128, 256), budget_s=0.01)
    assert result["fp32_gflops"] > 0 and result["bf16_gflops"] > 0 and result["runs"] >= 3


def test_probe_shape_comes_from_the_model_config(tiny_model_dir: Path) -> None:
    import json

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert precision.probe_shape(2, 512, tiny_model_dir) == (1024, cfg["hidden_size"], cfg["intermediate_size"])
    assert precision.probe_shape(8, 4096, None) == (precision.MAX_PROBE_TOKENS, *precision.PROBE_SHAPE[1:])


def _tiny_step(prec: str, scaler, *, poison: bool = False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    x = torch.randn(8, 16)
    with precision.autocast("cpu", prec):
        loss = model(x).float().pow(2).mean()
    if poison:
        loss = loss * float("inf")
    norm = optimizer_step(loss, params, optimizer, scaler, max_grad_norm=1.0)
    moved = any(not torch.equal(a, p) for a, p in zip(before, params, strict=True))
    return float(norm), moved, [p.grad for p in params]


def test_step_helper_with_fp16_grad_scaler_unscales_and_skips_overflow() -> None:
    """The fp16 path of the training step on the CPU (GPU-free): CPU autocast fp16 + torch.amp.GradScaler."""
    plain_norm, moved, grads = _tiny_step("fp32", precision.grad_scaler("cpu", "fp32"))
    assert moved and all(g is None for g in grads)  # stepped, grads zeroed
    scaler = precision.grad_scaler("cpu", "fp16")
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16
    norm, moved, _ = _tiny_step("fp16", scaler)
    assert moved and scaler.get_scale() == 2.0**16
    assert norm == pytest.approx(plain_norm, rel=0.05)  # unscaled before clipping: the true norm, not x65536
    _, moved, _ = _tiny_step("fp16", scaler, poison=True)
    assert not moved and scaler.get_scale() == 2.0**15  # overflow: step skipped, scale backed off


def test_disabled_scaler_for_bf16_and_fp32() -> None:
    for prec in ("fp32", "bf16"):
        assert not precision.grad_scaler("cpu", prec).is_enabled()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resolve_on_this_gpu() -> None:
    choice = precision.resolve("auto", "cuda")
    assert choice.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
