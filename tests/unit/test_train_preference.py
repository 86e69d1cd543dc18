"""DPO in the training path (llmops/training/preference.py): data layout, and loss + gradients equal to TRL's
DPOTrainer on the same batch (TRL's own collator, its PEFT reference = adapter disabled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmops.training.preference import (
    collate_pairs,
    encode_pairs,
    pack_pairs,
    pair_counts,
    preference_loss,
    read_preferences,
    score_pairs,
)

RECORDS = [
    {"instruction": "What is `abc.ABC`?", "input": "", "chosen": "A helper class that has ABCMeta as its metaclass.",
     "rejected": "A decorator indicating abstract classmethods.", "source": "built"},
    {"instruction": "Which module do I import `deque` from?", "chosen": "collections", "rejected": "argparse",
     "request_ids": ["r1"]},
    {"instruction": "Write the call signature of `json.dumps`.", "input": "indent only",
     "chosen": "json.dumps(obj, *, indent=None)", "rejected": "json.dumps(x) -> str, probably"},
]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_pairs_stay_together_and_sides_are_encoded_like_sft(tokenizer) -> None:
    from llmops.modeling.prompts import encode_example

    pairs, stats = encode_pairs(tokenizer, RECORDS, max_len=256)
    assert stats.examples == 3 and not stats.truncated
    ids, labels = encode_example(tokenizer, {**RECORDS[1], "output": "collections"})
    assert pairs[1].chosen.input_ids == ids and pairs[1].chosen.labels == labels
    blocks = pack_pairs(pairs, seq_len=2 * max(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs))
    assert sum(b.n_examples for b in blocks) == 6 and all(b.n_examples % 2 == 0 for b in blocks)
    assert sum(pair_counts(b)[0] for b in blocks) == 3
    assert sum(pair_counts(b)[1] for b in blocks) == sum(p.chosen.n_targets for p in pairs)
    batch = collate_pairs(blocks, tokenizer.pad_token_id)
    seq = batch["sequence"][batch["targets"] != -100]
    assert sorted(set(seq.tolist())) == list(range(6))


def test_read_preferences_names_the_bad_line(tmp_path: Path) -> None:
    from llmops.errors import DataError

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"instruction": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DataError, match=r"line 2 .*rejected"):
        read_preferences(path)
    path.write_text(json.dumps(RECORDS[1]) + "\n\n")
    assert read_preferences(path)[0]["chosen"] == "collections"


def _lora_model(model_dir: Path):
    """Our training model with an adapter that really moves the policy off the reference (B = 0 at init
    would make them equal)."""
    from llmops.training import attention
    from llmops.training.model import build_lora_model

    model = build_lora_model(model_dir, LORA, seed=0, device=torch.device("cpu"), attn_implementation=attention.NAME)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_loss_and_gradients_equal_trl_dpo_trainer(tiny_model_dir: Path, tokenizer, tmp_path: Path,
                                                  sft_weight: float) -> None:
    """Our packed DPO loss (reference = adapter disabled) vs TRL's DPOTrainer.compute_loss on TRL's padded batch
    of the same token ids: the loss and every LoRA gradient agree to 1e-5."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from llmops.modeling.families import resolve_target_modules

    beta = 0.1
    pairs, _ = encode_pairs(tokenizer, RECORDS, max_len=256)
    ours = _lora_model(tiny_model_dir)
    state = {n: p.detach().clone() for n, p in ours.named_parameters() if "lora_" in n}
    blocks = pack_pairs(pairs, seq_len=256)
    terms = preference_loss(ours, collate_pairs(blocks, tokenizer.pad_token_id), beta)
    loss = terms.dpo_sum / terms.pairs + sft_weight * terms.nll_sum / terms.chosen_tokens
    loss.backward()
    assert terms.margins.abs().min() > 0  # the adapter really moves the policy off the reference

    # TRL's own PEFT path: it wraps the base with this LoRA config, so its reference is the adapter disabled
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, task_type="CAUSAL_LM",
                             target_modules=resolve_target_modules(base, "auto"))
    losses = ["sigmoid", "sft"] if sft_weight else ["sigmoid"]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=losses,
                     loss_weights=[1.0, sft_weight] if sft_weight else None, report_to="none", use_cpu=True,
                     per_device_train_batch_size=len(RECORDS), max_length=None, bf16=False)
    trainer = DPOTrainer(model=base, args=args, processing_class=tokenizer, peft_config=peft_config,
                         train_dataset=Dataset.from_list([{"prompt": "p", "chosen": " c", "rejected": " r"}]))
    loaded = trainer.model.load_state_dict(state, strict=False)
    assert not loaded.unexpected_keys and not [k for k in loaded.missing_keys if "lora_" in k]
    n_prompt = [ex.labels.count(-100) for ex in (p.chosen for p in pairs)]
    examples = [{"prompt_ids": p.chosen.input_ids[:k], "chosen_ids": p.chosen.input_ids[k:],
                 "rejected_ids": p.rejected.input_ids[k:]} for p, k in zip(pairs, n_prompt, strict=True)]
    assert all(p.rejected.input_ids[:k] == e["prompt_ids"] for p, k, e in zip(pairs, n_prompt, examples, strict=True))
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(examples)
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, batch)
    trl_loss.backward()

    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    theirs = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
    mine = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert mine.keys() == theirs.keys() and len(mine) > 0
    for name, grad in mine.items():
        torch.testing.assert_close(grad, theirs[name], atol=1e-5, rtol=0, msg=name)
    assert max(g.abs().max().item() for g in mine.values()) > 1e-3  # gradients that could have differed


