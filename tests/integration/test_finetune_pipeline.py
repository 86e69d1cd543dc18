"""The whole finetune DAG through kfp.local on the tiny model: pass -> registered champion with lineage;
forced gate failure -> nothing registered; corrupt data -> stops before training. The gate runs at its
params.yaml thresholds (only min_ppl_improvement is raised, in the run that must fail)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmops.settings import Settings
from pipelines.runner import run_finetune_local
from pipelines.summary import latest_parent_run, summarize

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(tiny_model_dir: Path) -> list[str]:
    return [
        f"model.base={tiny_model_dir}",
        "train.max_steps=8", "train.seq_len=256", "train.batch_size=2", "train.lr=3e-3", "train.warmup_steps=1",
        "train.checkpoint_every=4", "train.max_train_examples=256", "train.num_workers=2",
        "eval.max_examples=24", "eval.gen_examples=4", "eval.max_new_tokens=8",
        "engine.equivalence.prompts=3", "engine.equivalence.new_tokens=12", "engine.benchmark.new_tokens=6",
        "engine.benchmark.batch_sizes=[1,3]", "engine.quantized.records=4", "engine.quantized.new_tokens=8",
    ]


# The canary step's rollout, shortened: two steps of a few seconds on a quick synthetic load.
FAST_CANARY = [
    "canary.steps=[{weight: 50}, {weight: 100}]", "canary.step_defaults={min_duration_s: 2, min_requests: 5}",
    "canary.max_step_duration_s=60", "canary.interval_s=1", "canary.loadgen.rate=10", "canary.loadgen.max_tokens=6",
    "canary.quality.golden_size=4", "canary.quality.max_tokens=8",
]


def _run(settings: Settings, overrides: list[str], data_dir: str = "data/splits") -> tuple[bool, dict]:
    import time

    since = int(time.time() * 1000)
    outcome = run_finetune_local(settings, overrides, data_dir)
    run_id = latest_parent_run(settings, since)
    assert run_id, "the pipeline opened no MLflow run"
    return outcome.succeeded, summarize(settings, run_id)


def test_pipeline_registers_passing_candidate_then_gate_blocks_a_bad_one(settings: Settings, tmp_path: Path,
                                                                         tiny_model_dir: Path) -> None:
    from llmops.registry.client import Registry

    ok, first = _run(settings, tiny_overrides(tiny_model_dir))
    assert ok, first
    assert first["state"] == "SUCCEEDED"
    assert first["steps"] == dict.fromkeys(("validate_data", "train", "evaluate", "register", "compile_engine",
                                            "canary_deploy"), "FINISHED")
    assert first["canary"]["decision"] == "first_version"  # no stable side: champion without a rollout
    assert first["train"]["val_loss"] < first["train"]["val_loss_before"]
    assert first["eval"]["candidate"]["perplexity"] < first["eval"]["base"]["perplexity"]
    # the forgetting guard at its real value (params.yaml), on this run's numbers
    guard = settings.params().eval.gate.max_general_ppl_increase
    assert guard == 0.25
    general = {m: first["eval"][m]["general_perplexity"] for m in ("base", "candidate")}
    assert general["candidate"] <= general["base"] * (1 + guard), general
    assert "[pass] no_forgetting" in first["gate"]["summary"] and f"{general['base'] * (1 + guard):.4g}" in \
        first["gate"]["summary"]

    registry = Registry(settings)
    name = settings.registered_model
    version = registry.show(f"{name}@champion")
    assert registry.alias_version(name, "challenger") == registry.alias_version(name, "champion")
    tags = version["tags"]
    from llmops.data.dvc import data_hashes
    from llmops.lineage import git_commit
    from llmops.modeling.hashing import file_hashes, file_md5, weights_digest

    assert tags["pipeline.mlflow_run_id"] == first["mlflow_run_id"]
    assert tags["params.hash"] == first["params_hash"]
    assert tags["git.commit"] == git_commit(REPO) and len(tags["git.commit"].split("-")[0]) == 40
    assert tags["pipeline.kfp_run_id"]
    assert tags["base_model.sha256"] == weights_digest(tiny_model_dir)
    assert json.loads(tags["base_model.files"]) == file_hashes(tiny_model_dir)
    assert "base_model.revision" not in tags  # a local directory: no hub revision is invented
    for split in ("train", "validation", "test"):  # what train (train, validation) and evaluate (test) read
        path = f"data/splits/{split}.jsonl"
        md5 = file_md5(REPO / path)
        assert tags[f"data.{split}.md5"] == md5 == first["data_versions"][split]["md5"]
        tracked = data_hashes(REPO).get(path) == md5  # False only when the checkout's splits were edited
        assert tags[f"data.{split}.dvc"] == (f"{path}@{md5}" if tracked else "untracked")
    assert not any(k.startswith("dvc.") for k in tags)  # nothing copied from dvc.lock
    assert float(tags["metric.candidate.perplexity"]) == pytest.approx(first["eval"]["candidate"]["perplexity"])
    # compile_engine attached a CPU engine that gives eager's greedy tokens; TensorRT-LLM: a recorded skip here.
    assert tags["engine.cpu"].startswith(tags["engine.cpu.runtime"] + "-")
    assert tags["engine.cpu.equivalence.identical"] == "3/3"
    from llmops.modeling.hashing import weights_digest

    assert tags["engine.cpu.weights_digest"] != weights_digest(tiny_model_dir)  # the merged candidate, not the base
    assert float(tags["engine.cpu.bench.batch1_tokens_per_s"]) > 0
    assert tags["engine.tensorrt-llm"].startswith("skipped: ") or tags["engine.tensorrt-llm"].startswith("tensorrt")

    # Same candidate recipe on locally edited data (--data-dir), impossible gate: evaluated against the
    # champion, nothing registered; the edited split is tagged untracked, the unchanged test split by content.
    edited = tmp_path / "splits"
    shutil.copytree(REPO / "data" / "splits", edited)
    rows = (edited / "train.jsonl").read_text().splitlines()
    (edited / "train.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    ok, second = _run(settings, [*tiny_overrides(tiny_model_dir), "eval.gate.min_ppl_improvement=0.9999"],
                      data_dir=str(edited))
    assert ok, second  # a failed gate is a normal outcome, not a pipeline failure
    assert second["data_versions"]["train"] == {"md5": file_md5(edited / "train.jsonl"), "dvc": "untracked"}
    assert second["data_versions"]["test"] == first["data_versions"]["test"]
    assert second["steps"]["register"] == "not run" and second["steps"]["compile_engine"] == "not run"
    assert second["steps"]["canary_deploy"] == "not run" and "canary" not in second
    assert "champion" in second["eval"]
    assert second["gate"].get("passed") in ("False", "false")
    assert len(registry.list_models()) == 1
    assert registry.alias_version(name, "champion") == version["version"]

    # A second passing version goes through the canary rollout against the champion (short steps), and the
    # summary says what was decided and why; the champion moved only if it was promoted.
    ok, third = _run(settings, [*tiny_overrides(tiny_model_dir), *FAST_CANARY])
    assert ok, third
    assert third["steps"]["canary_deploy"] == "FINISHED"
    canary = third["canary"]
    new = third["registered"]["version"]
    assert canary["version"] == new and canary["stable_version"] == version["version"]
    decision = canary["decision"]
    assert decision == "promoted" or decision.startswith("rolled_back:step "), decision
    assert canary["champion_after"] == (new if decision == "promoted" else version["version"])
    assert registry.alias_version(name, "champion") == canary["champion_after"]


def test_corrupt_data_stops_the_run_before_training(settings: Settings, tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    bad = tmp_path / "splits"
    shutil.copytree(REPO / "data" / "splits", bad)
    rows = (bad / "train.jsonl").read_text().splitlines()
    leaked = json.loads((bad / "test.jsonl").read_text().splitlines()[0])
    (bad / "train.jsonl").write_text("\n".join([*rows, json.dumps(leaked)]) + "\n")  # test row leaks into train
    ok, summary = _run(settings, tiny_overrides(tiny_model_dir), data_dir=str(bad))
    assert not ok
    assert summary["steps"]["validate_data"] == "FAILED"
    assert summary["steps"]["train"] == "not run"
    assert summary["state"] == "FAILED"
