"""Open and close the one MLflow run that holds a whole pipeline run (each step is a child run of it).

The run is found again by its KFP job id tag, so the exit handler (which KFP forbids from depending on any
task) can close it with the pipeline's final status.
"""

from __future__ import annotations

import json

from llmops.lineage import git_commit
from llmops.params import Params
from llmops.settings import Settings
from llmops.tracking import close_run, ensure_experiment, start_pipeline_run

KFP_RUN_TAG = "llmops.kfp_run_id"


def start_run(settings: Settings, params: Params, *, kfp_run_id: str, kfp_run_name: str,
              overrides: list[str]) -> str:
    """Create the pipeline's parent MLflow run with its params and data/code versions; returns its id."""
    from mlflow.tracking import MlflowClient

    tags = {
        KFP_RUN_TAG: kfp_run_id,
        "llmops.kfp_run_name": kfp_run_name,
        "llmops.profile": settings.profile,
        "llmops.git_commit": git_commit(settings.project_dir),
        "llmops.params_hash": params.digest(),
        "llmops.overrides": " ".join(overrides),
        "llmops.overrides_json": json.dumps(list(overrides)),  # exact: a retrain reuses it as the champion's recipe
    }
    run_id = start_pipeline_run(settings, run_name=kfp_run_name, tags=tags)
    from mlflow.entities import Param

    flat = _flatten(params.model_dump(mode="json"))
    MlflowClient(settings.tracking_uri).log_batch(run_id, params=[Param(k, v) for k, v in flat.items()])
    return run_id


def find_run(settings: Settings, kfp_run_id: str) -> str | None:
    """The parent run id for a KFP job id, or None when the pipeline failed before opening it."""
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment(settings)
    runs = MlflowClient(settings.tracking_uri).search_runs(
        [exp_id], filter_string=f"tags.`{KFP_RUN_TAG}` = '{kfp_run_id}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def finish_run(settings: Settings, *, kfp_run_id: str, state: str, error: str | None = None) -> str | None:
    """Close the parent run with the pipeline's final state (SUCCEEDED -> FINISHED, else FAILED)."""
    run_id = find_run(settings, kfp_run_id)
    if run_id is None:
        return None
    close_run(settings, run_id, state=state, status="FINISHED" if state == "SUCCEEDED" else "FAILED", error=error)
    return run_id


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flatten(value, f"{name}.")
        else:
            out[name] = str(value)[:500]
    return out
