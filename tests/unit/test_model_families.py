"""The open model families (Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3, Phi-3) through our own code, each
on a tiny random model of its architecture with its own chat template (llmops/modeling/tiny.py): LoRA
targets and FSDP units read from the model's structure, the chat format per family (prompt masked, the
family's end-of-turn learned and stopped at), packed training through the train step's pieces (FSDP2 on a
one-rank gloo group; the loss falls), merged weights generating the adapter's greedy tokens (as the
register step verifies), and the eager engine's batched decode plus schema-constrained chat through the
server app. The whole DAG on a non-Llama family is in tests/integration/test_finetune_pipeline.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from llmops.errors import ModelError
from llmops.modeling.tiny import FAMILIES, build_tiny_model

FAMILY_NAMES = sorted(FAMILIES)
# what each family's attention block really holds (the structure `auto` must find, not a table it reads)
ATTENTION = {"phi3": ["o_proj", "qkv_proj"]}
END_OF_TURN = {"gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>", "phi3": "<|end|>", "mistral": "<|im_end|>"}
RECORDS = [{"id": str(i), "instruction": f"Name item {i} of the shopping list, please." * (1 + i % 3),
            "input": "" if i % 2 else "milk, tea, bread", "output": ["tea", "milk", "bread"][i % 3]}
           for i in range(12)]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory, base_tokenizer_dir: Path) -> dict[str, Path]:
    """One tiny checkpoint per family; the Mistral and Gemma ones with an 8-token sliding window, so
    prompts longer than the window exercise it in training, packing and the engine."""
    root = tmp_path_factory.mktemp("families")
    return {f: build_tiny_model(root / f, base_tokenizer_dir, family=f,
                                overrides={"sliding_window": 8} if f in ("mistral", "gemma2", "gemma3") else None)
            for f in FAMILY_NAMES}


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group: FSDP2 wraps and gathers exactly as in a Ray worker."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def _registry_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry") / "state"


@pytest.fixture
def shared_settings(_registry_state: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings over one state dir for the whole module: one MLflow store (created once) for every family's
    registered versions."""
    from llmops.settings import get_settings
    from tests.conftest import REPO

    monkeypatch.setenv("LLMOPS_STATE_DIR", str(_registry_state))
    monkeypatch.setenv("LLMOPS_PROJECT_DIR", str(REPO))
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_state_dir()
    yield settings
    get_settings.cache_clear()


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_targets_and_fsdp_units_come_from_the_model(family: str, family_dirs: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    from llmops.modeling.families import decoder_layers, resolve_target_modules

    model = AutoModelForCausalLM.from_pretrained(family_dirs[family])
    expected = ATTENTION.get(family, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert sorted(resolve_target_modules(model, "auto")) == sorted(expected)
    layers = decoder_layers(model)
    assert layers == list(model.model.layers)  # the blocks the model names in _no_split_modules
    assert resolve_target_modules(model, ["o_proj"]) == ["o_proj"]  # an explicit list still works
    with pytest.raises(ModelError, match=r"does not have.*o_proj") as err:
        resolve_target_modules(model, ["q_proj", "o_proj"] if family == "phi3" else ["qkv_proj"])
    assert "auto" in str(err.value.fix)


def test_auto_targets_stay_in_the_language_model_of_a_multimodal_gemma3() -> None:
    """AutoModelForCausalLM loads a Gemma 3 4B+ checkpoint as Gemma3ForConditionalGeneration, whose vision
    tower has q/k/v_proj too: `auto` must put LoRA on the language model's attention only."""
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    from llmops.modeling.families import decoder_layers, resolve_target_modules

    text = Gemma3TextConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    assert {type(m).__name__ for m in decoder_layers(model)} >= {"Gemma3DecoderLayer", "SiglipEncoderLayer"}
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=resolve_target_modules(model, "auto")))
    wrapped = {n.split(".lora_A")[0] for n, _ in peft.named_parameters() if "lora_A" in n}
    assert len(wrapped) == 2 * 4 and all(".language_model.layers." in n for n in wrapped), wrapped


