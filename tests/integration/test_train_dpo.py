"""`train.objective: dpo` through the real train step (Ray Train, FSDP2, LoRA, packed pairs) on the tiny model:
the pairs' DPO loss falls and the implicit reward (policy vs the adapter-disabled reference) comes to prefer the
chosen answers. A random tiny model does not generalise to new pairs in a few steps, so this checks the loop
optimises the objective on the pairs it sees; held-out gains are measured on the real model
(benchmarks/dpo_preference.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from components.train.logic import train_adapter
from llmops.training.preference_split import build_pairs, write_pairs
from tests.synthetic import word_reversal_jsonl

pytestmark = pytest.mark.slow


def _pairs(tmp: Path, name: str, n: int, seed: int) -> Path:
    records = [json.loads(line) for line in word_reversal_jsonl(tmp / f"{name}.sft.jsonl", n, seed).read_text()
               .splitlines()]
    path = tmp / f"{name}.jsonl"
    write_pairs(build_pairs(records, seed=seed), path)
    return path


def test_dpo_run_raises_preference_accuracy(settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    params = settings.params([
        "train.objective=dpo", "train.dpo.beta=0.1", "train.max_steps=12", "train.seq_len=256",
        "train.batch_size=2", "train.num_workers=1", "train.strategy=fsdp", "train.warmup_steps=1",
        "train.lr=5e-3", "train.precision=fp32", "train.checkpoint_every=12", "lora.dropout=0.0", "lora.r=4",
    ])
    pairs = _pairs(tmp_path, "pairs", 8, 1)
    result = train_adapter(settings, params, train_path=pairs, validation_path=pairs, base_model_dir=tiny_model_dir,
                           out_dir=tmp_path / "adapter")
    m = result.metrics
    assert m["objective"] == "dpo" and m["examples"] == 8 and m["val_examples"] == 8
    # before the first step the policy IS the reference (LoRA B = 0): every margin is 0, the loss log 2
    assert m["val_loss_before"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["val_reward_accuracy_before"] == 0.0 and m["val_reward_margin_before"] == 0.0
    # after: a lower loss, and the implicit reward ranks the chosen answer first for most pairs (a wrong sign or
    # a reference that moved with the policy would leave the loss at or above log 2 and the accuracy at or below 0.5)
    assert m["val_loss"] < m["val_loss_before"] - 0.004, m
    assert m["val_reward_accuracy"] > 0.5 and m["val_reward_margin"] > 0, m
    assert {"reward_accuracy", "reward_margin"} <= result.history[-1].keys()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
