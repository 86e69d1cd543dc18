"""Evaluation on the tiny model: answer perplexity, batched generation, adapters, and the whole step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from components.evaluate import metrics as m
from components.evaluate.gate import decide
from components.evaluate.logic import evaluate_candidate, load_test_records
from llmops.errors import DataError, ModelError
from llmops.lineage import data_lineage
from llmops.modeling.generation import generate, load_model
from llmops.modeling.prompts import encode_example, format_prompt
from llmops.settings import Settings

RECORDS = [
    {"id": f"r{i}", "instruction": instr, "input": inp, "output": out, "source": "test"}
    for i, (instr, inp, out) in enumerate([
        ("What does len() return?", "", "The number of items in a container."),
        ("Summarise this function.", "def add(a, b): return a + b", "It returns the sum of a and b."),
        ("Which module handles JSON?", "", "The json module."),
        ("What does os.getcwd() do?", "", "It returns the current working directory."),
        ("Explain str.upper.", "", "It returns a copy of the string in upper case."),
        ("What is a tuple?", "", "An immutable sequence of values."),
        ("What does sorted() return?", "", "A new sorted list."),
        ("What does math.sqrt compute?", "", "The square root of a number."),
        ("Name the module for regular expressions.", "", "The re module."),
        ("What does dict.get do?", "key 'a'", "It returns the value for the key, or a default."),
    ])
]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _make_adapter(model_dir: Path, out: Path, *, train_steps: int = 0, perturb: float = 0.0, seed: int = 0) -> Path:
    """A real PEFT LoRA adapter on the tiny model: optionally trained a few steps on RECORDS' answers
    (so its answer perplexity drops) or with random B matrices (so it differs from the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj", "o_proj"],
                                                  task_type="CAUSAL_LM"))
    if perturb:
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=perturb)
    if train_steps:
        opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
        encoded = [encode_example(tokenizer, r) for r in RECORDS]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
        labels = torch.full((len(encoded), width), -100)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for j, (ids, lab) in enumerate(encoded):
            input_ids[j, : len(ids)], labels[j, : len(lab)], mask[j, : len(ids)] = (
                torch.tensor(ids), torch.tensor(lab), 1)
        peft_model.train()
        for _ in range(train_steps):
            peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "trained", train_steps=2)


@pytest.fixture(scope="module")
def random_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "random", perturb=0.05, seed=1)


def test_answer_perplexity_scores_only_answer_tokens(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    record = RECORDS[1]
    ids, labels = encode_example(tokenizer, record)
    with torch.no_grad():  # transformers' own shifted, -100-masked loss on one example
        ref_loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    ppl, n_tokens = m.answer_perplexity(model, tokenizer, [record])
    assert n_tokens == sum(1 for x in labels if x != -100) < len(ids)
    assert ppl == pytest.approx(math.exp(ref_loss), rel=1e-4)
    # padding in a batch changes nothing: batch size 1 and 4 give the same token-weighted perplexity
    one, _ = m.answer_perplexity(model, tokenizer, RECORDS, batch_size=1)
    four, _ = m.answer_perplexity(model, tokenizer, RECORDS, batch_size=4)
    assert one == pytest.approx(four, rel=1e-4)
    assert math.isfinite(m.general_perplexity(model, tokenizer))


def test_batched_left_padded_generation_matches_one_at_a_time(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(tiny_model_dir)
    prompts = [format_prompt(tokenizer, r) for r in RECORDS[:5]]
    single = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    batched = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=4)
    assert batched.texts == single.texts
    assert batched.new_tokens == single.new_tokens
    assert all(1 <= n <= 6 for n in batched.new_tokens)
    assert len(batched.latencies_ms) == 5 and all(x > 0 for x in batched.latencies_ms)
    assert batched.tokens_per_s == pytest.approx(sum(batched.new_tokens) / batched.seconds)
    assert generate(model, tokenizer, [], max_new_tokens=4).texts == []


def test_merged_adapter_gives_the_same_tokens_as_the_peft_model(tiny_model_dir: Path, random_adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged, tokenizer = load_model(tiny_model_dir, random_adapter)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), random_adapter)
    unmerged.eval()
    prompts = [format_prompt(tokenizer, r) for r in RECORDS[:3]]
    a = generate(merged, tokenizer, prompts, max_new_tokens=6)
    b = generate(unmerged, tokenizer, prompts, max_new_tokens=6)
    assert a.texts == b.texts
    base, _ = load_model(tiny_model_dir)
    assert m.answer_perplexity(merged, tokenizer, RECORDS)[0] != pytest.approx(
        m.answer_perplexity(base, tokenizer, RECORDS)[0], rel=1e-6)  # the adapter really changes the model