def test_score_pairs_reads_the_models_own_preference(tiny_model_dir: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in RECORDS]
    a, b = score_pairs(model, tokenizer, RECORDS, 256), score_pairs(model, tokenizer, swapped, 256)
    assert a["preference_pairs"] == 3
    assert a["preference_accuracy"] + b["preference_accuracy"] == pytest.approx(1.0)  # no ties on random logits
    assert a["preference_logp_margin"] == pytest.approx(-b["preference_logp_margin"], rel=1e-6)


def test_built_pairs_are_deterministic_hard_negatives_of_the_same_kind() -> None:
    from llmops.training.preference_split import build_pairs, template
    from tests.conftest import REPO

    lines = (REPO / "data" / "sample" / "base.jsonl").read_text().splitlines()[:300]
    records = [json.loads(line) for line in lines]
    pairs = build_pairs(records, seed=3)
    assert pairs == build_pairs(records, seed=3) and pairs != build_pairs(records, seed=4)
    assert len(pairs) == len(records) and all(p["chosen"].strip() != p["rejected"].strip() for p in pairs)
    answers_by_kind: dict[str, set[str]] = {}
    for r in records:
        answers_by_kind.setdefault(template(r), set()).add(r["output"])
    same_kind = sum(p["rejected"] in answers_by_kind[template(p)] for p in pairs)
    assert same_kind / len(pairs) > 0.95  # the wrong answer is (almost always) an answer of the same kind


def test_gate_holds_preference_accuracy_against_the_champion_only_where_scored() -> None:
    from components.evaluate.gate import decide
    from llmops.params import GateParams

    gate = GateParams(min_ppl_improvement=0.05, max_regression=0.02, max_general_ppl_increase=0.25)
    base = {"perplexity": 10.0, "general_perplexity": 20.0, "rouge_l": 0.2}
    good = {"perplexity": 9.0, "general_perplexity": 20.0, "rouge_l": 0.3}
    assert "preference_accuracy" not in {c["name"] for c in decide(base, good, None, gate).checks}
    champion = {**good, "preference_accuracy": 0.80}
    worse = decide({**base, "preference_accuracy": 0.5}, {**good, "preference_accuracy": 0.70}, champion, gate)
    check = next(c for c in worse.checks if c["name"] == "preference_accuracy")
    assert not worse.passed and check["reference_model"] == "champion" and check["limit"] == pytest.approx(0.784)
    better = decide({**base, "preference_accuracy": 0.5}, {**good, "preference_accuracy": 0.79}, None, gate)
    assert better.passed and any(c["name"] == "preference_accuracy" for c in better.checks)


def test_evaluate_scores_every_model_on_the_configured_split(settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    """components/evaluate/preference.py: base first (reward margin 0 against itself), then the candidate
    (its merged adapter), each on the held-out pairs; a configured split that is missing is a clear error."""
    from components.evaluate.preference import load_split, score_models
    from llmops.errors import DataError
    from llmops.training.model import save_peft_adapter, trainable_state

    split = tmp_path / "held_out.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    adapter = save_peft_adapter(_lora_model(tiny_model_dir), trainable_state(_lora_model(tiny_model_dir)),
                                tmp_path / "adapter")
    params = settings.params([f"eval.gate.preference_split={split}", "train.seq_len=256"])
    models: dict[str, dict] = {"base": {}, "candidate": {}}
    score_models(settings, params, [("base", None), ("candidate", adapter)], tiny_model_dir, models, "fp32")
    assert models["base"]["preference_pairs"] == 3 and models["base"]["preference_reward_margin"] == 0.0
    assert 0.0 <= models["candidate"]["preference_accuracy"] <= 1.0
    assert models["candidate"]["preference_reward_margin"] != 0.0  # the adapter changed the log-probs
    assert load_split(settings, settings.params()) is None  # not configured: no check
    with pytest.raises(DataError, match="preference_split"):
        load_split(settings, settings.params([f"eval.gate.preference_split={tmp_path / 'none.jsonl'}"]))
