"""In-process serving pieces over the tiny model: the eager engine's batched decode equals one-at-a-time
greedy generation while sequences join and leave, the engine registry, sampling, the per-request hook,
and resolving a registered version (logged the way the register step logs it) to a servable checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmops.errors import LlmopsError
from serving.engines import available_engines, load_engine, pick_engine
from serving.sampling import Sampler, SamplingParams


@pytest.fixture(scope="module")
def serve_params():
    from llmops.settings import get_settings

    return get_settings().params(["serve.max_concurrent=4", "serve.max_len=256"]).serve


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, serve_params):
    return load_engine("eager", tiny_model_dir, serve_params)


def test_batched_decode_matches_sequential_greedy(engine) -> None:
    tok = engine.tokenizer
    prompts = ["The capital of France is", "def fibonacci(n):", "Hello, my name is Bob and I", "1, 2, 3,"]
    steps = 10
    ref = []
    for p in prompts:
        ids = tok.encode(p)
        out = engine.model.generate(torch.tensor([ids]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
        ref.append(out[0, len(ids):].tolist())
    seqs: dict[int, list[int]] = {}

    def start(s: int) -> None:
        seqs[s] = [int(engine.prefill(s, tok.encode(prompts[s])).argmax())]

    start(0)
    start(1)
    for step in range(1, 40):
        if step == 3:
            start(2)  # joins a running batch
        if step == 5:
            start(3)
        active = [s for s in sorted(seqs, reverse=step % 2 == 0) if len(seqs[s]) < steps]  # order changes too
        if not active:
            break
        logits = engine.decode(active, [seqs[s][-1] for s in active])
        assert logits.shape == (len(active), len(tok)) and logits.dtype == torch.float32
        for i, s in enumerate(active):
            seqs[s].append(int(logits[i].argmax()))
            if len(seqs[s]) == steps:
                engine.release(s)  # leaves mid-batch
    assert [seqs[s] for s in range(4)] == ref


def test_engine_registry(tiny_model_dir: Path) -> None:
    names = {c.name: c for c in available_engines(tiny_model_dir)}
    assert names["eager"].available
    assert pick_engine("auto", tiny_model_dir) in names
    with pytest.raises(LlmopsError, match="unknown engine"):
        pick_engine("no-such-engine", tiny_model_dir)


def test_sampling() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert Sampler(SamplingParams(max_tokens=1, temperature=0))(logits) == 1
    draws = [Sampler(SamplingParams(max_tokens=1, temperature=1.0, seed=5))(logits) for _ in range(3)]
    assert len(set(draws)) == 1  # the same seed gives the same token
    nucleus = Sampler(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.01, seed=1))
    assert {nucleus(logits) for _ in range(20)} == {1}  # top_p keeps only the most likely token
    spread = Sampler(SamplingParams(max_tokens=1, temperature=5.0, seed=2))
    assert len({spread(logits) for _ in range(50)}) > 1


def test_request_hook_sees_every_request(engine, tiny_model_dir: Path, serve_params) -> None:
    from starlette.testclient import TestClient

    from serving.model_source import ResolvedModel
    from serving.server import build_app

    records = []
    resolved = ResolvedModel(name="tiny", version="3", model_dir=tiny_model_dir, ref="tiny@champion",
                             source="models:/tiny/3")

    def broken(record) -> None:
        raise RuntimeError("a broken sink must not fail requests")

    app = build_app(engine, resolved, serve_params, hooks=[records.append, broken])
    with TestClient(app) as client:
        ready = app.state.llmops.ready
        assert ready.wait(120)
        r = client.post("/v1/chat/completions", headers={"x-request-id": "abc-1"}, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
        bad = client.post("/v1/chat/completions", json={"model": "tiny/3", "messages": [], "max_tokens": 3})
        assert bad.status_code == 400
    [rec] = records
    assert rec.request_id == "abc-1" and rec.model == "tiny" and rec.model_version == "3"
    assert rec.completion_tokens == 3 and rec.prompt_tokens == r.json()["usage"]["prompt_tokens"]
    assert rec.status == 200 and rec.ttft_s is not None and rec.latency_s >= rec.ttft_s
    assert rec.prompt == [{"role": "user", "content": "hi"}] and rec.response == r.json()["choices"][0]["message"][
        "content"]


def test_resolve_registered_version(settings, tiny_model_dir: Path) -> None:
    """A version logged like the register step logs it (mlflow.transformers, save_pretrained) resolves to
    a safetensors checkpoint with its tokenizer, pinned to the alias's version; a local dir resolves as is."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.registry import Registry
    from llmops.tracking import configure
    from serving.model_source import resolve_model

    configure(settings)  # tracking AND registry URI: an earlier test's registry URI must not receive this version
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with mlflow.start_run():
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="model",
                                             task="text-generation", save_pretrained=True,
                                             pip_requirements=["torch", "transformers"])
    mv = mlflow.register_model(info.model_uri, "served-tiny")
    Registry(settings).set_alias("served-tiny", "champion", str(mv.version), action="promote", reason="test")
    resolved = resolve_model(settings, "served-tiny@champion")
    assert (resolved.name, resolved.version, resolved.label) == ("served-tiny", "1", "served-tiny/1")
    assert any(resolved.model_dir.glob("*.safetensors")) and (resolved.model_dir / "tokenizer.json").is_file()
    assert not [p for p in resolved.model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]
    assert AutoTokenizer.from_pretrained(resolved.model_dir).encode("hi") == tokenizer.encode("hi")
    assert resolve_model(settings, "served-tiny/1").model_dir == resolved.model_dir  # cached download
    local = resolve_model(settings, str(tiny_model_dir))
    assert local.version is None and local.model_dir == tiny_model_dir.resolve()
    with pytest.raises(LlmopsError):
        resolve_model(settings, "served-tiny@nope")
    with pytest.raises(LlmopsError, match="not served-tiny/2"):
        resolve_model(settings, "served-tiny/1", model_version="served-tiny/2")

    # What KServe's storage initializer puts in /mnt/models: the version's download URI as is (MLmodel, model/,
    # components/), on a read-only mount; LLMOPS_MODEL_VERSION (the KServe actuator's env) names the version.
    import stat

    mnt = Path(mlflow.artifacts.download_artifacts(
        Registry(settings).client.get_model_version_download_uri("served-tiny", "1"),
        dst_path=str(settings.state_dir / "mnt-models")))
    assert (mnt / "MLmodel").is_file() and not (mnt / "config.json").exists()
    for p in [mnt, *mnt.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        pod = resolve_model(settings, str(mnt), model_version="served-tiny/1")
    finally:
        for p in [mnt, *mnt.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert (pod.name, pod.version, pod.label) == ("served-tiny", "1", "served-tiny/1")
    weights = list(pod.model_dir.glob("*.safetensors"))
    assert weights and all(w.is_symlink() and w.resolve().is_relative_to(mnt.resolve()) for w in weights)
    assert AutoTokenizer.from_pretrained(pod.model_dir).encode("hi") == tokenizer.encode("hi")
    assert AutoModelForCausalLM.from_pretrained(pod.model_dir).config.vocab_size == model.config.vocab_size
    assert resolve_model(settings, str(mnt)).label == mnt.name  # no version given: the directory's name
    with pytest.raises(LlmopsError, match="NAME/VERSION"):
        resolve_model(settings, str(mnt), model_version="served-tiny")
