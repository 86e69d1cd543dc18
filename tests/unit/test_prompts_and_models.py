"""Prompt formatting masks the prompt; the pulled base model is real; the tiny model matches its architecture."""

from __future__ import annotations

import json
from pathlib import Path

from llmops.modeling.prompts import encode_example, format_prompt
from tests.conftest import REAL_BASE_MODEL_DIR

RECORD = {"id": "1", "instruction": "Which module provides `dumps`?", "input": "", "output": "json", "source": "t"}


def test_encode_example_masks_prompt_and_keeps_answer(base_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    ids, labels = encode_example(tok, RECORD)
    assert len(ids) == len(labels)
    n_prompt = len(tok(format_prompt(tok, RECORD), add_special_tokens=False)["input_ids"])
    assert all(x == -100 for x in labels[:n_prompt])
    answer = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    assert answer.startswith("json<|im_end|>")
    with_input = encode_example(tok, RECORD | {"input": "import json"})[0]
    assert "import json" in tok.decode(with_input)


def test_pulled_base_model_is_real_and_recorded(base_tokenizer_dir: Path) -> None:
    info = json.loads((REAL_BASE_MODEL_DIR / "provenance.json").read_text())
    # a random model of this size scores ~55,000 on plain English; the real SmolLM2 ~10-30
    assert info["perplexity_general"] < 60
    assert len(info["sha256"]) == 64
    from llmops.modeling.base import base_model_sha256, verify_base_model

    # every weight file hashed now matches what the pull recorded (the train step checks the same)
    assert verify_base_model(REAL_BASE_MODEL_DIR)["base_model.sha256"] == base_model_sha256(REAL_BASE_MODEL_DIR)
    assert (REAL_BASE_MODEL_DIR / "model.safetensors").stat().st_size > 400e6
    assert not list(REAL_BASE_MODEL_DIR.glob("*.bin")), "safetensors only"


def test_tiny_model_is_random_and_same_architecture(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.modeling.general_text import GENERAL_TEXT
    from llmops.modeling.scoring import perplexity

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    base_cfg = json.loads((REAL_BASE_MODEL_DIR / "config.json").read_text())
    assert cfg["model_type"] == base_cfg["model_type"] and cfg["vocab_size"] == base_cfg["vocab_size"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ppl = perplexity(model, AutoTokenizer.from_pretrained(tiny_model_dir), list(GENERAL_TEXT[:2]))
    assert ppl > 1000  # untrained: near-uniform over a 49k vocabulary
