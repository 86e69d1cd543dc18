"""The whole finetune DAG through kfp.local on the tiny model, as a user runs it: `llmops run finetune` (a
subprocess) registers a passing candidate with lineage, printing one line per step and a short summary while
the run log holds every step's full output; forced gate failure -> nothing registered; corrupt data stops the
run before training, the summary naming the failed step with its own one-line cause and log. The gate runs at
its params.yaml thresholds (only min_ppl_improvement is raised, in the run that must fail).

Each DAG run costs a minute or more of the suite's budget, so none is repeated: the console is read from the
first run (test_run_console.py used to make the same run again for it), and the canary against a champion is
the retrain run's in test_drift_loop.py (the same DAG stages, pipelines/_stages.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.settings import Settings
from pipelines.runner import run_finetune_local
from pipelines.summary import latest_parent_run, summarize

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MAX_CONSOLE_LINES = 45  # issue 7: `make run` within ~60 lines, setup included


def tiny_overrides(tiny_model_dir: Path) -> list[str]:
    return [
        f"model.base={tiny_model_dir}",
        "train.max_steps=8", "train.seq_len=256", "train.batch_size=2", "train.lr=3e-3", "train.warmup_steps=1",
        "train.checkpoint_every=4", "train.max_train_examples=256", "train.num_workers=2",
        "eval.max_examples=24", "eval.gen_examples=4", "eval.max_new_tokens=8",
        # the safety set's 34 answers per model: refusals are read from the opening, and 32 tokens of a tiny
        # random model took most of each evaluate step (tests/unit/test_eval_safety.py trains real refusals)
        "eval.safety.max_new_tokens=8",
        "engine.equivalence.prompts=3", "engine.equivalence.new_tokens=12", "engine.benchmark.new_tokens=6",
        "engine.benchmark.batch_sizes=[1,3]", "engine.quantized.records=4", "engine.quantized.new_tokens=8",
    ]


def _run(settings: Settings, overrides: list[str], data_dir: str = "data/splits") -> tuple[bool, dict]:
    import time

    since = int(time.time() * 1000)
    outcome = run_finetune_local(settings, overrides, data_dir)
    run_id = latest_parent_run(settings, since)
    assert run_id, "the pipeline opened no MLflow run"
    return outcome.succeeded, summarize(settings, run_id)


def _run_cli(settings: Settings, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMOPS_STATE_DIR": str(settings.state_dir), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "cli.main", "run", "finetune", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _check_console(settings: Settings, proc: subprocess.CompletedProcess) -> None:
    """A whole run prints one line per step and a short summary; the run log holds every step's output."""
    console = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(console)
    assert len(console) <= MAX_CONSOLE_LINES, "\n".join(console)
    text = "\n".join(console)
    for noise in ("Executing task", "executor_input", "INFO", "RayTrainWorker", "Streamed logs"):
        assert noise not in text
    step_lines = {ln.split()[1]: ln for ln in console if ln.startswith(("ok   ", "FAIL "))}
    assert list(step_lines)[:4] == ["start-run", "validate-data", "train", "evaluate"]
    assert all(ln.startswith("ok") for ln in step_lines.values()), text
    assert "tokens_per_s" in step_lines["train"] and "train_loss" in step_lines["train"]
    assert "ppl candidate" in step_lines["evaluate"] and "gate " in step_lines["evaluate"]
    if "register" in step_lines:
        assert " v1" in step_lines["register"]
    assert "[llmops.train] step" not in text  # progress: a few plain lines without a TTY, not the raw stream
    logs = sorted((settings.state_dir / "logs").glob("finetune-*.log"))
    assert len(logs) == 1 and f"full log: {logs[0]}" in text
    log = logs[0].read_text()
    for stream in ("Executing task", "Got executor_input", "[llmops.train] step 8/8", "finished with status"):
        assert stream in log
    step_logs = {p.stem for p in logs[0].with_suffix("").iterdir()}
    assert {"start-run", "validate-data", "train", "evaluate"} <= step_logs


def test_pipeline_registers_passing_candidate_then_gate_blocks_a_bad_one(settings: Settings, tmp_path: Path,
                                                                         tiny_model_dir: Path) -> None:
    from llmops.registry.client import Registry

    # The first run as a user starts it (the CLI in a subprocess): its console, then what it registered.
    proc = _run_cli(settings, [*_sets(tiny_overrides(tiny_model_dir)), "--summary-out", str(tmp_path / "first.json")])
    _check_console(settings, proc)
    first = json.loads((tmp_path / "first.json").read_text())
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

    # A candidate on locally edited data (--data-dir), impossible gate: evaluated against the
    # champion, nothing registered; the edited split is tagged untracked, the unchanged test split by content.
    edited = tmp_path / "splits"
    shutil.copytree(REPO / "data" / "splits", edited)
    rows = (edited / "train.jsonl").read_text().splitlines()
    (edited / "train.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    # The gate fails on its threshold whatever the candidate, so this candidate is trained briefly on one worker.
    brief = ["train.num_workers=1", "train.max_steps=2", "train.checkpoint_every=2", "train.max_train_examples=32"]
    ok, second = _run(settings, [*tiny_overrides(tiny_model_dir), *brief, "eval.gate.min_ppl_improvement=0.9999"],
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
    # A second passing version through the canary against this champion: the same DAG stages (pipelines/_stages.py)
    # as the retrain run of tests/integration/test_drift_loop.py, which takes its candidate through the canary and
    # checks the decision and the champion; the step's records (version, stable side, champion after) are checked
    # in tests/integration/test_canary_deploy.py.


def test_corrupt_data_stops_the_run_before_training_naming_the_step_and_its_cause(
        settings: Settings, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Splits that pass preflight (all three present) but fail Great Expectations (a test row leaks into train):
    the run fails at validate_data, nothing trains, and the summary names the step's own cause and log."""
    bad = tmp_path / "splits"
    shutil.copytree(REPO / "data" / "splits", bad)
    leaked = (bad / "test.jsonl").read_text().splitlines()[0]
    with (bad / "train.jsonl").open("a") as fh:
        fh.write(leaked + "\n")
    proc = _run_cli(settings, [*_sets(tiny_overrides(tiny_model_dir)), "--data-dir", str(bad), "--json"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == ""  # --json: only the JSON
    summary = json.loads(proc.stdout)
    assert summary["succeeded"] is False and summary["state"] == "FAILED"
    assert summary["steps"]["validate_data"] == "FAILED"
    assert summary["steps"]["train"] == "not run"
    failed = summary["failed_step"]
    assert failed["step"] == "validate_data"
    assert "data validation failed" in failed["cause"] and "leakage" in failed["cause"]
    assert "Inner task failed" not in failed["cause"]
    assert summary["step_errors"]["validate_data"] == failed["cause"]  # recorded in MLflow by the step too
    assert Path(failed["log"]).name == "validate-data.log"
    assert "leakage" in Path(failed["log"]).read_text()