def test_target_modules_param_accepts_auto_or_a_list() -> None:
    from llmops.params import load_params
    from tests.conftest import REPO

    assert load_params(REPO / "params.yaml", []).lora.target_modules == "auto"
    assert load_params(REPO / "params.yaml", ["lora.target_modules=[q_proj,v_proj]"]).lora.target_modules == [
        "q_proj", "v_proj"]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_chat_format_is_the_familys_own(family: str, family_dirs: dict[str, Path]) -> None:
    from llmops.modeling.prompts import encode_example, format_prompt, stop_token_ids

    tok = _tokenizer(family_dirs[family])
    record = RECORDS[0]
    prompt = format_prompt(tok, record)
    assert prompt == tok.apply_chat_template([{"role": "user", "content": "Name item 0 of the shopping list, please."
                                               "\n\nmilk, tea, bread"}], tokenize=False, add_generation_prompt=True)
    ids, labels = encode_example(tok, record)
    answer = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != -100])
    end = END_OF_TURN.get(family, "<|im_end|>")
    assert answer.strip().startswith("tea" + end)  # the answer, then this family's end of turn
    assert tok.decode(ids[: labels.count(-100)]) == prompt  # everything before it is masked
    if family not in ("llama", "qwen2", "qwen3"):
        assert "<|im_start|>assistant" not in prompt  # no ChatML where the family has its own turns
    # generation stops at the end-of-turn token even without a generation config naming it
    assert tok.convert_tokens_to_ids(end) in stop_token_ids(tok)


def test_a_checkpoint_without_chat_template_is_a_clear_error(family_dirs: dict[str, Path]) -> None:
    from llmops.modeling.prompts import format_prompt

    tok = _tokenizer(family_dirs["mistral"])
    tok.chat_template = None
    with pytest.raises(ModelError, match="no chat template"):
        format_prompt(tok, RECORDS[0])


