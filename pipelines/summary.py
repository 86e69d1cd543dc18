"""What a pipeline run did, read back from MLflow (the system of record on both profiles): step states,
data versions, training throughput, the precision it trained in and why, the host it ran on, base vs candidate
vs champion metrics, the gate verdict, the version."""

from __future__ import annotations

from typing import Any

from llmops.settings import Settings
from llmops.steplog import STEP_ERROR_TAG
from llmops.tracking import FINAL_STATE_TAG, close_run, ensure_experiment

STEPS = ("validate_data", "train", "evaluate", "register", "compile_engine", "canary_deploy")
RETRAIN_STEPS = ("refresh_data", "train_dpo")  # steps only the retrain DAG has, listed when the run had them


def latest_parent_run(settings: Settings, since_ms: int) -> str | None:
    """The newest pipeline (parent) run started at or after `since_ms`."""
    from mlflow.tracking import MlflowClient

    exp_id = ensure_experiment(settings)
    runs = MlflowClient(settings.tracking_uri).search_runs(
        [exp_id], filter_string=f"attributes.start_time >= {since_ms}", order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0].info.run_id if parents else None


def mark_interrupted(settings: Settings, since_ms: int) -> list[str]:
    """Close every run this invocation left RUNNING (the parent and any step) as KILLED; returns their ids.

    An interrupted `kfp.local` run never reaches the exit handler, so without this the MLflow UI would show
    the pipeline as running forever.
    """
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(settings.tracking_uri).search_runs(
        [ensure_experiment(settings)],
        filter_string=f"attributes.start_time >= {since_ms} and attributes.status = 'RUNNING'", max_results=100,
    )
    for run in runs:
        close_run(settings, run.info.run_id, state="INTERRUPTED", status="KILLED")
    return [r.info.run_id for r in runs]


def summarize(settings: Settings, parent_run_id: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    by_step = {c.data.tags.get("llmops.step", c.info.run_name): c for c in children}
    tags = parent.data.tags
    read = by_step["validate_data"].data.tags if "validate_data" in by_step else {}
    out: dict[str, Any] = {
        "mlflow_run_id": parent_run_id,
        "kfp_run_name": tags.get("llmops.kfp_run_name"),
        "state": tags.get(FINAL_STATE_TAG, parent.info.status),
        "git_commit": tags.get("llmops.git_commit"),
        "params_hash": tags.get("llmops.params_hash"),
        # md5 of the split files validate_data really read, and the DVC version each matches (or "untracked")
        "data_versions": {k[5:-4]: {"md5": v, "dvc": read.get(f"{k[:-4]}.dvc", "untracked")}
                          for k, v in read.items() if k.startswith("data.") and k.endswith(".md5")
                          and not k.startswith("data.source.")},
        "steps": {s: (by_step[s].info.status if s in by_step else "not run")
                  for s in (*[s for s in RETRAIN_STEPS if s in by_step], *STEPS)},
    }
    if "data.sources" in read:  # the datasets the splits were merged from (llmops.data.sources)
        out["data_sources"] = read["data.sources"]
    retrain = {k.removeprefix("llmops.retrain."): v for k, v in tags.items() if k.startswith("llmops.retrain.")}
    if retrain:
        out["retrain"] = retrain
    # Each failed step's own one-line cause: recorded by the step (llmops.steplog) on the pipeline run, or on
    # the step's run by llmops.tracking.step_run.
    errors = {k.removeprefix(STEP_ERROR_TAG): v for k, v in tags.items() if k.startswith(STEP_ERROR_TAG)}
    errors |= {s: c.data.tags["llmops.error"] for s, c in by_step.items()
               if "llmops.error" in c.data.tags and s not in errors}
    if errors:
        out["step_errors"] = errors
    if "train" in by_step:
        m = by_step["train"].data.metrics
        out["train"] = {k: m[k] for k in ("train_loss", "val_loss_before", "val_loss", "steps", "tokens",
                                          "tokens_per_s", "seconds", "peak_rss_mb", "resumed") if k in m}
    out |= _precision_and_host(settings, by_step)
    if "evaluate" in by_step:
        ev = by_step["evaluate"]
        models: dict[str, dict[str, float]] = {}
        for key, value in ev.data.metrics.items():
            name, _, metric = key.partition(".")
            if metric:
                models.setdefault(name, {})[metric] = value
        out["eval"] = models
        out["gate"] = {k.removeprefix("gate."): v for k, v in ev.data.tags.items() if k.startswith("gate.")}
    if "register" in by_step:
        rt = by_step["register"].data.tags
        out["registered"] = {k.removeprefix("registered."): v for k, v in rt.items() if k.startswith("registered.")}
    if "canary_deploy" in by_step:  # the rollout's decision and why (components/canary_deploy)
        ct = by_step["canary_deploy"].data.tags
        out["canary"] = {k.removeprefix("canary."): v for k, v in ct.items() if k.startswith("canary.")}
    return out


def _precision_and_host(settings: Settings, by_step: dict[str, Any]) -> dict[str, Any]:
    """`precision` (what train ran in, what was asked, why) and `host` (where train ran: CPU, ISA flags, cores,
    memory bandwidth) from the train step's tags; a run that never trained names this machine instead (local
    profile only: on a cluster the steps ran elsewhere)."""
    tags = by_step["train"].data.tags if "train" in by_step else {}
    out: dict[str, Any] = {}
    if "train.precision" in tags:
        out["precision"] = {"precision": tags["train.precision"], "requested": tags.get("train.precision.requested"),
                            "reason": tags.get("train.precision.reason"), "source": "train step"}
    if "host.cpu" in tags:
        out["host"] = {k.removeprefix("host."): v for k, v in tags.items() if k.startswith("host.")}
        out["host"]["source"] = "train step (rank 0)"
    elif settings.profile == "local":
        from llmops import host

        fp = host.describe(settings.state_dir)
        out["host"] = {**{k.removeprefix("host."): v for k, v in host.lineage_tags(fp).items()},
                       "source": "this machine (train did not run)"}
    return out
