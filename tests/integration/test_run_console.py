"""`llmops run finetune` as a user runs it (a subprocess, the tiny model): a whole run prints one line per step
and a short summary while the run log holds every step's full output; a step that fails inside the DAG is
named in the summary with its own one-line cause and the path of its log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.settings import Settings
from tests.integration.test_finetune_pipeline import tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
MAX_CONSOLE_LINES = 45  # issue 7: `make run` within ~60 lines, setup included


def _run_cli(settings: Settings, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMOPS_STATE_DIR": str(settings.state_dir), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "cli.main", "run", "finetune", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def test_whole_run_prints_a_line_per_step_and_logs_everything(settings: Settings, tiny_model_dir: Path) -> None:
    proc = _run_cli(settings, _sets(tiny_overrides(tiny_model_dir)))
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


def test_step_failing_in_the_dag_names_its_own_cause(settings: Settings, tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    """Splits that pass preflight (all three present) but fail Great Expectations (a test row leaks into train)."""
    bad = tmp_path / "splits"
    shutil.copytree(REPO / "data" / "splits", bad)
    leaked = (bad / "test.jsonl").read_text().splitlines()[0]
    with (bad / "train.jsonl").open("a") as fh:
        fh.write(leaked + "\n")
    proc = _run_cli(settings, [*_sets(tiny_overrides(tiny_model_dir)), "--data-dir", str(bad), "--json"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == ""  # --json: only the JSON
    summary = json.loads(proc.stdout)
    failed = summary["failed_step"]
    assert failed["step"] == "validate_data"
    assert "data validation failed" in failed["cause"] and "leakage" in failed["cause"]
    assert "Inner task failed" not in failed["cause"]
    assert summary["step_errors"]["validate_data"] == failed["cause"]  # recorded in MLflow by the step too
    assert Path(failed["log"]).name == "validate-data.log"
    assert "leakage" in Path(failed["log"]).read_text()
    assert summary["steps"]["train"] == "not run"
