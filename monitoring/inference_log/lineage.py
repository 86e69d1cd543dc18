"""From one logged answer back to what produced it: `llmops models lineage REQUEST_ID`.

The log holds the model name and the version the server pinned at start; the registry holds, as tags on that
version, the lineage the pipeline recorded (llmops/lineage.py, the register step): the git commit, the md5 and
DVC version of every split trained and evaluated on, the datasets they were merged from, the params digest,
the pipeline run ids and the base model. Nothing here is inferred: a tag that is missing is reported missing.
"""

from __future__ import annotations

from typing import Any

from llmops.errors import LlmopsError
from llmops.settings import Settings
from monitoring.inference_log.log import InferenceLog, UnknownRequest

MISSING = None


def _split_tags(tags: dict[str, str]) -> dict[str, dict[str, str]]:
    """`data.<split>.md5` / `data.<split>.dvc` -> {split: {md5, dvc}} (source tags are reported apart)."""
    out: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "data" and parts[2] in ("md5", "dvc") and parts[1] != "sources":
            out.setdefault(parts[1], {})[parts[2]] = value
    return dict(sorted(out.items()))


def _source_tags(tags: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if key.startswith("data.source.") and key.count(".") >= 3:
            entry, _, what = key.removeprefix("data.source.").rpartition(".")
            out.setdefault(entry, {})[what] = value
    return dict(sorted(out.items()))


def request_lineage(log: InferenceLog, settings: Settings, request_id: str) -> dict[str, Any]:
    """The lineage of the model version that answered `request_id` (LlmopsError with the fix otherwise)."""
    from llmops.registry import Registry
    from llmops.registry.client import parse_ref

    req = log.get(request_id)
    if req is None:
        raise UnknownRequest(f"no logged request with id {request_id!r}",
                             "use the x-request-id of a response (`llmops log tail` lists recent ones); "
                             "pruned requests are gone")
    if not req.model_version:
        raise LlmopsError(f"request {request_id} was answered by {req.model!r}, a local checkpoint rather than a "
                          "registered version: it has no recorded lineage",
                          "serve a registered version (`llmops serve NAME@champion`) to get lineage for answers")
    name = parse_ref(req.model)[0] if req.model else settings.registered_model
    version = Registry(settings).show(f"{name}/{req.model_version}")
    tags: dict[str, str] = version.get("tags", {})
    return {
        "request_id": req.request_id, "time": req.time, "route": req.route, "side": req.side,
        "model": {"name": version["name"], "version": version["version"], "aliases": version["aliases"],
                  "model_uri": version["model_uri"], "created": version["created"], "run_id": version["run_id"]},
        "git_commit": tags.get("git.commit", MISSING),
        "data": _split_tags(tags),
        "data_sources": {"summary": tags.get("data.sources", MISSING), "datasets": _source_tags(tags)},
        "pipeline": {"kfp_run_id": tags.get("pipeline.kfp_run_id", MISSING),
                     "mlflow_run_id": tags.get("pipeline.mlflow_run_id", MISSING),
                     "register_run_id": tags.get("register.run_id", version["run_id"])},
        "params_hash": tags.get("params.hash", MISSING),
        "base_model": {"id": tags.get("base_model.id", MISSING), "sha256": tags.get("base_model.sha256", MISSING)},
    }
