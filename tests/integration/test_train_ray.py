"""The train step end to end on Ray Train with the tiny model: two Ray runs shared by every assertion.

Run A: 2 workers, FSDP2, batch 1 per worker, and rank 1 killed before step 4 (LLMOPS_FAULT_KILL_AT_STEP),
so it must resume from the step-2 checkpoint. Run B: 1 worker, DDP, batch 2 — the same global batch,
seed and data, uninterrupted. Dropout is off and fp32 is used so the two must agree to float tolerance:
that checks at once the sharding/gradient-averaging math, gradient clipping on sharded gradients, the
FSDP2 adapter gather, and that resuming replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from components.train.logic import TrainResult, train_adapter
from llmops.settings import Settings, get_settings
from tests.synthetic import word_reversal_jsonl

pytestmark = pytest.mark.slow

STEPS = 6
KILL_AT = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Module-wide settings (own state dir), data files and one Ray instance shared by both runs."""
    from components.train._ray import ray_session

    root = tmp_path_factory.mktemp("train")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMOPS_STATE_DIR", str(root / "state"))
    # Checkpoints outside the state dir, as a cluster's shared storage would be: the setting is honoured.
    mp.setenv("LLMOPS_RAY_STORAGE", str(root / "shared-storage"))
    mp.setenv("LLMOPS_PROJECT_DIR", str(Path(__file__).resolve().parents[2]))
    get_settings.cache_clear()
    try:  # undone even when Ray fails to start: the settings must not leak into later modules
        settings = get_settings()
        settings.ensure_state_dir()
        data = {
            "train": word_reversal_jsonl(root / "train.jsonl", 160, 1),
            "validation": word_reversal_jsonl(root / "validation.jsonl", 24, 2),
        }
        with ray_session(settings):
            yield {"settings": settings, "root": root, **data}
    finally:
        mp.undo()
        get_settings.cache_clear()


def _params(settings: Settings, extra: list[str]):
    return settings.params([
        f"train.max_steps={STEPS}", "train.seq_len=128", "train.checkpoint_every=2", "train.warmup_steps=1",
        "train.lr=3e-3", "train.precision=fp32", "train.max_failures=2", "lora.dropout=0.0", "lora.r=4",
        # Clip hard so every step clips: the global grad norm over FSDP2 shards must match DDP's.
        "train.max_grad_norm=0.05",
        *extra,
    ])


@pytest.fixture(scope="module")
def fsdp_run(env, tiny_model_dir: Path) -> tuple[TrainResult, str]:
    from llmops.tracking import start_pipeline_run

    settings = env["settings"]
    parent = start_pipeline_run(settings, "test-train")
    params = _params(settings, ["train.num_workers=2", "train.strategy=fsdp", "train.batch_size=1"])
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMOPS_FAULT_KILL_AT_STEP", str(KILL_AT))
    try:
        result = train_adapter(settings, params, train_path=env["train"], validation_path=env["validation"],
                               base_model_dir=tiny_model_dir, out_dir=env["root"] / "adapter-fsdp",
                               parent_run_id=parent)
    finally:
        mp.undo()
    return result, parent


@pytest.fixture(scope="module")
def single_run(env, tiny_model_dir: Path) -> TrainResult:
    settings = env["settings"]
    params = _params(settings, ["train.num_workers=1", "train.strategy=ddp", "train.batch_size=2"])
    return train_adapter(settings, params, train_path=env["train"], validation_path=env["validation"],
                         base_model_dir=tiny_model_dir, out_dir=env["root"] / "adapter-single")


def test_fsdp_run_writes_a_loadable_adapter_that_lowers_val_loss(env, fsdp_run, tiny_model_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.training.data import collate, encode_records, loss_sum, pack_examples, read_records

    result, _ = fsdp_run
    m = result.metrics
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert m["val_loss"] < m["val_loss_before"]
    assert m["num_workers"] == 2 and m["strategy"] == "fsdp" and m["steps"] == STEPS
    assert m["tokens"] > 0 and m["tokens_per_s"] > 0 and m["peak_rss_mb"] > 0
    # The saved adapter, loaded the ordinary PEFT way in this process, reproduces the val loss the
    # sharded workers measured: what was saved is what was trained.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.adapter_dir)
    model.eval()
    examples, _ = encode_records(tokenizer, read_records(env["validation"]), 128)
    with torch.no_grad():
        total, n = loss_sum(model, collate(pack_examples(examples, 128), tokenizer.pad_token_id))
    assert total.item() / n == pytest.approx(m["val_loss"], rel=1e-4)


def test_killed_worker_resumes_from_checkpoint_and_finishes_every_step(env, fsdp_run):
    result, _ = fsdp_run
    assert result.metrics["resumed"] >= 1
    assert [row["step"] for row in result.history] == list(range(1, STEPS + 1))
    settings = env["settings"]
    storage = Path(settings.ray_storage)
    assert storage.parent == settings.state_dir.parent and not (settings.state_dir / "ray-results").exists()
    assert list(storage.glob("train-*/checkpoint-*")), "Ray Train checkpoints belong in LLMOPS_RAY_STORAGE"
    markers = list(storage.glob("train-*/fault-injected"))
    assert len(markers) == 1 and f"before step {KILL_AT}" in markers[0].read_text()


def test_two_worker_fsdp_adapter_equals_single_worker_adapter(fsdp_run, single_run):
    from safetensors.torch import load_file

    fsdp, _ = fsdp_run
    assert single_run.metrics["num_workers"] == 1 and single_run.metrics["resumed"] == 0
    a = load_file(str(fsdp.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(single_run.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)
    assert any(not torch.all(t == 0) for k, t in a.items() if "lora_B" in k)  # LoRA B starts at 0: it moved
    for key in ("train_loss", "grad_norm"):
        assert [row[key] for row in fsdp.history] == pytest.approx([row[key] for row in single_run.history],
                                                                   rel=1e-5), key
    assert all(row["grad_norm"] > 0.05 for row in fsdp.history)  # every step was clipped


def test_mlflow_child_run_has_curves_params_and_plot(env, fsdp_run):
    from mlflow import MlflowClient

    result, parent = fsdp_run
    client = MlflowClient(env["settings"].tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["train.strategy"] == "fsdp" and run.data.params["lora.r"] == "4"
    for key in ("train_loss", "lr", "grad_norm", "step_tokens_per_s"):
        assert [p.step for p in client.get_metric_history(result.run_id, key)] == list(range(1, STEPS + 1))
    for key in ("val_loss", "val_loss_before", "peak_rss_mb", "tokens_per_s", "resumed"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "train")}
    assert "train/loss_curve.png" in artifacts
    png = Path(client.download_artifacts(result.run_id, "train/loss_curve.png", str(env["root"])))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
