"""CPU engines on the tiny model: the exported graph run by ONNX Runtime and OpenVINO gives eager's greedy
tokens (full precision), per-slot KV survives changes of the running batch, and the store caches builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops import host
from llmops.errors import LlmopsError
from llmops.settings import Settings
from serving.engine_build import checks
from serving.engine_build import store as engine_store
from serving.engines import built

RUNTIMES = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Settings:
    return Settings(state_dir=tmp_path_factory.mktemp("engine-store"))


@pytest.fixture(scope="module")
def eager(tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_cpu_hardware_names_the_isa_flags_that_change_kernels() -> None:
    info = "processor: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n"
    hw = host.cpu_hardware(info)
    assert hw.endswith("-avx2+avx512f+avx512_bf16+amx_tile")
    assert host.cpu_hardware("flags: fpu sse2\n").endswith("-baseline")


def test_cache_key_changes_with_every_part() -> None:
    base = ("w1", "onnxruntime", "1.32.0", "cpu-x86_64-avx2", "cfg1")
    key = engine_store.cache_key(*base)
    assert key == engine_store.cache_key(*base)
    for i, other in enumerate(("w2", "openvino", "1.33.0", "cpu-x86_64-avx512f", "cfg2")):
        changed = list(base)
        changed[i] = other
        assert engine_store.cache_key(*changed) != key
    assert engine_store.short_hash(engine_store.cpu_build_config("onnxruntime")) != \
        engine_store.short_hash(engine_store.cpu_build_config("openvino"))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_engine_matches_eager_and_rebuild_is_a_cache_hit(runtime: str, store: Settings, tiny_model_dir: Path,
                                                         eager) -> None:
    first = engine_store.build_cpu_engine(store, tiny_model_dir, runtime)
    assert first["cache_hit"] is False and first["runtime"] == runtime
    second = engine_store.build_cpu_engine(store, tiny_model_dir, runtime)
    assert second["cache_hit"] is True and second["engine_dir"] == first["engine_dir"]
    assert [m["name"] for m in built.list_engines(store, first["weights_digest"])].count(first["name"]) == 1

    engine = built.load_built(second, tiny_model_dir, max_slots=4)
    prompts = checks.encode_prompts(engine.tokenizer, ["What is a list?", "Reverse a string in Python.",
                                                             "Explain json.", "What does os.path.join do?"])
    reference, _ = checks.eager_greedy(eager, prompts, 12)
    got = checks.engine_greedy(engine, prompts, 12)["tokens"]
    eos = engine.eos_token_ids
    assert checks.agreement(reference, [checks.until_eos(t, eos) for t in got])["identical_rate"] == 1.0
    assert engine.info()["runtime"] == runtime and engine.info()["cache_key"] == first["cache_key"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "eager"])
def test_slots_survive_changes_of_the_running_batch(runtime: str, store: Settings, tiny_model_dir: Path,
                                                    eager) -> None:
    """A request joins mid-way, one is paused for a step, one leaves, a slot in the batch view is prefilled
    again: every sequence still gets eager's tokens (the slot bookkeeping all step engines share: slots.py)."""
    if runtime == "eager":
        from serving.engines.eager import EagerEngine

        engine = EagerEngine(tiny_model_dir, max_slots=3)
    else:
        manifest = engine_store.build_cpu_engine(store, tiny_model_dir, runtime)
        engine = built.load_built(manifest, tiny_model_dir, max_slots=3)
    prompts = checks.encode_prompts(engine.tokenizer, ["Short?", "A much longer question about Python lists "
                                                             "and tuples and when to use which.", "Explain json."])
    reference, _ = checks.eager_greedy(eager, prompts, 10)
    out: dict[int, list[int]] = {}
    out[0] = [int(engine.prefill(0, prompts[0]).argmax())]
    out[1] = [int(engine.prefill(1, prompts[1]).argmax())]
    for step in range(9):
        if step == 3:  # slot 2 joins the running batch
            out[2] = [int(engine.prefill(2, prompts[2]).argmax())]
        running = [s for s in (1, 0, 2) if s in out and len(out[s]) < 10 and (step, s) != (5, 2)]  # 2 paused
        logits = engine.decode(running, [out[s][-1] for s in running])
        for row, s in enumerate(running):
            out[s].append(int(logits[row].argmax()))
        if len(out[0]) == 10:
            engine.release(0)
    while len(out[2]) < 10:
        out[2].append(int(engine.decode([2], [out[2][-1]])[0].argmax()))
    eos = engine.eos_token_ids
    assert [checks.until_eos(out[s], eos) for s in (0, 1, 2)] == reference
    with pytest.raises(LlmopsError, match="no prefilled sequence"):
        engine.decode([0], [1])
    engine.decode([1, 2], [out[1][-1], out[2][-1]])  # slots 1 and 2 form the batch view ...
    again = [int(engine.prefill(1, prompts[0]).argmax())]  # ... and slot 1 starts over inside it
    while len(again) < 10:
        again.append(int(engine.decode([1, 2], [again[-1], 0])[0].argmax()))
    assert checks.until_eos(again, eos) == reference[0]


def test_registry_offers_a_built_engine_for_its_weights_only(settings: Settings, tiny_model_dir: Path) -> None:
    """`--engine auto` picks the CPU engine once one is built for these weights; the probe says why not before."""
    from serving.engines import available_engines, load_engine

    def choices() -> dict[str, str | None]:
        return {c.name: c.reason for c in available_engines(tiny_model_dir)}

    assert "no onnxruntime engine built" in (choices()["onnxruntime"] or "")
    engine_store.build_cpu_engine(settings, tiny_model_dir, "onnxruntime")
    now = choices()
    assert now["onnxruntime"] is None and now["eager"] is None and "no openvino engine" in now["openvino"]
    engine = load_engine("auto", tiny_model_dir, settings.params().serve)
    assert engine.name == "onnxruntime" and engine.max_slots == settings.params().serve.max_concurrent
    engine.warmup()
