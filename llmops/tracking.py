"""MLflow tracking in one place: every pipeline run is one MLflow run, each step a child run of it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from llmops.settings import Settings

EXPERIMENT = "llmops-finetune"
FINAL_STATE_TAG = "llmops.final_state"


def configure(settings: Settings) -> None:
    """Point MLflow at the profile's tracking + registry store (sqlite in the state dir by default)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    settings.ensure_state_dir()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


def ensure_experiment(settings: Settings, name: str = EXPERIMENT) -> str:
    """Experiment id for `name`, created with the profile's artifact root on first use."""
    import mlflow

    configure(settings)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(name, artifact_location=settings.artifact_root)


def start_pipeline_run(settings: Settings, run_name: str, tags: dict[str, str] | None = None) -> str:
    """Create the parent run for one pipeline run and return its id (the run is left open-ended)."""
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment(settings)
    run = MlflowClient(settings.tracking_uri).create_run(exp_id, run_name=run_name, tags=tags or {})
    return run.info.run_id


def close_run(settings: Settings, run_id: str, *, state: str, status: str, error: str | None = None) -> None:
    """End a run with MLflow `status` (FINISHED/FAILED/KILLED), recording the pipeline's own `state` beside it
    (SUCCEEDED, FAILED, INTERRUPTED...), which MLflow's status vocabulary cannot express."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    client.set_tag(run_id, FINAL_STATE_TAG, state)
    if error:
        client.set_tag(run_id, "llmops.error", error[:4000])
    client.set_terminated(run_id, status=status)


@contextlib.contextmanager
def step_run(settings: Settings, parent_run_id: str | None, step: str) -> Iterator[str]:
    """A child run named `step` under `parent_run_id` (or a standalone run when there is no parent);
    yields the child run id. `mlflow.log_*` calls inside go to the child run."""
    import mlflow

    exp_id = ensure_experiment(settings)
    tags = {"llmops.step": step}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(experiment_id=exp_id, run_name=step, tags=tags) as run:
        try:
            yield run.info.run_id
        except Exception as exc:
            # The step's own one-line cause on its run (MLflow records only FAILED).
            from llmops.steplog import one_line

            with contextlib.suppress(Exception):
                mlflow.set_tag("llmops.error", one_line(exc))
            raise
