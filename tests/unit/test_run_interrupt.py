"""An interrupted local pipeline run leaves no MLflow run RUNNING forever, and exits 130."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from cli.main import app
from llmops.settings import Settings
from llmops.tracking import ensure_experiment, start_pipeline_run
from pipelines.summary import mark_interrupted


def _child(settings: Settings, parent: str, step: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    tags = {"mlflow.parentRunId": parent, "llmops.step": step}
    return client.create_run(ensure_experiment(settings), run_name=step, tags=tags).info.run_id


def _status(settings: Settings, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(settings.tracking_uri).get_run(run_id).info.status


def test_mark_interrupted_closes_only_this_invocations_running_runs(settings: Settings) -> None:
    from mlflow.tracking import MlflowClient

    older = start_pipeline_run(settings, "someone-elses-run")
    time.sleep(0.05)
    since_ms = int(time.time() * 1000)
    parent = start_pipeline_run(settings, "interrupted")
    done = _child(settings, parent, "validate_data")
    MlflowClient(settings.tracking_uri).set_terminated(done, status="FINISHED")
    train = _child(settings, parent, "train")

    killed = mark_interrupted(settings, since_ms)

    assert set(killed) == {parent, train}
    assert (_status(settings, parent), _status(settings, train)) == ("KILLED", "KILLED")
    assert _status(settings, done) == "FINISHED" and _status(settings, older) == "RUNNING"
    assert MlflowClient(settings.tracking_uri).get_run(parent).data.tags["llmops.final_state"] == "INTERRUPTED"


def test_ctrl_c_during_a_local_run_exits_130_and_kills_its_runs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.runner

    started: list[str] = []

    def interrupted_run(s: Settings, overrides: list[str], data_dir: str):
        started.append(start_pipeline_run(s, "interrupted"))
        raise KeyboardInterrupt

    monkeypatch.setattr(pipelines.runner, "run_finetune_local", interrupted_run)
    result = CliRunner().invoke(app, ["run", "finetune"])
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "1 MLflow run(s) marked KILLED" in result.output
    assert _status(settings, started[0]) == "KILLED"
