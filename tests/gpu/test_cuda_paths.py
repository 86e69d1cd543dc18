"""The GPU code paths: Ray Train workers on CUDA (NCCL, FSDP2, bf16) and generation on CUDA.

CI has no GPU, so these skip there (and `make test` deselects the `gpu` marker); run them on a GPU machine
with `make test-gpu`. They use the tiny model, so they take seconds once Ray is up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmops.settings import Settings
from tests.synthetic import word_reversal_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

def test_ray_train_on_cuda_fsdp_bf16_saves_an_adapter_that_lowers_val_loss(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from components.train.logic import train_adapter

    workers = min(2, torch.cuda.device_count())
    params = settings.params([
        "train.max_steps=8", "train.seq_len=128", "train.checkpoint_every=4", "train.warmup_steps=1",
        "train.lr=3e-3", "train.precision=bf16", "lora.r=4", f"train.num_workers={workers}", "train.strategy=fsdp",
        "train.batch_size=2",
    ])
    result = train_adapter(
        settings, params,
        train_path=word_reversal_jsonl(tmp_path / "train.jsonl", 160, 1),
        validation_path=word_reversal_jsonl(tmp_path / "validation.jsonl", 24, 2),
        base_model_dir=tiny_model_dir, out_dir=tmp_path / "adapter",
    )
    m = result.metrics
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert m["steps"] == 8 and m["num_workers"] == workers
    assert m["val_loss"] < m["val_loss_before"]
    assert m.get("peak_gpu_mb") and m["peak_gpu_mb"] > 0, "the workers did not train on the GPU"


def test_generation_on_cuda_matches_cpu(tiny_model_dir: Path) -> None:
    from llmops.modeling.generation import generate, load_model

    cpu_model, tokenizer = load_model(tiny_model_dir, device="cpu")
    gpu_model, _ = load_model(tiny_model_dir, device="cuda")
    assert next(gpu_model.parameters()).device.type == "cuda"
    ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        cpu_logits = cpu_model(input_ids=ids).logits
        gpu_logits = gpu_model(input_ids=ids.cuda()).logits.cpu()
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=2e-3, rtol=2e-3)
    out = generate(gpu_model, tokenizer, ["Say hello.", "Count to three."], max_new_tokens=8)
    assert all(n > 0 for n in out.new_tokens) and out.seconds > 0


def test_cuda_graph_engine_matches_eager_on_cuda(tiny_model_dir: Path) -> None:
    """The captured CUDA graphs replay the same greedy tokens as the eager engine on the GPU (fp32)."""
    from serving.engines.eager import EagerEngine
    from serving.engines.static_cache import StaticCacheEngine
    from tests.unit.test_static_cache_engine import greedy_interleaved

    eager = EagerEngine(tiny_model_dir, max_slots=4, max_len=256, device="cuda")
    graph = StaticCacheEngine(tiny_model_dir, max_slots=4, max_len=256, dtype=torch.float32)
    assert graph.graphs
    ref, _ = greedy_interleaved(eager)
    got, _ = greedy_interleaved(graph)
    assert got == ref
    assert graph._graphs, "no CUDA graph was captured"
