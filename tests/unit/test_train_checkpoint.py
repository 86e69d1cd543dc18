"""Checkpoint round trip, schedule and input checks of the train step (fast: one in-process rank, no Ray)."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from components.train.logic import FAULT_ENV, _fault_step, train_adapter
from llmops.errors import DataError, LlmopsError, ModelError
from llmops.training import checkpoint as ck
from llmops.training import model as _model
from llmops.training.data import collate, encode_records, loss_sum, pack_examples
from llmops.training.optim import lr_factor, step_seed

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
RECORDS = [{"id": str(i), "instruction": f"Count to {i + 2}.", "input": "",
            "output": " ".join(str(k) for k in range(1, i + 3)), "source": "t"} for i in range(8)]


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A one-rank gloo group, so FSDP2 and the distributed state-dict API run in this process."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _setup(model_dir: Path):
    model = _model.wrap(_model.build_lora_model(model_dir, LORA, seed=0, device=torch.device("cpu")),
                        "fsdp", torch.device("cpu"), world=1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    return model, optimizer


def _step(model, optimizer, batch) -> None:
    loss, n = loss_sum(model, batch)
    (loss / n).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20) == 1.0
    decay = [lr_factor(s, 4, 20) for s in range(4, 21)]
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert lr_factor(20, 4, 20) == pytest.approx(0.0)
    assert lr_factor(0, 0, 10) == 1.0
    assert len({step_seed(42, r, s) for r in range(2) for s in range(100)}) == 200


def test_checkpoint_restores_adapter_and_optimizer_exactly(process_group, tiny_model_dir: Path, tmp_path: Path):
    """Train 2 steps, checkpoint, restore into a fresh model, train 1 more: identical to 3 steps straight."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples, _ = encode_records(tokenizer, RECORDS, 256)
    batch = collate(pack_examples(examples, 64), tokenizer.pad_token_id)

    model, optimizer = _setup(tiny_model_dir)
    for _ in range(2):
        _step(model, optimizer, batch)
    state = _model.trainable_state(model)
    assert state and all("lora_" in k for k in state)
    ck.save_trainer_state(tmp_path, state, _model.optimizer_state(model, optimizer), {"step": 2, "history": []})
    _model.save_peft_adapter(model, state, tmp_path / ck.ADAPTER_DIR)
    _step(model, optimizer, batch)
    straight = _model.trainable_state(model)

    fresh, fresh_opt = _setup(tiny_model_dir)
    model_state, optim_state, saved = ck.load_trainer_state(tmp_path)
    assert saved == {"step": 2, "history": []}
    _model.load_trainable_state(fresh, model_state)
    _model.load_optimizer_state(fresh, fresh_opt, optim_state)
    _step(fresh, fresh_opt, batch)
    resumed = _model.trainable_state(fresh)
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key

    # The checkpoint's adapter is a normal PEFT adapter holding the step-2 weights.
    files = load_file(str(tmp_path / ck.ADAPTER_DIR / "adapter_model.safetensors"))
    assert len(files) == len(state)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / ck.ADAPTER_DIR)
    loaded = {k: v for k, v in peft.state_dict().items() if "lora_" in k}
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_loading_a_checkpoint_of_another_adapter_shape_fails(process_group, tiny_model_dir: Path):
    model, _ = _setup(tiny_model_dir)
    state = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in _model.trainable_state(model).items()}
    with pytest.raises(ModelError, match="checkpoint does not match the model"):
        _model.load_trainable_state(model, state)
    partial = dict(list(_model.trainable_state(model).items())[1:])  # one LoRA tensor missing
    with pytest.raises(ModelError, match="missing"):
        _model.load_trainable_state(model, partial)


def test_fault_env_is_parsed_strictly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert _fault_step() is None
    monkeypatch.setenv(FAULT_ENV, "7")
    assert _fault_step() == 7
    monkeypatch.setenv(FAULT_ENV, "soon")
    with pytest.raises(LlmopsError, match=FAULT_ENV):
        _fault_step()


def test_train_adapter_rejects_bad_inputs_before_starting_ray(settings, tiny_model_dir: Path, tmp_path: Path):
    params = settings.params()
    kwargs = {"train_path": tmp_path / "none.jsonl", "validation_path": tmp_path / "none.jsonl",
              "out_dir": tmp_path / "out"}
    with pytest.raises(ModelError, match="no model checkpoint"):
        train_adapter(settings, params, base_model_dir=tmp_path / "nomodel", **kwargs)
    with pytest.raises(DataError):
        train_adapter(settings, params, base_model_dir=tiny_model_dir, **kwargs)
    with pytest.raises(LlmopsError, match=r"train\.max_steps"):
        train_adapter(settings, settings.params(["train.max_steps=0"]), base_model_dir=tiny_model_dir, **kwargs)
    # a pulled base whose weights no longer match what the pull recorded: train refuses it, naming the fix
    import json
    import shutil

    from llmops.modeling.base import PROVENANCE
    from llmops.modeling.hashing import file_hashes

    changed = Path(shutil.copytree(tiny_model_dir, tmp_path / "changed-base"))
    (changed / PROVENANCE).write_text(json.dumps({
        "model_id": "tiny", "path": str(changed), "sha256": "0" * 64, "source": "test", "perplexity_general": 1.0,
        "seconds": 0.0, "files": {name: "0" * 64 for name in file_hashes(changed)}}))
    with pytest.raises(ModelError, match="is not the checkpoint that was pulled") as err:
        train_adapter(settings, params, base_model_dir=changed, **kwargs)
    assert "llmops model pull --force" in str(err.value)
    assert not (settings.state_dir / "ray-results").exists()
