"""The two steps only the retraining DAG has: plan the run from the champion's lineage, refresh the data.

**Restart from the base, not from the champion's adapter.** The retrain trains a fresh LoRA adapter on the
champion's base model with the champion's params, on the refreshed merge of every source (the sample, users'
datasets, exported feedback). It does not continue the champion's adapter: the merged data already holds what the
champion was trained on, so continuing would train twice on the old data and weight it over the new; a restart
keeps a model's lineage one run deep (this base + these params + this data version reproduces it), and the gate
compares the candidate with the champion on the same test data either way, so nothing better is thrown away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmops.errors import DataError, LlmopsError, ModelError
from llmops.params import Params
from llmops.settings import Settings

OVERRIDES_TAG = "llmops.overrides_json"  # start_run: the run's overrides, exactly (a list, JSON)
LEGACY_OVERRIDES_TAG = "llmops.overrides"  # older runs: space-joined
DATA_DIR = "data/splits"  # what the DVC split stage writes (dvc.yaml)


@dataclass(frozen=True)
class Recipe:
    overrides: list[str]  # the champion's overrides, then this run's own (later ones win)
    champion: str  # NAME/VERSION


def champion_recipe(settings: Settings, overrides: list[str]) -> Recipe:
    """The champion's training recipe: the overrides its pipeline run used (model.base included), then
    `overrides`. Fails when there is no champion, or when its base model is no longer the checkpoint it was
    trained on (a retrain would silently start from other weights)."""
    from mlflow.tracking import MlflowClient

    from llmops.modeling.base import base_model_path, base_model_sha256
    from llmops.registry.client import NotFound, Registry

    name = settings.registered_model
    try:
        version = Registry(settings).alias_version(name, "champion")
    except NotFound:  # no model of that name at all
        version = None
    if version is None:
        raise LlmopsError(f"model {name!r} has no champion to retrain",
                          "train one first with `llmops run finetune` (the first passing version becomes champion)")
    tags = Registry(settings).show(f"{name}/{version}")["tags"]
    run_id = tags.get("pipeline.mlflow_run_id")
    champion_overrides: list[str] = []
    if run_id:
        run_tags = MlflowClient(settings.tracking_uri).get_run(run_id).data.tags
        if OVERRIDES_TAG in run_tags:
            champion_overrides = list(json.loads(run_tags[OVERRIDES_TAG]))
        else:
            champion_overrides = run_tags.get(LEGACY_OVERRIDES_TAG, "").split()
    recipe = [*champion_overrides, *overrides]
    params = settings.params(recipe)  # raises naming a key today's params.yaml no longer has
    trained_on = tags.get("base_model.id")
    if trained_on and params.model.base != trained_on:
        if not any(o.startswith("model.base=") for o in overrides):
            raise ModelError(f"the champion {name}/{version} was trained on {trained_on!r}, the recipe resolves "
                             f"{params.model.base!r}", "pass --set model.base=... to choose the base on purpose")
    elif tags.get("base_model.sha256"):
        now = base_model_sha256(base_model_path(settings, params))
        if now != tags["base_model.sha256"]:
            raise ModelError(f"the base model {params.model.base!r} is not the checkpoint champion {name}/{version} "
                             f"was trained on (weights {now[:12]}, trained on {tags['base_model.sha256'][:12]})",
                             "restore that checkpoint (`llmops model pull --force` for the built-in base), or pass "
                             "--set model.base=... to retrain on another base on purpose")
    return Recipe(overrides=recipe, champion=f"{name}/{version}")


def check_feedback_exports(settings: Settings, params: Params | None = None) -> None:
    """Refuse the refresh when the feedback source holds a file `llmops log export` did not write (or that changed
    since): an unreviewed or unscrubbed correction must never reach a training run (components/retrain/exports.py).
    """
    from components.retrain.exports import vouched
    from monitoring.inference_log.datasets import feedback_dir

    try:
        folder = feedback_dir(settings, params or settings.params())
    except LlmopsError:  # no feedback source declared: nothing of users' reaches the merge
        return
    _, refused = vouched(folder, "sft")
    if refused:
        names = ", ".join(p.relative_to(settings.project_dir).as_posix() if p.is_relative_to(settings.project_dir)
                          else str(p) for p in refused)
        raise DataError(f"the feedback source holds data no reviewed, scrubbed export vouches for: {names} (no "
                        "export manifest, or the file changed since)",
                        "remove it: corrections reach training only through `llmops review` and `llmops log "
                        "export --dvc`; a curated dataset goes in with `llmops data add`")


def refresh_data(settings: Settings, *, parent_run_id: str, champion: str, reason: str, drift_report: str,
                 drift_report_path: str) -> str:
    """`dvc repro split` (merge the newest sources, feedback exports included, split, GX-check), then record on the
    pipeline's MLflow run why it started: reason, trigger, champion, sources, and the drift report as artifacts.
    Returns the data dir the rest of the DAG reads."""
    from mlflow.tracking import MlflowClient

    from llmops.data import dvc
    from llmops.data.splits_manifest import read_manifest
    from llmops.tracking import step_run

    with step_run(settings, parent_run_id, "refresh_data"):
        check_feedback_exports(settings)
        out = dvc.repro(["split"], settings=settings)
        if settings.profile == "cluster":
            dvc.push(settings=settings)  # the refreshed splits outlive the pod: their md5s are the lineage
    manifest = read_manifest(settings.project_dir / DATA_DIR)
    if manifest is None:
        raise LlmopsError(f"the split stage wrote no {DATA_DIR}/sources.json", "check dvc.yaml's split stage")
    client = MlflowClient(settings.tracking_uri)
    tags = {
        "llmops.pipeline": "retrain",
        "llmops.retrain.reason": reason or "on demand",
        "llmops.retrain.trigger": "drift" if drift_report else "manual",
        "llmops.retrain.champion": champion,
        "llmops.retrain.data_refreshed": "yes" if "Running stage 'split'" in out else "no (sources unchanged)",
        "data.sources": ",".join(f"{s['entry']}@{s['md5']}" for s in manifest["sources"]),
    }
    if drift_report_path:
        tags["llmops.retrain.drift_report"] = drift_report_path
    for key, value in tags.items():
        client.set_tag(parent_run_id, key, value[:5000])
    client.log_dict(parent_run_id, manifest, "data/sources.json")
    if drift_report:
        client.log_text(parent_run_id, drift_report, "drift/drift-report.json")
        html = Path(drift_report_path).with_suffix(".html") if drift_report_path else None
        if html is not None and html.is_file():  # same machine (local profile): the human-readable report too
            client.log_artifact(parent_run_id, str(html), "drift")
    return DATA_DIR