def _train(model_dir: Path, steps: int) -> tuple[float, float, object]:
    """A few optimizer steps the way a Ray worker takes them: packed blocks from the seeded stream, the
    token-mean loss, FSDP2 over the family's decoder layers, packed attention."""
    from llmops.training import attention as _attention
    from llmops.training import model as _model
    from llmops.training.data import BlockStream, collate, encode_records, loss_sum, pack_examples
    from llmops.training.optim import lr_factor

    tok = _tokenizer(model_dir)
    examples, stats = encode_records(tok, RECORDS, max_len=128)
    assert stats.dropped == 0
    blocks = pack_examples(examples, seq_len=160, seed=0)
    stream = BlockStream(len(blocks), seed=0)
    model = _model.wrap(_model.build_lora_model(model_dir, LORA, 0, torch.device("cpu"), _attention.NAME),
                        "fsdp", torch.device("cpu"), 1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-2, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, 1, steps))
    every = collate(blocks, tok.pad_token_id)

    def loss_on_all() -> float:
        with torch.no_grad():
            total, n = loss_sum(model, every)
        return total.item() / n

    before = loss_on_all()
    model.train()
    for step in range(steps):
        batch = collate([blocks[i] for i in stream.step_indices(step, 2)], tok.pad_token_id)
        loss, n = loss_sum(model, batch)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return before, loss_on_all(), model


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_trains_and_the_merged_model_generates_the_adapters_tokens(
        family: str, family_dirs: dict[str, Path], process_group, shared_settings, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from components.evaluate.metrics import answer_perplexity
    from components.register.logic import greedy_tokens
    from llmops.modeling.generation import generate, load_model
    from llmops.modeling.prompts import format_prompt
    from llmops.training import model as _model

    base = family_dirs[family]
    before, after, model = _train(base, steps=4)
    assert after < before - 0.1, (before, after)  # the loss over every training block falls
    adapter = _model.save_peft_adapter(model, _model.trainable_state(model), tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(ATTENTION.get(family, ["q_proj", "k_proj", "v_proj", "o_proj"]))

    tok = _tokenizer(base)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
    expected = greedy_tokens(peft, tok, 12)
    merged, merged_tok = load_model(base, adapter)  # the merge evaluation and registration use
    assert greedy_tokens(merged, merged_tok, 12) == expected

    bare = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    ppl, scored = answer_perplexity(merged, merged_tok, RECORDS[:4])
    assert scored > 0 and ppl < answer_perplexity(bare, tok, RECORDS[:4])[0]  # it learned the answers
    out = generate(merged, merged_tok, [format_prompt(merged_tok, r) for r in RECORDS[:3]], max_new_tokens=4)
    assert len(out.texts) == 3 and all(0 < n <= 4 for n in out.new_tokens)

    # the register step: the logged merged model must answer like base + adapter, and the checkpoint a server
    # resolves from the registry keeps the family's chat template and stop tokens
    from transformers import GenerationConfig

    from components.register.logic import register_candidate
    from llmops.modeling.prompts import stop_token_ids
    from serving.model_source import resolve_model

    settings = shared_settings
    reg = register_candidate(settings, settings.params(), adapter_dir=adapter, base_model_dir=base, metrics={},
                             lineage={"base_model.family": family}, parent_run_id=None)
    assert reg["greedy_match"] and reg["verify_tokens"] > 0
    served_dir = resolve_model(settings, f"{reg['name']}/{reg['version']}").model_dir
    served = _tokenizer(served_dir)
    assert format_prompt(served, RECORDS[0]) == format_prompt(tok, RECORDS[0])
    assert stop_token_ids(served, GenerationConfig.from_pretrained(served_dir)) == stop_token_ids(
        tok, GenerationConfig.from_pretrained(base))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_eager_engine_decodes_in_batches_and_serves_schema_json(family: str, family_dirs: dict[str, Path]) -> None:
    import jsonschema
    from starlette.testclient import TestClient

    from llmops.settings import get_settings
    from serving.engines import load_engine
    from serving.model_source import ResolvedModel
    from serving.server import build_app

    serve = get_settings().params(["serve.max_concurrent=4", "serve.max_len=256"]).serve
    engine = load_engine("eager", family_dirs[family], serve)
    end = END_OF_TURN.get(family)
    if end and end != "<|im_end|>":
        assert engine.tokenizer.convert_tokens_to_ids(end) in engine.eos_token_ids
    tok = engine.tokenizer
    prompts = ["The capital of France is a city that very many people visit", "def fibonacci(n):"]
    encoded = [tok.encode(p, add_special_tokens=False) for p in prompts]
    steps = 8
    ref = [engine.model.generate(torch.tensor([ids]), max_new_tokens=steps, min_new_tokens=steps,
                                 do_sample=False)[0, len(ids):].tolist() for ids in encoded]
    seqs = {s: [int(engine.prefill(s, ids).argmax())] for s, ids in enumerate(encoded)}
    for _ in range(steps - 1):
        logits = engine.decode([0, 1], [seqs[0][-1], seqs[1][-1]])
        for i in (0, 1):
            seqs[i].append(int(logits[i].argmax()))
    engine.release(0)
    engine.release(1)
    assert [seqs[0], seqs[1]] == ref

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    resolved = ResolvedModel(name=family, version=None, model_dir=family_dirs[family], ref=family, source="local")
    app = build_app(engine, resolved, serve)
    with TestClient(app) as client:
        assert app.state.llmops.ready.wait(120)
        r = client.post("/v1/chat/completions", json={
            "model": family, "messages": [{"role": "user", "content": "Give a user as JSON."}],
            "max_tokens": 60, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "u", "schema": schema, "strict": True}}})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_a_leading_reasoning_block_is_not_scored_as_the_answer() -> None:
    """Qwen3's template trains `<think>...</think>` before every answer (empty in non-thinking mode)."""
    from llmops.modeling.generation import answer_text

    assert answer_text("<think>\n\n</think>\n\njson ") == "json"
    assert answer_text("<think>pick a module</think>json") == "json"
    assert answer_text("json, not <think>x</think>") == "json, not <think>x</think>"


def test_a_template_that_refuses_the_probe_turn_still_stops_at_eos(family_dirs: dict[str, Path]) -> None:
    from llmops.modeling.prompts import stop_token_ids

    tok = _tokenizer(family_dirs["gemma2"])
    tok.chat_template = "{{ raise_exception('a system turn is required') }}"
    assert stop_token_ids(tok) == [tok.eos_token_id]


def test_train_step_rejects_an_unknown_lora_target_before_any_worker_starts(settings, family_dirs: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    from components.train.logic import train_adapter
    from tests.conftest import REPO

    params = settings.params(["lora.target_modules=[q_proj,v_proj]"])
    with pytest.raises(ModelError, match=r"Phi3ForCausalLM does not have.*qkv_proj"):
        train_adapter(settings, params, train_path=REPO / "data/splits/train.jsonl",
                      validation_path=REPO / "data/splits/validation.jsonl", base_model_dir=family_dirs["phi3"],
                      out_dir=tmp_path / "adapter")
