"""The open model families on the CPU engines, against the eager engine, through the scheduler's contract.

Per family (tiny random model, built once): each fp32 CPU engine (ONNX Runtime's GroupQueryAttention graph,
OpenVINO's decoder graph) gives >= 95% of the eager engine's greedy tokens (32 new tokens, 8 prompts decoded
as one batch through prefill/decode); the int8 engine stays within a few percent of the fp32 engine's logits
(its greedy tokens are the quality gate's business: on a random model the top two logits are often closer
than int8 noise); a family or feature an engine cannot express is refused by name, never served wrong.
Config edits make each family's differences bite on ~30-token sequences: a sliding window of 5 (Mistral,
Gemma 2 and 3 alternate windowed and global layers), soft-capping small enough to change scores (Gemma 2) and
Llama 3.1's rope scaling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llmops.errors import ModelError
from llmops.settings import Settings
from serving import engine_build as build
from serving.engine_build import checks, store
from serving.engines import built

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")
TWEAKS = {"llama": {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,  # Llama 3.1+
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 64}},
          "mistral": {"sliding_window": 5},
          "gemma2": {"sliding_window": 5, "attn_logit_softcapping": 1.0, "final_logit_softcapping": 2.0},
          "gemma3": {"sliding_window": 5}}
PROMPTS = ["What is a list?", "Reverse a string in Python.", "Explain json.", "What does os.path.join do?",
           "Write a haiku about the sea.", "Hi", "Sort a dict by value.", "Why is the sky blue?"]
NEW_TOKENS = 32


@dataclass
class Family:
    name: str
    model_dir: Path
    store: Settings
    prompts: list[list[int]]
    reference: list[list[int]]  # the eager engine's greedy tokens, up to EOS
    eos: set[int]


def _edit_config(model_dir: Path, **fields) -> None:
    path = model_dir / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | fields))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory: pytest.TempPathFactory, base_tokenizer_dir: Path) -> Family:
    from llmops.modeling.tiny import build_tiny_model
    from serving.engines.eager import EagerEngine

    root = tmp_path_factory.mktemp(request.param)
    model_dir = build_tiny_model(root / "model", tokenizer_dir=base_tokenizer_dir, family=request.param)
    _edit_config(model_dir, **TWEAKS.get(request.param, {}))
    eager = EagerEngine(model_dir, max_slots=len(PROMPTS))
    prompts = checks.encode_prompts(eager.tokenizer, PROMPTS)
    eos = eager.eos_token_ids
    tokens = checks.engine_greedy(eager, prompts, NEW_TOKENS)["tokens"]
    reference = [checks.until_eos(t, eos) for t in tokens]
    return Family(request.param, model_dir, Settings(state_dir=root / "state"), prompts, reference, eos)


def _engine(fam: Family, runtime: str, dtype: str = "float32"):
    manifest = store.build_cpu_engine(fam.store, fam.model_dir, runtime, dtype=dtype)
    return built.load_built(manifest, fam.model_dir, max_slots=len(PROMPTS))


def _identical_token_share(reference: list[list[int]], got: list[list[int]]) -> float:
    same = sum(a == b for ref, out in zip(reference, got, strict=True) for a, b in zip(ref, out, strict=False))
    return same / sum(len(r) for r in reference)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_fp32_engine_gives_eager_greedy_tokens(family: Family, runtime: str) -> None:
    engine = _engine(family, runtime)
    got = [checks.until_eos(t, family.eos)
           for t in checks.engine_greedy(engine, family.prompts, NEW_TOKENS)["tokens"]]
    share = _identical_token_share(family.reference, got)
    assert share >= 0.95, f"{family.name} on {runtime}: {share:.1%} of eager's greedy tokens"
    assert checks.agreement(family.reference, got)["mean_leading_agreement"] >= 0.95


def test_int8_engine_stays_close_to_fp32(family: Family) -> None:
    fp32, int8 = _engine(family, "onnxruntime"), _engine(family, "onnxruntime", "int8")
    errors = []
    for ids in family.prompts:
        a, b = fp32.prefill(0, ids), int8.prefill(0, ids)
        errors.append(float((a - b).norm() / a.norm()))
    # measured 1-2% on every family (2026-12-07); a dropped bias, norm or cap moves the logits far more
    assert max(errors) < 0.05, f"{family.name} int8 logits off fp32 by {max(errors):.1%}"


def test_static_cache_engine_refuses_what_it_cannot_express(family: Family) -> None:
    """The GPU engine's decode step (run on CPU here) serves Llama and Qwen2 exactly, bounds Mistral by its window and
    refuses the families whose maths it does not write out, naming them."""
    from serving.engines.static_cache import StaticCacheEngine

    if family.name in ("llama", "qwen2", "mistral"):
        engine = StaticCacheEngine(family.model_dir, max_slots=len(PROMPTS), device="cpu", dtype=torch.float32)
        window = TWEAKS.get(family.name, {}).get("sliding_window")
        assert engine.max_len == (window or engine.max_len)
        if window is None:
            got = checks.engine_greedy(engine, family.prompts, NEW_TOKENS)["tokens"]
            got = [checks.until_eos(t, family.eos) for t in got]
            assert _identical_token_share(family.reference, got) >= 0.95
        return
    model_type = json.loads((family.model_dir / "config.json").read_text())["model_type"]
    with pytest.raises(ModelError, match=f"'{model_type}' family") as err:
        StaticCacheEngine(family.model_dir, device="cpu")
    assert "--engine eager" in str(err.value)


# -- refusals that need no build ---------------------------------------------------------------------------

def _config_only(tmp_path: Path, **config) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_unsupported_family_is_refused_by_name(tmp_path: Path, settings: Settings) -> None:
    model_dir = _config_only(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    for runtime in build.runtimes():
        with pytest.raises(ModelError, match="'gpt2'") as err:
            store.build_cpu_engine(settings, model_dir, runtime)
        assert "serve with --engine eager" in str(err.value)
    assert not list(settings.engines_dir.glob("*"))


PHI3 = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
        "max_position_embeddings": 2048}


@pytest.mark.parametrize(("config", "what"), [
    (PHI3 | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
     "Phi-3 model: partial rotary"),
    ({"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "hidden_size": 64, "head_dim": 16,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
      "use_bidirectional_attention": True}, "Gemma 3 \\(text\\) model: bidirectional"),
    (PHI3 | {"hidden_act": "relu"}, "Phi-3 model: activation 'relu'"),
])
def test_features_the_graphs_cannot_express_are_refused(tmp_path: Path, config: dict, what: str) -> None:
    from serving.engine_build.graph_spec import read_spec

    with pytest.raises(ModelError, match=what) as err:
        read_spec(_config_only(tmp_path, **config))
    assert "serve with --engine eager" in str(err.value)


def test_longrope_is_served_only_within_the_original_context(tmp_path: Path) -> None:
    """Phi-3's longrope: transformers uses the short factors up to the original context and switches every
    position to the long ones beyond it, so the engines serve up to the original context (exact there)."""
    from serving.engine_build.graph_spec import read_spec

    factors = [1.0 + i / 8 for i in range(8)]  # head_dim 16 -> 8 frequencies
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": factors,
            "long_factor": [f * 2 for f in factors], "original_max_position_embeddings": 512}
    spec = read_spec(_config_only(tmp_path, **PHI3 | {"original_max_position_embeddings": 512,
                                                      "rope_parameters": rope}))
    assert spec.max_positions == 512 and spec.shapes()["max_position_embeddings"] == 512
    inv, scaling = spec.rope["full_attention"]
    base = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    torch.testing.assert_close(inv, base / torch.tensor(factors))  # the short factors
    assert scaling > 1.0  # longrope's attention factor scales cos/sin


def test_tensorrt_llm_refuses_families_without_a_converter(tmp_path: Path) -> None:
    from serving.engine_build import trtllm as tensorrt_llm

    model_dir = _config_only(tmp_path, model_type="gemma2", architectures=["Gemma2ForCausalLM"])
    with pytest.raises(ModelError, match="'gemma2' family") as err:
        tensorrt_llm.check_model(model_dir)
    assert "serve with --engine eager" in str(err.value)
    tensorrt_llm.check_model(_config_only(tmp_path, model_type="qwen2", architectures=["Qwen2ForCausalLM"]))


def test_compile_step_records_a_skip_for_a_model_the_graphs_cannot_express(tmp_path: Path,
                                                                               settings: Settings) -> None:
    """The model is fine (it serves with eager): the compile step goes on with a skip record naming the
    family, as for a TensorRT-LLM skip, instead of failing the pipeline."""
    from components.compile_engine.logic import build_engines

    model_dir = _config_only(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    params = settings.params(["engine.kinds=[cpu, cpu-int8]"])
    results = build_engines(settings, params, model_dir)
    for kind in ("cpu", "cpu-int8"):
        assert results[kind]["skipped"] and "'gpt2'" in results[kind]["reason"]
        assert results[kind]["record"].startswith(f"engine={kind} skipped:")
        assert "serve with --engine eager" in results[kind]["reason"]
    assert not list(settings.engines_dir.glob("*"))
