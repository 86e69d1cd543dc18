"""train.precision on Ray Train with the tiny model: `auto` resolves on the worker to what this host's probe
chose (read from the per-host cache the driver filled) and is recorded with the host; fp16 runs the gradient
scaler path on 2 FSDP2 workers (ShardedGradScaler over DTensor gradients, the inf check all-reduced), here on
CPU autocast fp16 so the GPU path's scaler logic is exercised without a GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from components.train.logic import train_adapter
from llmops import host
from llmops.settings import get_settings
from tests.synthetic import word_reversal_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from components.train._ray import ray_session

    root = tmp_path_factory.mktemp("train-precision")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMOPS_STATE_DIR", str(root / "state"))
    mp.setenv("LLMOPS_PROJECT_DIR", str(Path(__file__).resolve().parents[2]))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        settings.ensure_state_dir()
        data = {"train": word_reversal_jsonl(root / "train.jsonl", 96, 1),
                "validation": word_reversal_jsonl(root / "validation.jsonl", 16, 2)}
        with ray_session(settings):
            yield {"settings": settings, "root": root, **data}
    finally:
        mp.undo()
        get_settings.cache_clear()


def _train(env, tiny_model_dir: Path, name: str, extra: list[str]):
    settings = env["settings"]
    params = settings.params(["train.max_steps=4", "train.seq_len=128", "train.checkpoint_every=2",
                              "train.warmup_steps=1", "train.lr=3e-3", "lora.dropout=0.0", "lora.r=4", *extra])
    return train_adapter(settings, params, train_path=env["train"], validation_path=env["validation"],
                         base_model_dir=tiny_model_dir, out_dir=env["root"] / name)


def test_auto_resolves_on_the_worker_and_records_precision_and_host(env, tiny_model_dir: Path) -> None:
    from llmops.precision import probe_shape, resolve

    result = _train(env, tiny_model_dir, "adapter-auto",
                    ["train.precision=auto", "train.num_workers=1", "train.strategy=ddp", "train.batch_size=2"])
    expected = resolve("auto", "cpu", env["settings"].state_dir, probe_shape(2, 128, tiny_model_dir))  # cached
    tags = result.lineage
    assert result.metrics["precision"] == expected.precision == tags["train.precision"]
    assert tags["train.precision.requested"] == "auto" and tags["train.precision.reason"] == expected.reason
    fp = host.fingerprint()
    assert tags["host.cpu"] == fp["cpu"] and tags["host.isa"] == host.isa_tag(fp) and tags["host.key"] == fp["key"]
    assert float(tags["host.mem_bw_1t_gbs"]) > 0
    assert result.metrics["val_loss"] < result.metrics["val_loss_before"]


def test_fp16_with_sharded_grad_scaler_on_two_fsdp_workers(env, tiny_model_dir: Path) -> None:
    result = _train(env, tiny_model_dir, "adapter-fp16",
                    ["train.precision=fp16", "train.num_workers=2", "train.strategy=fsdp", "train.batch_size=1",
                     "train.max_steps=8", "train.checkpoint_every=4"])
    history = [(row["train_loss"], row["grad_norm"]) for row in result.history]
    assert result.metrics["precision"] == "fp16", history
    assert result.lineage["train.precision.reason"] == "set explicitly"
    assert result.metrics["val_loss"] < result.metrics["val_loss_before"], (result.metrics, history)
    finite = [g for _, g in history if g < float("inf")]
    assert finite and max(finite) < 1e3, history  # the true norm, not the x65536 scaled one
