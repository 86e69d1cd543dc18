"""The drift loop closed on the tiny model, every piece real: `llmops demo drift`'s logic serves the champion behind
the router (server writing the inference log), builds the reference, replays paraphrased in-domain traffic (below
drift), a shifted window with no new data (held: nothing new to learn), then feedback corrections,
accepted through `llmops review accept`, exported as a DVC dataset and as preference pairs (`log export --kind
preference`), and one more shifted window (drift with new data that covers it); the trigger starts `llmops run
retrain` as its own process, which refreshes the data (the feedback export merged in by the DVC split stage),
trains the champion's recipe (SFT), then DPO on the pairs from the SFT model, registers the stacked adapter, and
takes the candidate through the canary.

Runs in a throwaway git + DVC copy of the project's data stages (the retrain's `dvc repro` must not touch the
checkout). The champion comes from a finetune run of the tiny recipe, as `make run` makes one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.settings import Settings, get_settings

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NAME = "llmops-smollm2"
COPY = ["dvc.yaml", "dvc.lock", "params.yaml", "data/expectations", "data/sample", "data/splits", "data/metrics",
        "data/user/README.md", "data/feedback/README.md", "data/preferences/README.md", "data/drift/shifted.jsonl",
        "data/drift/paraphrased.jsonl",
        "data/safety",  # the gate answers the safety set
        # whole: the trigger starts `python -m cli.main` in the project, where a partial copy would shadow it
        "llmops"]


def answering_model(tiny_model_dir: Path, out: Path) -> Path:
    """The tiny random model, except that it answers with words: its greedy answers are newlines otherwise (before
    and after the champion's few training steps), and a blank served answer cannot be the rejected side of a
    preference pair (the preferences suite). Mutes (zero embedding rows, tied to the output head) every blank,
    control and special token, then checks three shifted prompts get a non-blank answer."""
    import json
    import re

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.modeling.prompts import user_message

    shutil.copytree(tiny_model_dir, out)
    tok = AutoTokenizer.from_pretrained(out)
    bad = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd-\uffff]")
    prompts = [user_message(json.loads(line)) for line in
               (REPO / "data/drift/shifted.jsonl").read_text().splitlines()[:3]]
    muted = {t for t in range(len(tok)) if t in tok.all_special_ids or not tok.decode([t]).strip()
             or bad.search(tok.decode([t]))}
    for _ in range(20):
        weights = load_file(str(out / "model.safetensors"))
        weights["model.embed_tokens.weight"][sorted(muted)] = 0
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        muted = set()
        for prompt in prompts:
            ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            with torch.no_grad():
                new = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
            muted |= {t for t in new if t in tok.all_special_ids or not tok.decode([t]).strip()
                      or bad.search(tok.decode([t]))}
        if not muted:
            return out
    raise AssertionError("the tiny model still answers blank")


def recipe(tiny_model_dir: Path) -> list[str]:
    """The champion's recipe: tiny, short training; no engine build (tests/integration/test_compile_engine.py
    covers it); a two-step canary on a quick load (as tests/integration/test_canary_deploy.py)."""
    return [
        f"model.base={tiny_model_dir}",
        "train.max_steps=8", "train.seq_len=256", "train.batch_size=2", "train.lr=3e-3", "train.warmup_steps=1",
        "train.checkpoint_every=4", "train.max_train_examples=256", "train.num_workers=1",
        "eval.max_examples=24", "eval.gen_examples=4", "eval.max_new_tokens=8",
        "engine.kinds=[]", "registry.verify_new_tokens=0", "retrain.dpo.max_steps=2",
        "canary.steps=[{weight: 50}, {weight: 100}]", "canary.step_defaults={min_duration_s: 2, min_requests: 5}",
        "canary.max_step_duration_s=60", "canary.interval_s=1", "canary.heartbeat_s=0.5",
        "canary.loadgen.rate=10", "canary.loadgen.max_tokens=6",
        "canary.quality.golden_source=data/splits/test.jsonl", "canary.quality.golden_size=4",
        "canary.quality.max_tokens=8", "serve.max_tokens=64",
        # both sides are tiny random models on a shared 2-core machine: latency gaps are noise here
        "canary.analysis.latency_p95={max_ratio: 1.5, min_delta_s: 3}",
        "canary.analysis.ttft_p95={max_ratio: 1.5, min_delta_s: 3}",
    ]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    proj = tmp_path / "project"
    for rel in COPY:
        src, dst = REPO / rel, proj / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy2(src, dst))
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "remote", "add", "-d", "tmp", str(tmp_path / "remote")],
                [sys.executable, "-m", "dvc", "commit", "-f", "-q"]):  # the copied outputs into this repo's cache
        subprocess.run(cmd, cwd=proj, env=env, check=True, capture_output=True)
    monkeypatch.setenv("LLMOPS_PROJECT_DIR", str(proj))
    monkeypatch.setenv("LLMOPS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLMOPS_MODELS_DIR", str(REPO / ".llmops" / "models"))  # read-only: tokenizer, embedder
    get_settings.cache_clear()
    settings = get_settings()
    settings.ensure_state_dir()
    from llmops.data import dvc

    assert dvc.status(settings=settings) == {}  # the copy is the checkout's data version
    yield settings
    get_settings.cache_clear()


def _champion(settings: Settings, tiny_model_dir: Path) -> str:
    """The champion as the product makes one: a finetune pipeline run with the recipe (first passing version)."""
    from llmops.registry import Registry
    from pipelines.runner import run_finetune_local

    assert run_finetune_local(settings, recipe(tiny_model_dir)).succeeded
    version = Registry(settings).alias_version(NAME, "champion")
    assert version is not None
    return version


def test_shift_fires_drift_and_the_trigger_retrains_through_the_canary(project: Settings, tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    from cli.drift_demo import DemoConfig, run_drift_demo
    from llmops.registry import Registry

    settings = project
    tiny_model_dir = answering_model(tiny_model_dir, tmp_path / "answering")  # served answers: pairs' rejected side
    champion = _champion(settings, tiny_model_dir)
    # one drifted window without new data is held at once (the pending windows before it are
    # tests/monitoring/test_monitor_trigger.py's): one window of traffic and one monitor run fewer
    params = settings.params(["monitoring.trigger.persist_windows=1"])
    n = params.drift.min_window + 10
    cfg = DemoConfig(requests=n, max_tokens=8, concurrency=4, feedback=20, retrain_timeout_s=1500,
                     overrides=recipe(tiny_model_dir))
    said: list[str] = []
    out = run_drift_demo(settings, params, cfg, said.append)

    quiet, shifted = out["reference_like"], out["shifted"]
    assert quiet["window"]["requests"] == n and quiet["severity"] != "drift", quiet  # paraphrased in-domain
    assert quiet["trigger"] is None
    # shifted with no new data: held (nothing to learn) and queued (pending windows first when persist_windows > 1)
    *pending, held = out["shifted_without_new_data"]
    assert len(pending) + 1 == params.monitoring.trigger.persist_windows
    assert all(p["trigger"]["outcome"] == "pending" for p in pending)
    assert held["drifted"] and held["trigger"]["outcome"] == "held", held["trigger"]
    assert "nothing new to learn" in held["trigger"]["reason"] and held["labelling"]["queued"] > 0
    assert shifted["window"]["requests"] == n and shifted["drifted"], shifted
    assert "prompt_embedding_mmd" in shifted["fired"]
    assert shifted["trigger"]["outcome"] == "started" and "feedback/" in shifted["trigger"]["reason"]
    assert out["review"] == {"accepted": 20, "refused": 0, "pending": 0}  # through `llmops review accept --all`
    export, pairs = out["feedback_export"], out["preference_export"]
    assert export["rows"] == 20 and export["path"].startswith("data/feedback/")
    assert pairs["rows"] == 20 and pairs["path"].startswith("data/preferences/")  # correction vs served answer

    rt = out["retrain"]
    assert rt["state"] == "SUCCEEDED", (rt, said)
    assert rt["retrain"]["trigger"] == "drift" and "drift" in rt["retrain"]["reason"]
    assert rt["retrain"]["champion"] == f"{NAME}/{champion}" and rt["retrain"]["data_refreshed"] == "yes"
    feedback_entry = f"feedback/{Path(export['path']).stem}@{export['md5']}"
    assert feedback_entry in rt["data_sources"].split(",")  # the export was merged into the refreshed splits
    assert rt["steps"]["refresh_data"] == rt["steps"]["register"] == rt["steps"]["canary_deploy"] == "FINISHED"
    # SFT, then DPO on the exported pairs from the SFT model; both compared on the held-out pairs
    assert rt["steps"]["train"] == rt["steps"]["train_dpo"] == "FINISHED", rt["steps"]
    dpo = out["dpo"]
    assert dpo["status"].startswith("trained: "), dpo
    assert dpo["train_pairs"] >= 8 and dpo["held_out_pairs"] >= 1 and dpo["train_pairs"] + dpo["held_out_pairs"] == 20
    for model in ("sft_only", "sft_dpo"):
        assert 0 <= dpo[model]["preference_accuracy"] <= 1 and dpo[model]["reward_margin"] == dpo[model][
            "reward_margin"], dpo  # measured (not NaN)

    registry = Registry(settings)
    new = rt["registered"]["version"]
    assert new != champion
    tags = registry.show(f"{NAME}/{new}")["tags"]
    entry = f"feedback/{Path(export['path']).stem}"
    assert tags[f"data.source.{entry}.dvc"] == f"data/feedback/{Path(export['path']).name}@{export['md5']}"
    assert tags["base_model.sha256"] == registry.show(f"{NAME}/{champion}")["tags"]["base_model.sha256"]
    assert tags[f"data.preferences.{Path(pairs['path']).stem}.md5"] == pairs["md5"]  # the pairs DPO read
    decision = rt["canary"]["decision"]
    assert decision == "promoted" or decision.startswith("rolled_back"), rt["canary"]
    assert registry.alias_version(NAME, "champion") == (new if decision == "promoted" else champion)
    # the drift report that started the run is attached to it
    arts = {a.path for a in registry.client.list_artifacts(rt["mlflow_run_id"], "drift")}
    assert {"drift/drift-report.json", "drift/drift-report.html"} <= arts