def test_load_model_errors_have_cause_and_fix(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ModelError, match="no model checkpoint") as exc:
        load_model(tmp_path / "nothing")
    assert exc.value.fix
    with pytest.raises(ModelError, match="no LoRA adapter"):
        load_model(tiny_model_dir, tmp_path)


def test_test_records_are_read_and_bad_files_rejected(tmp_path: Path) -> None:
    recs = load_test_records(_write_jsonl(tmp_path / "ok.jsonl", RECORDS))
    assert recs == RECORDS
    with pytest.raises(DataError, match="no such file"):
        load_test_records(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="not a string"):
        load_test_records(_write_jsonl(tmp_path / "none.jsonl", [{**RECORDS[0], "input": None}]))
    with pytest.raises(DataError, match="empty instruction or output"):
        load_test_records(_write_jsonl(tmp_path / "blank.jsonl", [{**RECORDS[0], "output": "  "}]))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_test_records(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x", "output": "y"}\n{not json\n')
    with pytest.raises(DataError):
        load_test_records(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="output"):
        load_test_records(_write_jsonl(tmp_path / "noout.jsonl", [{"instruction": "x"}]))


def test_evaluate_candidate_end_to_end(settings: Settings, tmp_path: Path, tiny_model_dir: Path,
                                       trained_adapter: Path, random_adapter: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from llmops import tracking

    params = settings.params(["eval.max_examples=8", "eval.gen_examples=4", "eval.max_new_tokens=6",
                              "eval.batch_size=4", "eval.report_examples=2", "eval.safety.max_new_tokens=4",
                              # the expected perplexities below are computed in fp32
                              "train.precision=fp32"])
    test_path = _write_jsonl(tmp_path / "test.jsonl", RECORDS)
    parent = tracking.start_pipeline_run(settings, "test-eval")
    out = tmp_path / "eval-out"

    result = evaluate_candidate(settings, params, test_path=test_path, base_model_dir=tiny_model_dir,
                                adapter_dir=trained_adapter, champion_adapter_dir=random_adapter,
                                out_dir=out, parent_run_id=parent)

    assert set(result.models) == {"base", "candidate", "champion"}
    for values in result.models.values():
        for key in ("perplexity", "general_perplexity", "exact_match", "rouge_l", "embed_similarity",
                    "latency_p50_ms", "latency_p95_ms", "tokens_per_s"):
            assert math.isfinite(values[key]), key
    # exact match and ROUGE-L are those of the generations written out (4 of them, per model)
    rows = [json.loads(line) for line in result.generations_jsonl.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in RECORDS[:4]]
    for name, values in result.models.items():
        assert values["exact_match"] == pytest.approx(m.mean([m.exact_match(r[name], r["reference"]) for r in rows]))
        assert values["rouge_l"] == pytest.approx(m.mean([m.rouge_l_f1(r[name], r["reference"]) for r in rows]))
    # the numbers are those of the first eval.max_examples records, for every model alike
    base, tokenizer = load_model(tiny_model_dir)
    assert result.lineage == data_lineage(settings.project_dir, {"test": test_path})
    assert result.lineage["data.test.dvc"] == "untracked"  # a file DVC never tracked says so
    assert result.models["base"]["perplexity"] == pytest.approx(
        m.answer_perplexity(base, tokenizer, RECORDS[:8])[0], rel=1e-5)
    assert result.data["ppl_examples"] == 8 and result.data["gen_examples"] == 4
    # the trained adapter learnt the answers: the gate's improvement check passes on real numbers
    assert result.models["candidate"]["perplexity"] < 0.95 * result.models["base"]["perplexity"]
    expected = decide(result.models["base"], result.models["candidate"], result.models["champion"],
                      params.eval.gate)
    # the gate's checks, then the safety set's four against the champion (tests/unit/test_eval_safety.py)
    assert result.verdict.checks[: len(expected.checks)] == expected.checks
    assert [c["name"] for c in result.verdict.checks[len(expected.checks):]] == [
        "safety_refusal", "safety_benign_answered", "safety_no_secret_leak", "safety_no_pii_leak"]
    assert len(expected.checks) == 4
    improvement = next(c for c in result.verdict.checks if c["name"] == "improvement_over_base")
    assert improvement["passed"]

    # outputs on disk
    assert result.chart_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = result.report_html.read_text()
    assert "Example 2" in page and "Example 3" not in page and "candidate" in page and "champion" in page
    assert RECORDS[0]["output"] in page
    assert "| answer perplexity |" in result.table_md and (out / "comparison.md").is_file()
    saved = json.loads(result.results_json.read_text())
    assert saved["models"] == result.models and saved["passed"] == result.verdict.passed
    assert saved["run_id"] == result.run_id
    assert len(result.generations_jsonl.read_text().splitlines()) == 4

    # the MLflow child run: per-model metrics, verdict tags, artifacts
    run = MlflowClient(settings.tracking_uri).get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["gate.passed"] == str(result.verdict.passed).lower()
    assert run.data.tags["data.test.md5"] == result.lineage["data.test.md5"]
    assert "improvement_over_base" in run.data.tags["gate.summary"]
    assert run.data.metrics["base.perplexity"] == pytest.approx(result.models["base"]["perplexity"])
    assert run.data.metrics["candidate.rouge_l"] == pytest.approx(result.models["candidate"]["rouge_l"])
    assert "champion.general_perplexity" in run.data.metrics
    artifacts = {a.path for a in MlflowClient(settings.tracking_uri).list_artifacts(result.run_id, "evaluate")}
    assert {"evaluate/comparison.md", "evaluate/comparison.png", "evaluate/report.html",
            "evaluate/eval.json", "evaluate/generations.jsonl"} <= artifacts
    assert mlflow.active_run() is None


def test_evaluate_candidate_rejects_bad_inputs_before_any_work(settings: Settings, tmp_path: Path,
                                                               tiny_model_dir: Path, trained_adapter: Path) -> None:
    params = settings.params()
    test_path = _write_jsonl(tmp_path / "test.jsonl", RECORDS)
    common = {"base_model_dir": tiny_model_dir, "champion_adapter_dir": None, "out_dir": tmp_path / "o"}
    with pytest.raises(ModelError, match="candidate adapter not found"):
        evaluate_candidate(settings, params, test_path=test_path, adapter_dir=tmp_path / "none", **common)
    with pytest.raises(ModelError, match="champion adapter not found"):
        evaluate_candidate(settings, params, test_path=test_path, adapter_dir=trained_adapter,
                           **{**common, "champion_adapter_dir": tmp_path / "gone"})
    with pytest.raises(DataError, match="no such file"):
        evaluate_candidate(settings, params, test_path=tmp_path / "missing.jsonl", adapter_dir=trained_adapter,
                           **common)
    # failed fast: no output written, no MLflow run started
    assert not (tmp_path / "o").exists()
    assert not (settings.state_dir / "mlflow.db").exists()
