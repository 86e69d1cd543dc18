"""TensorRT-LLM build configuration, cache key and preflight (nothing here needs the package or a GPU)."""

from __future__ import annotations

import pytest

from llmops.settings import Settings
from serving.engine_build import trtllm as trt


def test_build_config_from_params_validates_and_hashes(settings: Settings) -> None:
    cfg = trt.TrtllmBuildConfig.from_params(settings.params().engine.trtllm)
    assert cfg.max_input_len < cfg.max_seq_len
    assert cfg.llm_api_kwargs() == {"max_batch_size": cfg.max_batch_size, "max_input_len": cfg.max_input_len,
                                    "max_seq_len": cfg.max_seq_len, "max_beam_width": 1}
    assert cfg.digest() == trt.TrtllmBuildConfig.from_params(settings.params().engine.trtllm).digest()
    assert trt.TrtllmBuildConfig(max_batch_size=16).digest() != trt.TrtllmBuildConfig().digest()
    with pytest.raises(ValueError, match="max_input_len"):
        trt.TrtllmBuildConfig(max_input_len=4096, max_seq_len=2048)
    with pytest.raises(ValueError, match="dtype"):
        trt.TrtllmBuildConfig(dtype="int3")


def test_cache_key_covers_weights_version_gpu_arch_and_config() -> None:
    cfg = trt.TrtllmBuildConfig()
    key = trt.cache_key("w", "1.2.1", (9, 0), cfg)
    assert key == trt.cache_key("w", "1.2.1", (9, 0), cfg)
    assert len({key, trt.cache_key("w2", "1.2.1", (9, 0), cfg), trt.cache_key("w", "1.3.0", (9, 0), cfg),
                trt.cache_key("w", "1.2.1", (8, 0), cfg),
                trt.cache_key("w", "1.2.1", (9, 0), trt.TrtllmBuildConfig(dtype="float16"))}) == 5
    assert trt.gpu_arch((9, 0)) == "sm90"


def test_preflight_names_each_missing_piece() -> None:
    none = trt.preflight(8.0, find_spec=lambda _n: None, gpu_probe=lambda: None)
    assert not none.ok and len(none.reasons) == 2
    assert none.skip_record().startswith("engine=tensorrt-llm skipped: tensorrt_llm package not installed")
    assert "no NVIDIA GPU" in none.skip_record()
    old_gpu = trt.preflight(8.0, find_spec=lambda _n: object(), gpu_probe=lambda: ("Tesla T4", (7, 5)),
                            version_of=lambda _n: "1.2.1")
    assert not old_gpu.ok and old_gpu.reasons == [
        "GPU Tesla T4 has compute capability 7.5, below 8.0 (engine.trtllm.min_compute_capability)"]
    ready = trt.preflight(8.0, find_spec=lambda _n: object(), gpu_probe=lambda: ("NVIDIA H100", (9, 0)),
                          version_of=lambda _n: "1.2.1")
    assert ready.ok and ready.trtllm_version == "1.2.1" and ready.capability == (9, 0)


def test_preflight_on_this_machine_skips_without_writing_anything(settings: Settings) -> None:
    """This machine has neither the package nor a GPU: the record names both; the CLI entry exits 3."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("tensorrt_llm") is not None or shutil.which("nvidia-smi"):
        pytest.skip("TensorRT-LLM or a GPU is present here")
    pf = trt.preflight()
    assert not pf.ok and any("tensorrt_llm package not installed" in r for r in pf.reasons)
    assert trt.main(["preflight"]) == 3
    out = settings.engines_dir / "trt"
    assert trt.main(["build", "--model-dir", "x", "--out", str(out), "--weights-digest", "d"]) == 3
    assert not out.exists() and not out.with_name("trt.partial").exists()
