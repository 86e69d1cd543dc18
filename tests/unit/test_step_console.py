"""A step's own one-line cause (llmops.steplog) and the quiet run console (pipelines.console): what the steps
print goes to the run log (also what is written to fds 1/2 directly, and by child processes), the console
gets one line per step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.errors import DataError
from llmops.settings import Settings
from llmops.steplog import MARKER, STEP_ERROR_TAG, one_line, parse_marker, step_report


def test_one_line_names_the_real_cause() -> None:
    assert one_line(DataError("split files missing: a.jsonl", "run make data")) == \
        "split files missing: a.jsonl (fix: run make data)"
    try:
        try:
            raise ValueError("header too large")
        except ValueError as inner:
            raise RuntimeError("Training failed due to worker errors:\nTraceback ...\n  File x") from inner
    except RuntimeError as exc:
        assert one_line(exc) == "ValueError: header too large"
    wrapped = RuntimeError("worker died\nTraceback (most recent call last):\n  File 'w.py'\nOSError: disk full\n")
    assert one_line(wrapped) == "OSError: disk full"
    assert len(one_line(RuntimeError("x" * 5000))) <= 400
    assert "\n" not in one_line(RuntimeError("a\nb"))


def test_step_report_records_the_cause_and_reraises(settings: Settings,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    from llmops.tracking import start_pipeline_run

    parent = start_pipeline_run(settings, "failing")
    error = DataError("data validation failed (1 expectation(s)): leakage", "see the Data Docs")
    with pytest.raises(DataError) as raised, step_report("validate_data", parent) as report:
        report.figures(rows=3)
        raise error
    assert raised.value is error  # the orchestrator still sees the step's own exception
    events = [parse_marker(line) for line in capsys.readouterr().out.splitlines() if MARKER in line]
    assert events == [
        {"event": "figures", "step": "validate_data", "figures": {"rows": 3}},
        {"event": "failed", "step": "validate_data", "cause": str(error)},
    ]
    tags = MlflowClient(settings.tracking_uri).get_run(parent).data.tags
    assert tags[STEP_ERROR_TAG + "validate_data"] == str(error)


def test_step_run_tags_the_step_run_with_its_cause(settings: Settings) -> None:
    from mlflow.tracking import MlflowClient

    from llmops.tracking import step_run

    with pytest.raises(KeyError), step_run(settings, None, "train") as run_id:
        raise KeyError("lora.rank")
    run = MlflowClient(settings.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["llmops.error"] == "KeyError: 'lora.rank'"


# The lines kfp.local writes for a task (logging_utils/task_dispatcher/task_executor), ANSI colours included.
KFP_LINES = f"""\
23:16:24.701 - INFO - Executing task \x1b[96m'train'\x1b[0m
23:16:24.701 - INFO - Streamed logs:
    [KFP Executor 2026-11-22 23:16:26,036 INFO]: Got executor_input:
    \x1b[36m(RayTrainWorker pid=1)\x1b[0m [llmops.train] step 1/4 loss 10.8289 lr 3.00e-03 tok/s 1405 epoch 0.06
    \x1b[36m(RayTrainWorker pid=1)\x1b[0m [llmops.train] step 4/4 loss 10.5000 lr 3.00e-03 tok/s 2000 epoch 0.2
    {MARKER}{{"event": "figures", "step": "train", "figures": {{"train_loss": 10.5}}}}
23:16:31.463 - INFO - Task \x1b[96m'train'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
23:16:31.465 - INFO - Executing task \x1b[96m'evaluate'\x1b[0m
    {MARKER}{{"event": "failed", "step": "evaluate", "cause": "RegistryError: registry down"}}
23:16:40.000 - ERROR - Task \x1b[96m'evaluate'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
"""


def test_run_console_keeps_everything_in_the_log_and_prints_one_line_per_step(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from pipelines.console import RunConsole

    with RunConsole(tmp_path, "run", live=False) as rc:
        print(KFP_LINES, end="")
        os.write(1, b"written to fd 1 by a C library\n")
        os.write(2, b"written to fd 2 by a C library\n")
        subprocess.run([sys.executable, "-c", "print('a child process inheriting stdout')"], check=True)
    captured = capfd.readouterr()
    log = (tmp_path / "run.log").read_text()
    for text in ("Got executor_input", "written to fd 1", "written to fd 2", "a child process inheriting stdout",
                 "step 4/4 loss 10.5000"):
        assert text in log
    assert "Got executor_input" in (tmp_path / "run" / "train.log").read_text()
    assert "registry down" in (tmp_path / "run" / "evaluate.log").read_text()
    console = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert captured.out == ""
    assert len(console) == 4, console  # 2 progress lines (non-TTY: each quarter reached), 2 step lines
    assert console[-2].startswith("ok   train") and "train_loss 10.5" in console[-2]
    assert console[-1].startswith("FAIL evaluate") and "RegistryError: registry down" in console[-1]
    assert rc.failure is not None and rc.failure.name == "evaluate"
    assert rc.failure.cause == "RegistryError: registry down"
    assert rc.failure.log == tmp_path / "run" / "evaluate.log"
    assert json.dumps(rc.steps["train"].figures) == '{"train_loss": 10.5}'
    # The streams and descriptors are back.
    print("after")
    assert "after" in capfd.readouterr().out


def test_verbose_streams_everything(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from pipelines.console import RunConsole

    with RunConsole(tmp_path, "run", verbose=True, live=False):
        print(KFP_LINES, end="")
    out = capfd.readouterr().out
    assert "Got executor_input" in out and "step 1/4 loss" in out


def test_live_line_shows_progress_not_the_steps_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import re
    import time

    from pipelines.console import RunConsole

    with RunConsole(tmp_path, "run", live=True) as rc:
        print(KFP_LINES.split("23:16:31.463")[0], end="")  # train running, at step 4/4
        time.sleep(0.7)  # a few refreshes of the live line
        assert rc.current is not None and rc.current.progress.startswith("step 4/4  loss 10.5000")
        print("23:16:31.463 - INFO - Task 'train' finished with status SUCCESS")
    err = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capfd.readouterr().err)
    assert "step 4/4  loss 10.5000" in err  # the live line
    assert "ok   train" in err
    assert "Got executor_input" not in err and "Streamed logs" not in err
    assert "Got executor_input" in (tmp_path / "run.log").read_text()
